"""TokenizerInfo: what the grammar library needs to know about a checkpoint's vocabulary, built once.

The checkpoint's `tokenizer.json` (HF `tokenizers` format, as `paddlellm.text.tokenizer` loads it) is handed
to llguidance, which builds its token trie from it (~0.3 s for a 49k vocabulary: build once per process,
share between compiles). The stop ids are the checkpoint's (`CheckpointText.eos_token_ids`): a grammar allows
them exactly when it accepts.

Vocabulary size: the model's embedding rows (config.json's `vocab_size`) may exceed the tokenizer's
vocabulary (padding rows, e.g. to a multiple of 64). Masks cover the model's rows; the padding ids are never
allowed (llguidance leaves them unset). Fewer rows than tokens is a broken checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import llguidance
from tokenizers import Tokenizer

from paddlellm.errors import CheckpointError
from paddlellm.model_info import CheckpointText, read_json_object


@dataclass(frozen=True)
class TokenizerInfo:
    path: str  # the checkpoint (or tokenizer-only) directory
    vocab_size: int  # the model's logit rows: every mask has this many bits
    tokenizer_vocab_size: int  # tokens the tokenizer knows (added tokens included); ids above are padding
    eos_token_ids: tuple[int, ...]
    lltokenizer: Any = field(compare=False, repr=False)  # llguidance.LLTokenizer, shared (thread-safe)

    @classmethod
    def from_dir(
        cls, path: str, vocab_size: int | None = None, eos_token_ids: tuple[int, ...] | None = None
    ) -> TokenizerInfo:
        """vocab_size: default config.json's `vocab_size`, else the tokenizer's. eos_token_ids: default the
        checkpoint's stop ids."""
        tok_file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tok_file):
            raise CheckpointError(tok_file, "(file)", "not found")
        with open(tok_file, encoding="utf-8") as f:
            tokenizer_json = f.read()
        if eos_token_ids is None:
            eos_token_ids = CheckpointText.from_dir(path).eos_token_ids
        if not eos_token_ids:
            raise CheckpointError(path, "eos_token_id", "no stop token: a grammar could never end")
        try:
            n_tokens = Tokenizer.from_str(tokenizer_json).get_vocab_size(with_added_tokens=True)
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise CheckpointError(tok_file, "(file)", f"cannot load: {e}") from None
        if vocab_size is None:
            cfg_file = os.path.join(path, "config.json")
            configured = read_json_object(cfg_file).get("vocab_size")
            vocab_size = configured if isinstance(configured, int) and configured > 0 else n_tokens
        if vocab_size < n_tokens:
            raise CheckpointError(path, "vocab_size", f"{vocab_size} rows < {n_tokens} tokenizer tokens")
        bad = [e for e in eos_token_ids if not 0 <= e < n_tokens]
        if bad:
            raise CheckpointError(path, "eos_token_id", f"{bad} outside the tokenizer's {n_tokens} tokens")
        try:
            lltok = llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=list(eos_token_ids))
        except Exception as e:  # llguidance raises ValueError / RuntimeError with its reason
            raise CheckpointError(tok_file, "(file)", f"llguidance cannot read it: {e}") from None
        return cls(
            path=path,
            vocab_size=vocab_size,
            tokenizer_vocab_size=n_tokens,
            eos_token_ids=tuple(eos_token_ids),
            lltokenizer=lltok,
        )

    @property
    def mask_words(self) -> int:
        """int32 words of one packed mask (`bitmask.py`)."""
        return (self.vocab_size + 31) // 32
