"""Every config.pbtxt matches paddlellm/protocol/, parsed with Triton's own ModelConfig schema, and holds real
values (the committed repository runs in a stock tritonserver as is)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from launcher.cli import DEFAULT_MODEL
from launcher.render import (
    COMMITTED_MODEL,
    committed_engine_values,
    engine_parameter_block,
    parameters,
    render_model_repository,
    with_engine_block,
)
from launcher.render import main as render_main
from paddlellm import protocol as p
from paddlellm.config import EngineConfig
from paddlellm.triton.text_models import AUTO, TOOL_CALL_PARSER
from tests.adapters.conftest import MODEL_REPOSITORY

PYTHON_MODELS = (p.TOKENIZER, p.LLM_ENGINE, p.DETOKENIZER)


def load(name: str, root: Path = MODEL_REPOSITORY) -> mc.ModelConfig:
    return text_format.Parse((root / name / "config.pbtxt").read_text(), mc.ModelConfig())


def tensor_specs(tensors) -> list[tuple[str, str, tuple[int, ...], bool]]:
    return [
        (t.name, mc.DataType.Name(t.data_type), tuple(t.dims), getattr(t, "optional", False)) for t in tensors
    ]


def protocol_specs(specs) -> list[tuple[str, str, tuple[int, ...], bool]]:
    return [(s.name, s.dtype, s.dims, s.optional) for s in specs]


def test_repository_holds_exactly_the_protocol_models() -> None:
    dirs = sorted(d.name for d in MODEL_REPOSITORY.iterdir() if d.is_dir() and not d.name.startswith("."))
    assert dirs == sorted(m.name for m in p.MODELS)


@pytest.mark.parametrize("spec", p.MODELS, ids=lambda s: s.name)
def test_config_matches_protocol(spec: p.ModelSpec) -> None:
    cfg = load(spec.name)
    assert cfg.name == spec.name
    assert cfg.max_batch_size == 0
    # No dynamic batcher: it drops requests that arrive cancelled, so the detokenizer could no longer see a
    # cancelled ensemble and abort the engine (test_triton_e2e.py::test_ensemble_cancel_reaches_the_engine).
    assert not cfg.HasField("dynamic_batching")
    assert tensor_specs(cfg.input) == protocol_specs(spec.inputs)
    assert tensor_specs(cfg.output) == protocol_specs(spec.outputs)
    if spec in PYTHON_MODELS:
        assert cfg.backend == "python"
        assert cfg.model_transaction_policy.decoupled == spec.decoupled
        assert (MODEL_REPOSITORY / spec.name / "1" / "model.py").is_file()
        [group] = cfg.instance_group
        assert group.kind == mc.ModelInstanceGroup.KIND_CPU and group.count == 1
    else:
        assert cfg.platform == "ensemble"


def test_engine_parameters_are_the_engine_config_fields_with_real_defaults() -> None:
    cfg = load(p.LLM_ENGINE.name)
    assert sorted(cfg.parameters) == sorted(f.name for f in dataclasses.fields(EngineConfig))
    values = {k: v.string_value for k, v in cfg.parameters.items()}
    assert values == committed_engine_values()
    assert EngineConfig.from_params(values) == EngineConfig(model=COMMITTED_MODEL)


def test_every_model_names_the_default_model_relative_to_the_repository() -> None:
    """The adapters resolve a relative `model` against the repository (paddlellm.triton.params), so the
    committed value points at where set-up converts the default model, wherever tritonserver runs."""
    assert (MODEL_REPOSITORY / COMMITTED_MODEL).resolve() == DEFAULT_MODEL.resolve()
    engine = load(p.LLM_ENGINE.name).parameters
    for name in (p.TOKENIZER.name, p.DETOKENIZER.name):
        for key, value in load(name).parameters.items():
            if key != TOOL_CALL_PARSER:  # the tokenizer's own; every other value is the engine's
                assert value.string_value == engine[key].string_value, (name, key)
    tokenizer = load(p.TOKENIZER.name).parameters
    # enable_mm, limit_mm_per_prompt: the tokenizer decodes and counts images (vision/chat_images.py)
    assert set(tokenizer) == {"model", "max_model_len", TOOL_CALL_PARSER, "enable_mm", "limit_mm_per_prompt"}
    assert tokenizer[TOOL_CALL_PARSER].string_value == AUTO  # from the chat template unless set
    for f in MODEL_REPOSITORY.rglob("config.pbtxt"):
        assert "${" not in f.read_text(), f
        parameters(f.read_text(), str(f))  # one-line form: the launcher can set them


def test_engine_parameters_are_generated_from_the_declarations() -> None:
    """The committed block is what `python -m launcher.render --update` writes (no hand edits, not stale)."""
    text = (MODEL_REPOSITORY / p.LLM_ENGINE.name / "config.pbtxt").read_text(encoding="utf-8")
    assert with_engine_block(text) == text
    assert engine_parameter_block() in text
    assert render_main(["--check", "--repository", str(MODEL_REPOSITORY)]) == 0


def test_ensemble_wires_the_steps_by_the_protocol() -> None:
    cfg = load(p.ENSEMBLE.name)
    steps = {s.model_name: s for s in cfg.ensemble_scheduling.step}
    assert list(steps) == [p.TOKENIZER.name, p.LLM_ENGINE.name, p.DETOKENIZER.name]
    ensemble_inputs = {t.name for t in p.ENSEMBLE.inputs}
    produced: dict[str, str] = {}  # ensemble tensor -> producing model
    for step_spec in PYTHON_MODELS:
        step = steps[step_spec.name]
        assert set(step.input_map) == {t.name for t in step_spec.inputs}
        assert set(step.output_map) == {t.name for t in step_spec.outputs}
        for value in step.input_map.values():
            assert value in ensemble_inputs or value in produced, f"{step_spec.name} reads unknown {value}"
        for value in step.output_map.values():
            produced[value] = step_spec.name
    # Every ensemble output descends from the decoupled engine step (Triton rejects mixing tensors from
    # before and after it): the detokenizer reads engine outputs only and makes the text; the other outputs
    # are the engine's own, under the same names.
    for value in steps[p.DETOKENIZER.name].input_map.values():
        assert produced.get(value) == p.LLM_ENGINE.name
    for out in p.ENSEMBLE.outputs:
        expected = p.DETOKENIZER.name if out.name == p.TEXT_OUTPUT else p.LLM_ENGINE.name
        assert produced.get(out.name) == expected, out.name
    for key, value in steps[p.LLM_ENGINE.name].output_map.items():
        assert key == value or value.startswith("_"), (key, value)


def test_rendered_repository_round_trips(tmp_path: Path) -> None:
    config = EngineConfig(model="/models/x", max_model_len=4096, use_warmup=True, kv_cache_ratio=0.5)
    # What the launcher passes: the engine's values, and --tool-call-parser for the tokenizer.
    params = {**config.to_params(), TOOL_CALL_PARSER: "hermes"}
    out = render_model_repository(MODEL_REPOSITORY, tmp_path / "repo", params)
    engine = load(p.LLM_ENGINE.name, out)
    parsed = EngineConfig.from_params({k: v.string_value for k, v in engine.parameters.items()})
    assert parsed == config
    assert load(p.TOKENIZER.name, out).parameters["max_model_len"].string_value == "4096"
    assert load(p.DETOKENIZER.name, out).parameters["model"].string_value == "/models/x"
    assert load(p.TOKENIZER.name, out).parameters[TOOL_CALL_PARSER].string_value == "hermes"
    assert TOOL_CALL_PARSER not in load(p.LLM_ENGINE.name, out).parameters
    assert (out / "llm_engine" / "1" / "model.py").read_text() == (
        MODEL_REPOSITORY / "llm_engine" / "1" / "model.py"
    ).read_text()
