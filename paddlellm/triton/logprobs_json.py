"""llm_engine's `logprobs` output: one response's log-probabilities as JSON text (docs/triton.md).

    {"content": [entry, ...],          # aligned with the response's token_ids (the request asked `logprobs`)
     "prompt": [null, entry, ...]}     # every prompt token, the first null; on one response only
    entry = {"id": 42, "token": "Hello", "bytes": [72, 101, 108, 108, 111], "logprob": -0.12, "rank": 1,
             "top_logprobs": [{"id": 42, "token": "Hello", "bytes": [...], "logprob": -0.12}, ...]}

A key is present only when its part was asked for; a request that asked for neither gets "" and costs nothing
here. `bytes` are the token's raw bytes as decode(skip_special_tokens=True) joins them (`TextTokenizer.
token_bytes`); `token` is them as UTF-8, or `bytes:\\xe2\\x80` when they are not valid UTF-8 alone (part of a
character; OpenAI's and vLLM's convention); special tokens the detokenizer skips are `""` with `bytes: []`.
A logprob that is not finite (a token the model rules out) is written -9999.0, as vLLM does.

Cost: each token id's `"id":..,"token":..,"bytes":[..]` fragment is built once and kept (the vocabulary table,
filled lazily per id from a token-bytes function loaded on first use), so an entry is a few string joins.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Protocol

from paddlellm.protocol import token_text

TokenBytes = Callable[[int], bytes]
"""token id -> the raw bytes it contributes to the text (b"" for a special token)."""

NOT_FINITE_LOGPROB = -9999.0


class TokenLogprob(Protocol):
    """What is read of paddlellm.step_types.TokenLogprobs."""

    @property
    def token_id(self) -> int: ...

    @property
    def logprob(self) -> float: ...

    @property
    def rank(self) -> int: ...

    @property
    def top(self) -> tuple[tuple[int, float], ...]: ...


def _num(x: float) -> str:
    return repr(float(x)) if math.isfinite(x) else repr(NOT_FINITE_LOGPROB)


class LogprobsJson:
    """The `logprobs` text of responses; one per llm_engine model, used from one thread (the sender)."""

    def __init__(self, load_token_bytes: Callable[[], TokenBytes] | None = None) -> None:
        """`load_token_bytes`: called once, at the first token to describe (it may load the checkpoint's
        tokenizer); None: no vocabulary (tests, toy engines), every token "" with no bytes."""
        self._load = load_token_bytes
        self._token_bytes: TokenBytes | None = None
        self._fragments: dict[int, str] = {}

    def build(
        self,
        content: Sequence[TokenLogprob] | None,
        prompt: Sequence[TokenLogprob | None] | None = None,
    ) -> str:
        """The output text: "" when both parts are None (not asked)."""
        if content is None and prompt is None:
            return ""
        parts = []
        if content is not None:
            parts.append('"content":[' + ",".join(map(self.entry, content)) + "]")
        if prompt is not None:
            parts.append(
                '"prompt":[' + ",".join("null" if e is None else self.entry(e) for e in prompt) + "]"
            )
        return "{" + ",".join(parts) + "}"

    def entry(self, lp: TokenLogprob) -> str:
        top = ",".join("{" + self._fragment(i) + ',"logprob":' + _num(v) + "}" for i, v in lp.top)
        return (
            "{"
            + self._fragment(lp.token_id)
            + ',"logprob":'
            + _num(lp.logprob)
            + ',"rank":'
            + str(lp.rank)
            + ',"top_logprobs":['
            + top
            + "]}"
        )

    def _fragment(self, token_id: int) -> str:
        fragment = self._fragments.get(token_id)
        if fragment is None:
            raw = self._bytes_of(token_id)
            fragment = (
                f'"id":{token_id},"token":{json.dumps(token_text(raw), ensure_ascii=False)},'
                f'"bytes":[{",".join(map(str, raw))}]'
            )
            self._fragments[token_id] = fragment
        return fragment

    def _bytes_of(self, token_id: int) -> bytes:
        if self._token_bytes is None:
            self._token_bytes = self._load() if self._load is not None else (lambda _id: b"")
        return self._token_bytes(token_id)


def checkpoint_token_bytes(model: str) -> Callable[[], TokenBytes]:
    """A loader of the checkpoint's token bytes (its tokenizer, loaded when first called)."""

    def load() -> TokenBytes:
        # Lazy: the tokenizer loads only when a request first asks for logprobs, not at start-up.
        from paddlellm.model_info import resolve_checkpoint
        from paddlellm.text.tokenizer import TextTokenizer

        return TextTokenizer.from_dir(resolve_checkpoint(model)).token_bytes

    return load
