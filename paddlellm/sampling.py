"""SamplingParams: what one request asks of the sampler, validated with OpenAI's ranges.

The Triton ensemble carries these as one JSON object (`sampling` tensor); `from_dict` is the strict parser the
tokenizer model and the engine adapter use, raising `InvalidRequest(param=...)` that names the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from paddlellm.errors import InvalidRequest

_MAX_SEED = 2**63 - 1
MAX_STREAM_INTERVAL = 4096
AUTO_STREAM_INTERVAL = 0  # stream_interval: tokens per response chosen by the serving adapter from its load


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = 16  # None: as many as the context has room for (OpenAI chat's default)
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None  # None: the engine derives one, so recompute after preemption draws the same
    min_tokens: int = 0  # EOS and stop ids are suppressed until this many tokens are generated
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    # Output granularity, not sampling: after the first token, the serving adapter sends a response every
    # `stream_interval` tokens (and at the end). Fewer responses mean fewer wake-ups along the serving path.
    # 0 (AUTO_STREAM_INTERVAL): the adapter decides per step, per token while the serving path has room.
    stream_interval: int = 0
    # False: one response at the end carrying every token (vLLM's FINAL_ONLY; Triton's vLLM-backend `stream`
    # input, false by default). True: tokens as they come, `stream_interval` at a time.
    stream: bool = True
    # The first response's text starts with the prompt as tokenized (OpenAI completions' `echo`; the vLLM
    # backend's `exclude_input_in_output` false).
    echo: bool = False

    def __post_init__(self) -> None:
        def bad(param: str, why: str) -> InvalidRequest:
            return InvalidRequest(f"'{param}' {why}, got {getattr(self, param)!r}", param=param)

        if self.max_tokens is not None and self.max_tokens < 1:
            raise bad("max_tokens", "must be at least 1")
        if not (0.0 <= self.temperature <= 2.0) or math.isnan(self.temperature):
            raise bad("temperature", "must be between 0 and 2")
        if not (0.0 < self.top_p <= 1.0):
            raise bad("top_p", "must be in (0, 1]")
        for name in ("frequency_penalty", "presence_penalty"):
            v = getattr(self, name)
            if not (-2.0 <= v <= 2.0):
                raise bad(name, "must be between -2 and 2")
        if self.seed is not None and not (-_MAX_SEED - 1 <= self.seed <= _MAX_SEED):
            raise bad("seed", "must fit in a signed 64-bit integer")
        if self.min_tokens < 0:
            raise bad("min_tokens", "must be >= 0")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise bad("min_tokens", f"must be <= max_tokens ({self.max_tokens})")
        if any(t < 0 for t in self.stop_token_ids):
            raise bad("stop_token_ids", "must be non-negative token ids")
        if not AUTO_STREAM_INTERVAL <= self.stream_interval <= MAX_STREAM_INTERVAL:
            raise bad("stream_interval", f"must be between 0 (auto) and {MAX_STREAM_INTERVAL}")

    def with_room(self, room: int) -> SamplingParams:
        """Resolve max_tokens=None to the `room` left in the context (at least 1, so limits still apply)."""
        if self.max_tokens is not None:
            return self
        room = max(1, room)
        return dataclasses.replace(self, max_tokens=room, min_tokens=min(self.min_tokens, room))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stop_token_ids"] = list(self.stop_token_ids)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any) -> SamplingParams:
        """Strict: unknown keys and wrong types raise InvalidRequest naming the field."""
        if not isinstance(data, dict):
            raise InvalidRequest("sampling parameters must be a JSON object", param="sampling")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in fields:
                raise InvalidRequest(f"unknown sampling parameter '{key}'", param=key)
            if value is None:
                if key == "max_tokens":
                    kwargs[key] = None  # explicit null: up to the end of the context
                continue  # "not given": keep the default
            kwargs[key] = _coerce(key, value)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> SamplingParams:
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidRequest(f"sampling parameters are not valid JSON: {e}", param="sampling") from None
        return cls.from_dict(data)


_INTS = {"max_tokens", "min_tokens", "seed", "stream_interval"}
_FLOATS = {"temperature", "top_p", "frequency_penalty", "presence_penalty"}


def _coerce(key: str, value: Any) -> Any:
    # bool is an int subclass in Python: reject it where a number is expected.
    if key in _INTS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"'{key}' must be an integer, got {value!r}", param=key)
        return value
    if key in _FLOATS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequest(f"'{key}' must be a number, got {value!r}", param=key)
        return float(value)
    if key in ("ignore_eos", "stream", "echo"):
        if not isinstance(value, bool):
            raise InvalidRequest(f"'{key}' must be a boolean, got {value!r}", param=key)
        return value
    if key == "stop_token_ids":
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise InvalidRequest(f"'{key}' must be a list of integers", param=key)
        return tuple(value)
    raise InvalidRequest(f"unknown sampling parameter '{key}'", param=key)
