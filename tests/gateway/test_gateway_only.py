"""`--triton-url`: the gateway alone takes the engine's facts from the server and refuses engine flags."""

from __future__ import annotations

import pytest

from launcher.cli import main
from launcher.gateway_only import EngineFacts
from launcher.supervisor import LaunchError


def config(**params: str) -> dict:
    return {"parameters": {k: {"string_value": v} for k, v in params.items()}}


def test_engine_facts_come_from_the_llm_engine_parameters() -> None:
    facts = EngineFacts.from_model_config(
        config(model="../.models/SmolLM2-135M-Instruct", max_model_len="2048")
    )
    assert facts == EngineFacts("SmolLM2-135M-Instruct", 2048)
    named = config(model="/m/x.gguf", served_model_name="mine", max_model_len="512")
    assert EngineFacts.from_model_config(named) == EngineFacts("mine", 512)
    assert (
        EngineFacts.from_model_config(config(model="/m/x.gguf", max_model_len="8")).served_model_name == "x"
    )
    with pytest.raises(LaunchError, match="max_model_len"):
        EngineFacts.from_model_config(config(model="/m", max_model_len="many"))


def test_engine_flags_are_refused_with_triton_url(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="^2$") as exc:
        main(["--triton-url", "127.0.0.1:1", "--max-num-seqs", "4", "--block-size", "16", "--dry-run"])
    assert exc.value.code == 2
    assert (
        "--block-size, --max-num-seqs: engine flags configure nothing with --triton-url"
        in capsys.readouterr().err
    )
    assert main(["--triton-url", "127.0.0.1:1", "--port", "8188", "--dry-run"]) == 0
