"""--enable-mm, --limit-mm-per-prompt and --allowed-media-domains (issue #29 part 2a): accepted for a
vision-language checkpoint and refused, with the flag named, for a text-only one; the values reach the engine,
the gateway and the tokenizer model's parameters in the rendered repository; a gateway-only launcher reads
them from the running llm_engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.cli import build_parser, main, plan_from_args
from launcher.gateway_only import EngineFacts
from launcher.render import parameters, render_model_repository
from paddlellm.model_info import ModelInfo
from tests.unit.test_mrope import IDS, TEXT, VISION

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def vl_model(tmp_path: Path) -> Path:
    """A Qwen2.5-VL checkpoint's config.json (the Hub's flat layout): enough for the launcher."""
    d = tmp_path / "tiny-vl"
    d.mkdir()
    cfg = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        **TEXT,
        **IDS,
        "vision_config": VISION,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
    }
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture
def text_model(tmp_path: Path) -> Path:
    d = tmp_path / "smol"
    d.mkdir()
    cfg = {"architectures": ["LlamaForCausalLM"], **TEXT}
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def dry_run(argv: list[str], capsys) -> dict:
    assert main([*argv, "--dry-run"]) == 0
    return json.loads(capsys.readouterr().out)


def error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit, match="^2$"):
        main([*argv, "--dry-run"])
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_model_info_tells_a_vision_language_checkpoint(vl_model: Path, text_model: Path) -> None:
    vl = ModelInfo.from_dir(str(vl_model), 512)
    assert vl.architecture == "Qwen2ForCausalLM"  # its text decoder, which the engine sizes the KV cache from
    assert vl.vision is not None and vl.vision.image_token_id == IDS["image_token_id"]
    assert vl.vision.architecture == "Qwen2_5_VLForConditionalGeneration"
    assert ModelInfo.from_dir(str(text_model)).vision is None


def test_enable_mm_is_accepted_for_a_vision_language_checkpoint(vl_model: Path, capsys) -> None:
    out = dry_run(["--model", str(vl_model), "--enable-mm"], capsys)
    assert out["engine"]["enable_mm"] is True and out["engine"]["limit_mm_per_prompt"] == '{"image": 4}'
    gateway = out["gateway"]
    assert (gateway["enable_mm"], gateway["limit_mm_per_prompt"], gateway["allowed_media_domains"]) == (
        True,
        4,
        [],
    )
    off = dry_run(["--model", str(vl_model)], capsys)  # served as text without the flag
    assert off["engine"]["enable_mm"] is False and off["gateway"]["enable_mm"] is False


@pytest.mark.parametrize(
    ("value", "images"), [('{"image": 2}', 2), ("image=3", 3), ('{"image": 0}', 0), ("{}", 0)]
)
def test_limit_mm_per_prompt_takes_vllms_forms(vl_model: Path, capsys, value: str, images: int) -> None:
    out = dry_run(["--model", str(vl_model), "--enable-mm", "--limit-mm-per-prompt", value], capsys)
    assert out["gateway"]["limit_mm_per_prompt"] == images


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--enable-mm"], "--enable-mm: smol (LlamaForCausalLM) is a text-only checkpoint"),
        (["--enable-mm", "1"], "images need a vision-language model"),
        (["--limit-mm-per-prompt", '{"video": 1}'], "--limit-mm-per-prompt: only image can be limited"),
        (["--limit-mm-per-prompt", '{"image": -1}'], "--limit-mm-per-prompt: the image limit must be"),
        (["--limit-mm-per-prompt", "image=x"], "--limit-mm-per-prompt: expected"),
        (["--allowed-media-domains", "img.example"], "--allowed-media-domains: needs --enable-mm"),
    ],
)
def test_bad_mm_flags_fail_naming_the_flag(text_model: Path, capsys, argv: list[str], needle: str) -> None:
    assert needle in error(["--model", str(text_model), *argv], capsys)


def test_a_gguf_is_refused_with_enable_mm(tmp_path: Path, capsys) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert "is a text-only checkpoint" in error(["--model", str(gguf), "--enable-mm"], capsys)


def test_values_reach_the_tokenizer_and_the_engine_parameters(vl_model: Path, tmp_path: Path) -> None:
    parser = build_parser()
    argv = ["--model", str(vl_model), "--enable-mm", "--limit-mm-per-prompt", "image=3"]
    argv += ["--allowed-media-domains", "img.example, cdn.example"]
    plan = plan_from_args(parser.parse_args(argv), parser)
    assert plan.gateway.allowed_media_domains == ("img.example", "cdn.example")
    repo = render_model_repository(ROOT / "model_repository", tmp_path / "repo", plan.engine.to_params())
    for model in ("tokenizer", "llm_engine"):
        params = parameters((repo / model / "config.pbtxt").read_text())
        assert (params["enable_mm"], params["limit_mm_per_prompt"]) == ("1", "image=3"), model


def test_gateway_only_reads_images_from_the_running_engine() -> None:
    def config(**params: str) -> dict:
        return {"parameters": {k: {"string_value": v} for k, v in params.items()}}

    on = EngineFacts.from_model_config(
        config(model="/m/vl", max_model_len="64", enable_mm="1", limit_mm_per_prompt='{"image": 2}')
    )
    assert (on.enable_mm, on.image_limit) == (True, 2)
    old = EngineFacts.from_model_config(config(model="/m/vl", max_model_len="64"))  # from before the flags
    assert (old.enable_mm, old.image_limit) == (False, 0)
