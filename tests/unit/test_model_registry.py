"""The model registry: every registered architecture reads into a ModelInfo, and what no spec covers (an
unknown architecture, a rope scaling the rotary layer lacks, a sliding window shorter than the context) is
refused when ModelInfo is read, naming it. No paddle, no transformers: configs are written by hand."""

from __future__ import annotations

import ast
import json
import pathlib
import re
from typing import Any

import numpy as np
import pytest

from paddlellm.errors import CheckpointError, ConfigError
from paddlellm.layers import rotary
from paddlellm.model_info import ModelInfo
from paddlellm.model_registry import (
    ARCHITECTURES,
    ROPE_SCALING_PARAMS,
    ArchSpec,
    UnsupportedModel,
    arch_spec,
    supported_architectures,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 256,
}
ALL_NAMES = [(spec, name) for spec in ARCHITECTURES for name in spec.architectures]


def write_config(tmp_path: pathlib.Path, arch: str = "LlamaForCausalLM", **overrides: Any) -> str:
    cfg: dict[str, Any] = {
        "architectures": [arch],
        "vocab_size": 100,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "eos_token_id": 2,
    }
    cfg.update(overrides)
    cfg = {k: v for k, v in cfg.items() if v is not ...}  # ... drops a key
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return str(tmp_path)


@pytest.mark.parametrize(("spec", "name"), ALL_NAMES, ids=[n for _, n in ALL_NAMES])
def test_every_registered_architecture_builds_a_model_info(tmp_path, spec: ArchSpec, name: str) -> None:
    info = ModelInfo.from_dir(write_config(tmp_path, name))
    assert info.architecture == name and info.spec is spec
    assert info.qk_norm == spec.qk_norm
    assert info.tie_word_embeddings == spec.tie_default  # config.json leaves it out
    assert info.attention_bias == spec.attention_bias
    assert (info.head_dim, info.num_kv_heads) == (16, 2)


@pytest.mark.parametrize("spec", ARCHITECTURES, ids=[s.model_type for s in ARCHITECTURES])
def test_bias_key_turns_attention_bias_on(tmp_path, spec: ArchSpec) -> None:
    key = spec.bias_key or "attention_bias"  # no key (Mistral): transformers ignores one, so do we
    info = ModelInfo.from_dir(write_config(tmp_path, spec.architectures[0], **{key: True}))
    assert info.attention_bias == (spec.bias_key is not None or spec.attention_bias)


def test_registry_is_consistent() -> None:
    names = supported_architectures()
    assert len(names) == len(set(names)), "an architecture name is registered twice"
    types = [s.model_type for s in ARCHITECTURES]
    assert len(types) == len(set(types))
    for spec in ARCHITECTURES:
        assert "default" in spec.rope_scalings and set(spec.rope_scalings) <= set(ROPE_SCALING_PARAMS)
        assert arch_spec(spec.architectures[0]) is spec


def test_rotary_implements_exactly_the_registered_scalings() -> None:
    assert set(rotary.SCALINGS) | {"default"} == set(ROPE_SCALING_PARAMS)


def test_unknown_architecture_is_refused_naming_it(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"'MambaForCausalLM' is not supported") as err:
        ModelInfo.from_dir(write_config(tmp_path, "MambaForCausalLM"))
    assert isinstance(err.value, CheckpointError) and err.value.field == "architectures"
    assert "LlamaForCausalLM" in str(err.value)  # says what is supported


@pytest.mark.parametrize("kind", ["yarn", "dynamic", "longrope", "su"])
@pytest.mark.parametrize("key", ["rope_scaling", "rope_parameters"])
def test_unknown_rope_scaling_is_refused_naming_it(tmp_path, kind: str, key: str) -> None:
    scaling = {"rope_type": kind, "factor": 4.0, "original_max_position_embeddings": 256}
    if key == "rope_parameters":  # transformers 5 layout: theta inside, no rope_scaling key
        scaling["rope_theta"] = 10000.0
    with pytest.raises(ConfigError, match=rf"rope type '{kind}' is not supported") as err:
        ModelInfo.from_dir(write_config(tmp_path, **{key: scaling}))
    assert isinstance(err.value, UnsupportedModel) and err.value.field == "rope_scaling"


def test_old_style_type_key_is_read(tmp_path) -> None:
    with pytest.raises(UnsupportedModel, match="'dynamic'"):
        ModelInfo.from_dir(write_config(tmp_path, rope_scaling={"type": "dynamic", "factor": 2.0}))
    info = ModelInfo.from_dir(write_config(tmp_path, rope_scaling={"type": "linear", "factor": 2.0}))
    assert info.rope_scaling == {"type": "linear", "factor": 2.0}


@pytest.mark.parametrize(("spec", "name"), ALL_NAMES, ids=[n for _, n in ALL_NAMES])
def test_supported_rope_scalings_are_accepted(tmp_path, spec: ArchSpec, name: str) -> None:
    for scaling in (None, {"rope_type": "default"}, {"rope_type": "linear", "factor": 4.0}, LLAMA3):
        info = ModelInfo.from_dir(write_config(tmp_path, name, rope_scaling=scaling))
        tables = rotary.RotaryTables(info.head_dim, info.rope_theta, info.rope_scaling, 64)
        assert np.isfinite(tables.cos).all()


def test_llama3_in_rope_parameters_is_kept(tmp_path) -> None:
    params = dict(LLAMA3, rope_theta=500000.0)
    info = ModelInfo.from_dir(write_config(tmp_path, rope_parameters=params))
    assert info.rope_theta == 500000.0 and info.rope_scaling == params


def test_rope_scaling_parameters_are_checked(tmp_path) -> None:
    bad = {k: v for k, v in LLAMA3.items() if k != "low_freq_factor"}
    with pytest.raises(CheckpointError, match=r"rope_scaling\.low_freq_factor"):
        ModelInfo.from_dir(write_config(tmp_path, rope_scaling=bad))
    with pytest.raises(CheckpointError, match=r"rope_scaling\.factor"):
        ModelInfo.from_dir(write_config(tmp_path, rope_scaling={"rope_type": "linear", "factor": "4"}))


def test_rotary_refuses_a_type_it_lacks_for_a_hand_built_info() -> None:
    with pytest.raises(UnsupportedModel, match="'yarn'"):
        rotary.inv_frequencies(16, 10000.0, {"rope_type": "yarn", "factor": 4.0})


@pytest.mark.parametrize(
    ("field", "value"),
    [("hidden_act", "gelu"), ("use_sliding_window", True), ("partial_rotary_factor", 0.5)],
)
def test_unsupported_config_features_are_refused_at_start_up(tmp_path, field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        ModelInfo.from_dir(write_config(tmp_path, **{field: value}))


def test_only_the_registry_names_architectures() -> None:
    """No production module branches on a transformers class name: such names are string constants only in
    the registry (and in the GGUF converter, which writes the one HF name it converts to)."""
    allowed = {"paddlellm/model_registry.py", "paddlellm/tools/convert_gguf.py"}
    found = []
    for path in (ROOT / "paddlellm").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if re.fullmatch(r"\w+For(CausalLM|ConditionalGeneration)", node.value) and rel not in allowed:
                    found.append((rel, node.value))
    assert not found, found


@pytest.mark.parametrize("window", [None, 2048, 4096])
def test_mistral_window_at_least_the_context_is_full_attention(tmp_path, window: int | None) -> None:
    info = ModelInfo.from_dir(write_config(tmp_path, "MistralForCausalLM", sliding_window=window))
    assert info.spec.sliding_window_key == "sliding_window"
    assert ModelInfo.from_dir(info.path, max_model_len=2048) == info


def test_mistral_window_shorter_than_the_context_is_refused(tmp_path) -> None:
    path = write_config(tmp_path, "MistralForCausalLM", sliding_window=1024)
    with pytest.raises(ConfigError, match=r"field 'sliding_window': 1024 < max_model_len 2048") as err:
        ModelInfo.from_dir(path, max_model_len=2048)
    assert isinstance(err.value, UnsupportedModel)
    assert ModelInfo.from_dir(path, max_model_len=1024).architecture == "MistralForCausalLM"
    # without an engine limit the model's own context is the limit
    with pytest.raises(ConfigError, match=r"1024 < max_position_embeddings 2048"):
        ModelInfo.from_dir(path)
    with pytest.raises(CheckpointError, match="sliding_window"):
        ModelInfo.from_dir(write_config(tmp_path, "MistralForCausalLM", sliding_window="4k"))


def test_other_architectures_ignore_sliding_window(tmp_path) -> None:
    """Qwen2/3 configs carry a `sliding_window` that only `use_sliding_window` switches on (refused above)."""
    info = ModelInfo.from_dir(write_config(tmp_path, "Qwen2ForCausalLM", sliding_window=16))
    assert info.spec.sliding_window_key is None
