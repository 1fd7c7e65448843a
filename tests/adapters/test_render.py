"""Strict template rendering and model-config parameter parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.render import MARKER, parameters, render_model_repository
from paddlellm.config import EngineConfig
from paddlellm.errors import ConfigError
from paddlellm.triton.params import model_params, pick, triton_params


def repository(tmp_path: Path, text: str, name: str = "m") -> Path:
    src = tmp_path / "src"
    (src / name / "1").mkdir(parents=True)
    (src / name / "config.pbtxt").write_text(text)
    (src / name / "1" / "model.py").write_text("x = 1\n")
    return src


def param(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'


def test_sets_declared_values_and_escapes(tmp_path: Path) -> None:
    src = repository(tmp_path, "# a comment stays\n" + param("a", "default") + param("b", "keep"))
    out = render_model_repository(src, tmp_path / "out", {"a": 'say "hi" \\ there'})
    text = (out / "m" / "config.pbtxt").read_text()
    assert text == "# a comment stays\n" + param("a", 'say \\"hi\\" \\\\ there') + param("b", "keep")
    assert parameters(text) == {"a": 'say "hi" \\ there', "b": "keep"}
    assert (out / "m" / "1" / "model.py").read_text() == "x = 1\n"
    assert "default" in (src / "m" / "config.pbtxt").read_text()  # the source is never touched


def test_unused_value_names_the_parameter(tmp_path: Path) -> None:
    src = repository(tmp_path, param("a", "1"))
    with pytest.raises(ConfigError, match="not declared.*typo"):
        render_model_repository(src, tmp_path / "out", {"a": "1", "typo": "2"})
    assert not (tmp_path / "out").exists()


def test_malformed_engine_value_names_the_parameter(tmp_path: Path) -> None:
    src = repository(tmp_path, param("block_size", "64"), name="llm_engine")
    with pytest.raises(ConfigError, match="'block_size'.*sixty"):
        render_model_repository(src, tmp_path / "out", {"block_size": "sixty"})
    with pytest.raises(ConfigError, match="unknown engine config key.*nope"):
        render_model_repository(
            repository(tmp_path / "2", param("nope", "1"), name="llm_engine"), tmp_path / "out", {}
        )


def test_non_string_values_and_other_parameter_forms_fail(tmp_path: Path) -> None:
    src = repository(tmp_path, param("a", "1"))
    with pytest.raises(ConfigError, match="strings"):
        render_model_repository(src, tmp_path / "out", {"a": 1})  # type: ignore[dict-item]
    multi = repository(tmp_path / "2", 'parameters {\n  key: "a"\n  value: { string_value: "1" }\n}\n')
    with pytest.raises(ConfigError, match="one line"):
        render_model_repository(multi, tmp_path / "out", {"a": "2"})


def test_rerender_replaces_only_its_own_output(tmp_path: Path) -> None:
    src = repository(tmp_path, param("a", "0"))
    out = render_model_repository(src, tmp_path / "out", {"a": "1"})
    (out / "stale.txt").write_text("old")
    render_model_repository(src, out, {"a": "2"})
    assert (out / "m" / "config.pbtxt").read_text() == param("a", "2") and not (out / "stale.txt").exists()
    assert (out / MARKER).exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious").write_text("keep")
    with pytest.raises(ConfigError, match="refusing"):
        render_model_repository(src, foreign, {"a": "1"})
    assert (foreign / "precious").read_text() == "keep"


def test_engine_params_round_trip() -> None:
    config = EngineConfig(use_warmup=True, gpu_memory_utilization=0.123456789, scheduler_ttl=1e-3, seed=-5)
    params = config.to_params()
    assert params["use_warmup"] == "1"
    assert EngineConfig.from_params(params) == config


def test_model_params() -> None:
    cfg = {"parameters": {"a": {"string_value": "1"}, "b": {"string_value": ""}}}
    assert model_params(json.dumps(cfg)) == {"a": "1", "b": ""}
    assert model_params({}) == {}
    with pytest.raises(ConfigError, match="'a'.*placeholder"):
        model_params({"parameters": {"a": {"string_value": "x${a}"}}})
    with pytest.raises(ConfigError, match="'a'"):
        model_params({"parameters": {"a": "1"}})
    assert pick({"a": "1", "b": "2"}, "a") == {"a": "1"}
    with pytest.raises(ConfigError, match="missing.*c"):
        pick({"a": "1"}, "a", "c")


def test_relative_model_path_resolves_against_the_repository(tmp_path: Path) -> None:
    """Not against tritonserver's working directory: Triton gives each model its folder in the repository."""
    config = {"parameters": {"model": {"string_value": "../.models/m"}, "x": {"string_value": "../y"}}}
    args = {"model_config": json.dumps(config), "model_repository": str(tmp_path / "repo" / "llm_engine")}
    assert triton_params(args) == {"model": str(tmp_path / ".models" / "m"), "x": "../y"}
    config["parameters"]["model"]["string_value"] = "/abs/m"
    assert triton_params(args | {"model_config": json.dumps(config)})["model"] == "/abs/m"
