"""SpeculativeConfig: `--speculative-config` (vLLM's and FastDeploy's JSON keys), typed and parsed strictly.

Only the `ngram` method (prompt lookup: drafts copied from the request's own prompt + output) exists; it needs
no second model. Pure Python, so EngineConfig can parse it at start-up and fail naming the bad key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from paddlellm.errors import ConfigError

METHODS = ("ngram",)
# Measured on this CPU (docs/speculative-decoding.md): with 4-bit weights (the default model's) a step is
# compute-bound past ~4 rows, and drafting for 2 (or 4) running requests made a story load 3-7 % slower while
# 1 request gained 1.25x; fp32 weights still gained at 2 ("disable_by_batch_size": 2 or 4 suits them).
DEFAULT_DISABLE_BY_BATCH_SIZE = 1
# On by default: it gains 1.2-1.8x at concurrency 1 and does nothing (no drafts) once two requests run, so it
# cannot slow a loaded server (docs/speculative-decoding.md, "Default: on"); outputs are bit-identical.
DEFAULT_SPECULATIVE_CONFIG = '{"method": "ngram"}'


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str = "ngram"
    num_speculative_tokens: int = 8  # k: draft tokens verified per step (the step computes 1 + k rows)
    prompt_lookup_min: int = 1  # shortest suffix (in tokens) whose earlier occurrence proposes a draft
    prompt_lookup_max: int = 4  # longest suffix tried first
    # vLLM's key: no drafts in a step where more requests than this are running (the step is compute-bound).
    disable_by_batch_size: int = DEFAULT_DISABLE_BY_BATCH_SIZE

    @classmethod
    def parse(cls, text: str, key: str = "speculative_config") -> SpeculativeConfig | None:
        """The JSON object of `--speculative-config` ('' = off). Unknown keys, unknown methods, wrong types
        and out-of-range values raise ConfigError naming `key` and the offending entry."""
        if not text.strip():
            return None
        try:
            raw: Any = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config '{key}': not valid JSON ({e.msg}): {text!r}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config '{key}': expected a JSON object, got {text!r}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(
                f"config '{key}': unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        if "method" not in raw:
            raise ConfigError(f"config '{key}': 'method' is required (one of: {', '.join(METHODS)})")
        if raw["method"] not in METHODS:
            raise ConfigError(
                f"config '{key}': method {raw['method']!r} is not supported (one of: {', '.join(METHODS)})"
            )
        for name, value in raw.items():
            if name != "method" and (not isinstance(value, int) or isinstance(value, bool)):
                raise ConfigError(f"config '{key}': {name!r} must be an integer, got {value!r}")
        # One bound given alone moves the other's default out of its way (vLLM does the same).
        if "prompt_lookup_min" in raw and "prompt_lookup_max" not in raw:
            raw["prompt_lookup_max"] = max(raw["prompt_lookup_min"], cls.prompt_lookup_max)
        if "prompt_lookup_max" in raw and "prompt_lookup_min" not in raw:
            raw["prompt_lookup_min"] = min(raw["prompt_lookup_max"], cls.prompt_lookup_min)
        spec = cls(**raw)
        if not 1 <= spec.num_speculative_tokens <= 16:
            raise ConfigError(f"config '{key}': 'num_speculative_tokens' must be in [1, 16]")
        if not 1 <= spec.prompt_lookup_min <= spec.prompt_lookup_max <= 64:
            raise ConfigError(
                f"config '{key}': need 1 <= 'prompt_lookup_min' <= 'prompt_lookup_max' <= 64 (got "
                f"{spec.prompt_lookup_min}, {spec.prompt_lookup_max})"
            )
        if spec.disable_by_batch_size < 1:
            raise ConfigError(f"config '{key}': 'disable_by_batch_size' must be >= 1")
        return spec
