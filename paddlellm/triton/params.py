"""Model-config parameters -> dict[str, str], strictly.

Triton hands `initialize()` the model config as JSON whose `parameters` map each key to
`{"string_value": ...}`. A value holding `${name}` is a template placeholder nobody filled in (Triton passes
it through verbatim), so it fails here with the key's name instead of later as a puzzling value.

A relative `model` path is resolved against the model repository (the directory holding this model's
folder, `args["model_repository"]`'s parent), not tritonserver's working directory: the committed
repository names the default model as `../.models/...`, which holds wherever tritonserver is started.
"""

from __future__ import annotations

import json
import os
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
                f"model parameter '{key}' = {value!r} is an unfilled template placeholder: give it a value"
            )
        params[key] = value
    return params


def pick(params: Mapping[str, str], *keys: str) -> dict[str, str]:
    """The named subset; a missing key fails with its name."""
    missing = [k for k in keys if k not in params]
    if missing:
        raise ConfigError(f"missing model parameter(s): {', '.join(missing)}")
    return {k: params[k] for k in keys}


MODEL_PATH_KEY = "model"


def triton_params(args: Mapping[str, str]) -> dict[str, str]:
    """The parameters of the model Triton is initializing (its `initialize(args)`), with a relative `model`
    path made absolute against the model repository."""
    params = model_params(args["model_config"])
    path = params.get(MODEL_PATH_KEY)
    if path and not os.path.isabs(path):
        repository = os.path.dirname(os.path.abspath(args["model_repository"]))
        params[MODEL_PATH_KEY] = os.path.normpath(os.path.join(repository, path))
    return params
