"""The tokenizer files of a GGUF conversion: tokenizer.json (byte-level BPE) and tokenizer_config.json.

The vocabulary, merges, token types and special ids come from the GGUF metadata (llama.cpp's key names);
`tokenizer.ggml.pre` picks the pre-tokenizer split llama.cpp uses for that vocabulary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from paddlellm.errors import CheckpointError

if TYPE_CHECKING:
    from paddlellm.tools.convert_gguf import GGUFModel

# llama.cpp pre-tokenizer names -> the split our tokenizer.json uses. "digits" means llama.cpp's extra
# `\p{N}` split before the GPT-2 regex (SmolLM/StarCoder vocabularies have single-digit tokens only).
PRE_TOKENIZERS = {
    "smollm": "digits",
    "starcoder": "digits",
    "refact": "digits",
    "gpt2": "gpt2",
    "default": "gpt2",
}

TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4


def build_tokenizer_json(model: GGUFModel) -> str:
    """A `tokenizers` byte-level BPE with the file's vocabulary, merges and control tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(model.tokens)}
    if len(vocab) != len(model.tokens):
        raise CheckpointError(model.path, "tokenizer.ggml.tokens", "duplicate tokens")
    merges = []
    for m in model.merges:
        pair = m.split(" ")
        if len(pair) != 2:
            raise CheckpointError(model.path, "tokenizer.ggml.merges", f"malformed merge {m!r}")
        merges.append((pair[0], pair[1]))
    unk = model.tokens[model.unk_token_id] if model.unk_token_id is not None else None
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=False, byte_fallback=False)
    )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if model.pre_tokenizer == "digits":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    if model.add_bos_token and model.bos_token_id is not None:
        bos = model.tokens[model.bos_token_id]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, model.bos_token_id)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [t for t, ty in zip(model.tokens, model.token_types, strict=True) if ty == TOKEN_TYPE_CONTROL]
    user = [t for t, ty in zip(model.tokens, model.token_types, strict=True) if ty == TOKEN_TYPE_USER_DEFINED]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
    if tok.get_vocab_size(with_added_tokens=True) != model.vocab_size:
        raise CheckpointError(model.path, "tokenizer.ggml.token_type", "added tokens grew the vocabulary")
    return tok.to_str(pretty=True)


def build_tokenizer_config(model: GGUFModel) -> dict[str, Any]:
    def tok(i: int | None) -> str | None:
        return model.tokens[i] if i is not None else None

    cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": model.add_bos_token,
        "add_eos_token": False,
        "bos_token": tok(model.bos_token_id),
        "eos_token": tok(model.eos_token_id),
        "unk_token": tok(model.unk_token_id),
        "pad_token": tok(model.pad_token_id),
        "clean_up_tokenization_spaces": False,
        "model_max_length": model.context_length,
    }
    if model.chat_template:
        cfg["chat_template"] = model.chat_template
    return cfg
