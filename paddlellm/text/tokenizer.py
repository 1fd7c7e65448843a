"""TextTokenizer: HF `tokenizers` (tokenizer.json) plus the checkpoint's chat template and special tokens
(read by `paddlellm.model_info.CheckpointText`).

Encodes exactly as transformers' (v5) AutoTokenizer does for the same directory: tokenizer.json's
post-processor alone decides which special tokens encode(add_special_tokens=True) adds; transformers v5
ignores add_bos_token/add_eos_token in tokenizer_config.json whenever a tokenizer.json exists, and so do we.
It also knows each token's raw bytes (token_bytes), which the streaming detokenizer needs to tell an
incomplete UTF-8 character from finished text.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2
from tokenizers import Tokenizer

from paddlellm.errors import CheckpointError
from paddlellm.model_info import CheckpointText
from paddlellm.text.chat_template import ChatTemplate, validate_messages
from paddlellm.text.tool_prompt import ToolFormat, prepare_chat

_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


@functools.cache
def _gpt2_unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's byte -> printable-character map used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _token_str(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or an AddedToken-style {"content": ...} object."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


@dataclass(frozen=True, eq=False)
class TextTokenizer:
    path: str
    tokenizer: Tokenizer
    chat_template: ChatTemplate | None
    special_ids: frozenset[int]
    added_ids: frozenset[int]
    decoder_kind: str  # see _decoder_kind
    _bytes: list[bytes | None] = field(default_factory=list, repr=False)  # token_bytes cache, filled lazily

    @classmethod
    def from_dir(cls, path: str, text_facts: CheckpointText | None = None) -> TextTokenizer:
        tok_file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tok_file):
            raise CheckpointError(tok_file, "(file)", "not found")
        try:
            tokenizer = Tokenizer.from_file(tok_file)
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise CheckpointError(tok_file, "(file)", f"cannot load: {e}") from None
        facts = text_facts or CheckpointText.from_dir(path)
        cfg = facts.tokenizer_config
        specials = {k: s for k in _SPECIAL_KEYS if (s := _token_str(cfg.get(k))) is not None}
        added = tokenizer.get_added_tokens_decoder()
        return cls(
            path=path,
            tokenizer=tokenizer,
            chat_template=_compile_template(facts, specials),
            special_ids=frozenset(i for i, t in added.items() if t.special),
            added_ids=frozenset(added),
            decoder_kind=_decoder_kind(tok_file),
        )

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        messages: Any,
        add_generation_prompt: bool = True,
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_format: ToolFormat | None = None,
        **extra: Any,
    ) -> str:
        """The prompt text; raises InvalidRequest naming the field for bad messages or tools. `tools` and the
        history's tool calls go through paddlellm.text.tool_prompt.prepare_chat; `tool_format` is the format
        of the tool prompt injected for a template without tool support (None: detected from the template)."""
        template = self.chat_template
        if template is None:
            raise CheckpointError(self.path, "chat_template", "this model has no chat template")
        checked, variables = prepare_chat(
            validate_messages(messages), tools, tool_format or template.tool_format, template.supports_tools
        )
        return template.render(checked, add_generation_prompt=add_generation_prompt, **extra, **variables)

    def encode_chat(
        self,
        messages: Any,
        add_generation_prompt: bool = True,
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_format: ToolFormat | None = None,
        **extra: Any,
    ) -> list[int]:
        """Rendered and encoded without adding BOS/EOS: the template writes its own (as transformers does)."""
        text = self.apply_chat_template(
            messages, add_generation_prompt, tools=tools, tool_format=tool_format, **extra
        )
        return self.encode(text, add_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token contributes to decode(skip_special_tokens=True); b"" for special tokens."""
        if not self._bytes:
            self._bytes.extend([None] * self.vocab_size)
        if not 0 <= token_id < len(self._bytes):
            return b""
        cached = self._bytes[token_id]
        if cached is None:
            cached = self._compute_bytes(token_id)
            self._bytes[token_id] = cached
        return cached

    def _compute_bytes(self, token_id: int) -> bytes:
        if token_id in self.special_ids:
            return b""
        piece = self.tokenizer.id_to_token(token_id)
        if piece is None:
            return b""
        if token_id in self.added_ids:
            return self.tokenizer.decode([token_id], skip_special_tokens=True).encode("utf-8")
        table = _gpt2_unicode_to_byte()
        if self.decoder_kind == "byte_level" and all(ch in table for ch in piece):
            return bytes(table[ch] for ch in piece)
        if self.decoder_kind == "sentencepiece":
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                return bytes([int(piece[3:5], 16)])
            return piece.replace("\u2581", " ").encode("utf-8")
        return self.tokenizer.decode([token_id], skip_special_tokens=True).encode("utf-8")


def _decoder_kind(tok_file: str) -> str:
    """ "byte_level" (GPT-2 style), "sentencepiece" (byte fallback, "▁" for spaces) or "other"."""
    with open(tok_file, encoding="utf-8") as f:
        decoder = json.load(f).get("decoder") or {}
    kinds = {decoder.get("type")} | {
        d.get("type") for d in decoder.get("decoders") or [] if isinstance(d, dict)
    }
    if "ByteLevel" in kinds:
        return "byte_level"
    if "ByteFallback" in kinds or "Metaspace" in kinds:
        return "sentencepiece"
    return "other"


def _compile_template(facts: CheckpointText, specials: Mapping[str, str]) -> ChatTemplate | None:
    source, (where, key) = facts.chat_template, facts.chat_template_origin
    if source is None:
        return None
    if not isinstance(source, str):
        raise CheckpointError(where, key, "must be a string (or a list of {name, template})")
    try:
        return ChatTemplate.compile(source, specials)
    except jinja2.TemplateSyntaxError as e:
        raise CheckpointError(where, key, f"template syntax error at line {e.lineno}: {e.message}") from None
