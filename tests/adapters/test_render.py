"""Strict template rendering and model-config parameter parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.render import MARKER, render_model_repository, substitute
from paddlellm.config import EngineConfig
from paddlellm.errors import ConfigError
from paddlellm.triton.params import model_params, pick


def template(tmp_path: Path, text: str) -> Path:
    src = tmp_path / "src"
    (src / "m" / "1").mkdir(parents=True)
    (src / "m" / "config.pbtxt").write_text(text)
    (src / "m" / "1" / "model.py").write_text("x = '${not_a_template}'\n")  # only .pbtxt files are templates
    return src


def test_substitutes_and_escapes(tmp_path: Path) -> None:
    src = template(tmp_path, 'a: "${a}" b: "${b}"\n')
    out = render_model_repository(src, tmp_path / "out", {"a": "1", "b": 'say "hi" \\ there'})
    assert (out / "m" / "config.pbtxt").read_text() == 'a: "1" b: "say \\"hi\\" \\\\ there"\n'
    assert (out / "m" / "1" / "model.py").read_text() == "x = '${not_a_template}'\n"


def test_missing_value_names_the_parameter(tmp_path: Path) -> None:
    src = template(tmp_path, 'a: "${a}" b: "${b}"\n')
    with pytest.raises(ConfigError, match=r"no value .*\bb\b"):
        render_model_repository(src, tmp_path / "out", {"a": "1"})
    assert not (tmp_path / "out").exists()


def test_unused_value_names_the_parameter(tmp_path: Path) -> None:
    src = template(tmp_path, 'a: "${a}"\n')
    with pytest.raises(ConfigError, match="not used.*typo"):
        render_model_repository(src, tmp_path / "out", {"a": "1", "typo": "2"})


def test_non_string_values_and_bad_placeholders_fail(tmp_path: Path) -> None:
    src = template(tmp_path, 'a: "${a}"\n')
    with pytest.raises(ConfigError, match="strings"):
        render_model_repository(src, tmp_path / "out", {"a": 1})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="malformed"):
        substitute('x: "${bad name}"', {"bad name": "1"})


def test_rerender_replaces_only_its_own_output(tmp_path: Path) -> None:
    src = template(tmp_path, 'a: "${a}"\n')
    out = render_model_repository(src, tmp_path / "out", {"a": "1"})
    (out / "stale.txt").write_text("old")
    render_model_repository(src, out, {"a": "2"})
    assert (out / "m" / "config.pbtxt").read_text() == 'a: "2"\n' and not (out / "stale.txt").exists()
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
    with pytest.raises(ConfigError, match="'a'.*never substituted"):
        model_params({"parameters": {"a": {"string_value": "x${a}"}}})
    with pytest.raises(ConfigError, match="'a'"):
        model_params({"parameters": {"a": "1"}})
    assert pick({"a": "1", "b": "2"}, "a") == {"a": "1"}
    with pytest.raises(ConfigError, match="missing.*c"):
        pick({"a": "1"}, "a", "c")
