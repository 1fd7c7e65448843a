"""Speculative decoding's metrics (vLLM's spec_decode_* names): exported while it is on (the default; not with
--speculative-config ''), and
equal to the engine's own counters after a workload (the llm_engine adapter over a fake model that copies)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from paddlellm.engine.loop import EngineLoop
from paddlellm.protocol.metric_names import PREFIX
from paddlellm.triton.engine_metrics import EngineMetrics
from paddlellm.triton.engine_model import EngineModel
from paddlellm.triton.stream_pacer import StreamPacer
from tests.metrics.test_engine_metrics import MemoryBackend, engine_request, wait_all
from tests.unit.test_spec_decode import SPEC, _engine, _prompt


def _start(
    pb: ModuleType, backend: MemoryBackend, spec: str, pacer: StreamPacer | None = None
) -> tuple[EngineModel, Any]:
    holder: dict[str, Any] = {}

    def factory(before_step):
        engine, _ = _engine(spec, served_model_name="m")
        holder["engine"] = engine
        return EngineLoop(engine, before_step=before_step).start()

    model = EngineModel(pb, factory, cancel_poll_s=0.0, metrics=EngineMetrics(backend), pacer=pacer)
    return model, holder["engine"]


def _serve(pb: ModuleType, spec: str) -> tuple[MemoryBackend, Any]:
    backend = MemoryBackend()
    model, engine = _start(pb, backend, spec)
    try:
        model.metrics.bind("m")
        for i in range(3):
            req = engine_request(pb, f"r{i}", _prompt(40, i), {"max_tokens": 60, "temperature": 0})
            model.execute([req])
            wait_all([req.get_response_sender()])
        assert model.metrics.flush()
    finally:
        model.finalize()
    return backend, engine


def test_spec_decode_counters_match_the_engine(pb: ModuleType) -> None:
    backend, engine = _serve(pb, SPEC)
    stats = engine.stats()
    assert stats.spec_num_accepted_tokens > 0
    assert backend.counter("spec_decode_num_drafts_total") == stats.spec_num_drafts
    assert backend.counter("spec_decode_num_draft_tokens_total") == stats.spec_num_draft_tokens
    assert backend.counter("spec_decode_num_accepted_tokens_total") == stats.spec_num_accepted_tokens
    per_pos = [backend.counter("spec_decode_num_accepted_tokens_per_pos_total", str(j)) for j in range(4)]
    assert per_pos == list(stats.spec_accepted_per_position) and per_pos[0] >= per_pos[-1]
    declared = {name for name, _ in backend.declared}
    assert PREFIX + "spec_decode_num_accepted_tokens_per_pos_total" in declared


def test_no_spec_decode_series_without_speculative_config(pb: ModuleType) -> None:
    backend, _ = _serve(pb, "")
    names = {name for name, _ in backend.declared} | {name for name, _ in backend.counters}
    assert not [n for n in names if "spec_decode" in n]
    assert PREFIX + "generation_tokens_total" in names


def test_an_accepted_run_streams_as_one_response(pb: ModuleType) -> None:
    """The automatic stream interval at a rate within its budget (a response per engine output): a step's
    accepted run goes out in one response, and the streamed ids are those generated without speculation. (An
    explicit interval k caps responses at k tokens: tests/adapters/test_engine_model.py.)"""
    streamed: dict[str, list[list[int]]] = {}
    for spec in ("", SPEC):
        backend = MemoryBackend()
        model, _ = _start(pb, backend, spec, pacer=StreamPacer(1e9))
        try:
            sampling = {
                "max_tokens": 60,
                "temperature": 0,
                "ignore_eos": True,
                "stream": True,
                "stream_interval": 0,
            }
            req = engine_request(pb, "s", _prompt(40, 1), sampling)
            model.execute([req])
            sender = req.get_response_sender()
            wait_all([sender])
            streamed[spec] = [r.outputs()["token_ids"].tolist() for r in sender.responses]
        finally:
            model.finalize()
    off, on = streamed[""], streamed[SPEC]
    assert sum(off, []) == sum(on, []) and len(sum(on, [])) == 60
    assert max(len(ids) for ids in off) == 1
    assert max(len(ids) for ids in on) > 1 and len(on) < len(off)
