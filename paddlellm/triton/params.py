"""Model-config parameters -> dict[str, str], strictly.

Triton hands `initialize()` the model config as JSON whose `parameters` map each key to
`{"string_value": ...}`. A value still holding `${name}` means the repository was not rendered (Triton
passes it through verbatim), so it fails here with the key's name instead of later as a puzzling value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from paddlellm.errors import ConfigError

_PLACEHOLDER = re.compile(r"\$\{[^}]*\}")


def model_params(model_config: str | Mapping[str, Any]) -> dict[str, str]:
    """`args["model_config"]` (JSON text or parsed) -> {key: string value}."""
    config = json.loads(model_config) if isinstance(model_config, str) else model_config
    raw = config.get("parameters") or {}
    params: dict[str, str] = {}
    for key, entry in raw.items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("string_value"), str):
            raise ConfigError(f"model parameter '{key}': expected {{string_value: ...}}, got {entry!r}")
        value = entry["string_value"]
        if _PLACEHOLDER.search(value):
            raise ConfigError(
                f"model parameter '{key}' = {value!r} was never substituted: render the model repository "
                "(launcher.render.render_model_repository) instead of serving the template"
            )
        params[key] = value
    return params


def pick(params: Mapping[str, str], *keys: str) -> dict[str, str]:
    """The named subset; a missing key fails with its name."""
    missing = [k for k in keys if k not in params]
    if missing:
        raise ConfigError(f"missing model parameter(s): {', '.join(missing)}")
    return {k: params[k] for k in keys}
