"""llm_engine's decoupled flow with the fake pb_utils and a real EngineLoop over the fake executor."""

from __future__ import annotations

import json
import math
import threading
import time
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from paddlellm import protocol as p
from paddlellm.config import EngineConfig
from paddlellm.engine.loop import EngineLoop
from paddlellm.engine.outputs import RequestOutput
from paddlellm.triton import adapter
from paddlellm.triton.engine_model import DETOKENIZER_CONTEXT, EngineModel
from paddlellm.triton.stream_pacer import StreamPacer
from tests.adapters.conftest import initialize_args
from tests.unit.engine_fakes import collect, make_engine, prompt

WAIT_S = 10.0


def engine_request(
    pb: ModuleType,
    rid: str,
    ids: list[int],
    sampling: dict[str, Any] | None = None,
    resume: list[int] | None = None,
    **kw: Any,
):
    return pb.InferenceRequest(
        inputs=[
            pb.Tensor(p.INPUT_IDS, np.asarray(ids, np.int32)),
            pb.Tensor(p.SAMPLING, np.array([json.dumps(sampling or {}).encode()], np.object_)),
            pb.Tensor(p.RESUME_IDS, np.asarray(resume or [], np.int32).reshape(-1)),
        ],
        request_id=rid,
        **kw,
    )


class Factory:
    """Builds the real EngineLoop over make_engine(); keeps the engine for inspection."""

    def __init__(self, **engine_kw: Any) -> None:
        self.engine_kw = engine_kw
        self.engine = None

    def __call__(self, before_step):
        self.engine, _ = make_engine(**self.engine_kw)
        return EngineLoop(self.engine, before_step=before_step).start()


@pytest.fixture
def model(pb: ModuleType):
    factory = Factory()
    # Per token whatever the rate (the fake engine steps in microseconds, which the automatic interval would
    # rightly coalesce): these tests are about what each response carries.
    m = EngineModel(pb, factory, cancel_poll_s=0.0, pacer=StreamPacer(budget_per_s=math.inf))
    m.factory = factory
    yield m
    m.finalize()


def wait_done(sender) -> None:
    assert sender.closed.wait(WAIT_S), "no FINAL response"
    time.sleep(0.01)  # let the sender thread attempt anything it (wrongly) still had queued


def outputs(sender) -> list[dict[str, np.ndarray]]:
    return [r.outputs() for r in sender.responses]


def expected_tokens(rid: str, ids: list[int], **sampling: Any) -> list[int]:
    from paddlellm.sampling import SamplingParams

    engine, _ = make_engine()
    engine.add_request(rid, ids, SamplingParams(**sampling))
    return collect(engine.run_until_done())[rid]


def test_streams_every_step_with_final_on_last(pb: ModuleType, model: EngineModel) -> None:
    ids = prompt(20)
    req = engine_request(pb, "r1", ids, {"max_tokens": 12, "temperature": 0.0, "ignore_eos": True})
    assert model.execute([req]) is None  # decoupled: nothing returned
    sender = req.get_response_sender()
    wait_done(sender)

    flags = [s.flags for s in sender.sent]
    assert flags == [0] * (len(flags) - 1) + [pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL]
    outs = outputs(sender)
    got = [int(t) for o in outs for t in o[p.TOKEN_IDS]]
    assert got == expected_tokens("r1", ids, max_tokens=12, temperature=0.0, ignore_eos=True)
    assert [int(o[p.COMPLETION_TOKENS][0]) for o in outs] == list(range(1, 13))
    assert {int(o[p.PROMPT_TOKENS][0]) for o in outs} == {20}
    reasons = [o[p.FINISH_REASON][0].decode() for o in outs]
    assert reasons == [""] * 11 + ["length"]
    stats = [o[p.ENGINE_STATS][0].decode() for o in outs]
    assert stats[:-1] == [""] * 11 and {"queue_s", "ttft_s", "e2e_s"} <= set(json.loads(stats[-1]))
    # Every response carries exactly the names and dtypes the protocol promises.
    for o in outs:
        assert {spec.name for spec in p.LLM_ENGINE.outputs} == set(o)
        for spec in p.LLM_ENGINE.outputs:
            assert o[spec.name].dtype == np.dtype(p.NUMPY_DTYPES[spec.dtype])


def test_window_holds_recent_context_then_new_ids(pb: ModuleType, model: EngineModel) -> None:
    req = engine_request(pb, "w", prompt(5), {"max_tokens": 20, "temperature": 0.0, "ignore_eos": True})
    model.execute([req])
    wait_done(req.get_response_sender())
    emitted: list[int] = []
    for o in outputs(req.get_response_sender()):
        new = [int(t) for t in o[p.TOKEN_IDS]]
        window = [int(t) for t in o[p.WINDOW_IDS]]
        prefix_len = int(o[p.PREFIX_LEN][0])
        assert prefix_len == min(len(emitted), DETOKENIZER_CONTEXT)
        assert window[:prefix_len] == emitted[len(emitted) - prefix_len :]
        assert window[prefix_len:] == new
        emitted += new
    assert len(emitted) == 20


@pytest.mark.parametrize("cut", [1, 3, DETOKENIZER_CONTEXT + 2])
def test_resumed_request_continues_and_its_first_window_carries_the_resume_ids(
    pb: ModuleType, model: EngineModel, cut: int
) -> None:
    sampling = {"max_tokens": 16, "temperature": 0.8, "seed": 3, "ignore_eos": True}
    full = expected_tokens("x", prompt(9), **sampling)
    req = engine_request(pb, "res", prompt(9), sampling, resume=full[:cut])
    model.execute([req])
    wait_done(req.get_response_sender())
    outs = outputs(req.get_response_sender())
    assert [int(t) for o in outs for t in o[p.TOKEN_IDS]] == full[cut:]
    assert [int(o[p.COMPLETION_TOKENS][0]) for o in outs] == list(range(cut + 1, 17))
    assert {int(o[p.PROMPT_TOKENS][0]) for o in outs} == {9}
    # Windows exactly as the uncut run would have sent them from here on.
    emitted = full[:cut]
    for o in outs:
        new = [int(t) for t in o[p.TOKEN_IDS]]
        prefix_len = int(o[p.PREFIX_LEN][0])
        assert prefix_len == min(len(emitted), DETOKENIZER_CONTEXT)
        assert [int(t) for t in o[p.WINDOW_IDS]] == emitted[len(emitted) - prefix_len :] + new
        emitted += new


def test_resume_at_max_tokens_is_one_final_length_response(pb: ModuleType, model: EngineModel) -> None:
    req = engine_request(pb, "done", prompt(9), {"max_tokens": 4}, resume=[5, 6, 7, 8])
    model.execute([req])
    sender = req.get_response_sender()
    wait_done(sender)
    [out] = outputs(sender)
    assert out[p.FINISH_REASON][0] == b"length" and out[p.TOKEN_IDS].size == 0
    assert int(out[p.COMPLETION_TOKENS][0]) == 4
    assert sender.sent[-1].flags == pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def test_missing_resume_ids_tensor_is_a_fresh_request(pb: ModuleType, model: EngineModel) -> None:
    req = pb.InferenceRequest(
        inputs=[
            pb.Tensor(p.INPUT_IDS, np.asarray(prompt(5), np.int32)),
            pb.Tensor(p.SAMPLING, np.array([b'{"max_tokens": 3}'], np.object_)),
        ],
        request_id="old",
    )
    model.execute([req])
    wait_done(req.get_response_sender())
    assert [int(o[p.COMPLETION_TOKENS][0]) for o in outputs(req.get_response_sender())] == [1, 2, 3]


@pytest.mark.parametrize(
    ("sampling", "ids", "param"),
    [
        ({"temperature": 5.0}, [1, 2, 3], "temperature"),
        ({"bogus": 1}, [1, 2, 3], "bogus"),
        ({"max_tokens": 4000}, [1, 2, 3], None),  # over max_model_len=2048: the engine's own check
        ({}, [], p.INPUT_IDS),
    ],
)
def test_invalid_request_is_one_final_error(pb: ModuleType, model: EngineModel, sampling, ids, param) -> None:
    req = engine_request(pb, "bad", ids, sampling)
    model.execute([req])
    sender = req.get_response_sender()
    assert sender.finished
    [sent] = sender.sent
    assert sent.flags == pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
    err = sent.response.error()
    assert err.code() == pb.TritonError.INVALID_ARG
    parsed = p.parse_error(err.message())
    assert parsed is not None and type(parsed).__name__ == "InvalidRequest"
    if param is not None:
        assert parsed.param == param
    assert "Traceback" not in err.message()


def test_bad_request_does_not_disturb_others_in_the_same_batch(pb: ModuleType, model: EngineModel) -> None:
    good = engine_request(pb, "good", prompt(4), {"max_tokens": 3, "ignore_eos": True})
    bad = engine_request(pb, "bad", prompt(4), {"top_p": 0})
    model.execute([bad, good])
    wait_done(good.get_response_sender())
    assert bad.get_response_sender().sent[0].response.has_error()
    assert len(good.get_response_sender().responses) == 3


def test_duplicate_live_request_id_is_rejected(pb: ModuleType, model: EngineModel) -> None:
    first = engine_request(pb, "dup", prompt(4), {"max_tokens": 200, "ignore_eos": True})
    second = engine_request(pb, "dup", prompt(4), {"max_tokens": 2})
    model.execute([first, second])
    err = second.get_response_sender().sent[0].response.error()
    assert err.code() == pb.TritonError.INVALID_ARG and "already in use" in err.message()
    wait_done(first.get_response_sender())


def test_cancelled_request_is_aborted_and_finishes(pb: ModuleType, pb_slow_model: EngineModel) -> None:
    model = pb_slow_model
    req = engine_request(pb, "c", prompt(8), {"max_tokens": 1000, "ignore_eos": True})
    model.execute([req])
    sender = req.get_response_sender()
    deadline = time.monotonic() + WAIT_S
    while len(sender.sent) < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    req.cancel()
    wait_done(sender)
    last = sender.sent[-1]
    assert last.flags == pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
    assert last.response.outputs()[p.FINISH_REASON][0] == b"abort"
    assert len(sender.responses) < 1000
    engine = model.factory.engine
    assert not engine.has_unfinished()
    assert engine.stats().num_free_blocks == engine.stats().num_total_blocks  # blocks came back


@pytest.fixture
def pb_slow_model(pb: ModuleType):
    """An engine whose steps take ~2 ms, so a test can act mid-generation."""
    factory = Factory()

    def slow(before_step):
        def hook():
            time.sleep(0.002)
            before_step()

        return factory(hook)

    m = EngineModel(pb, slow, cancel_poll_s=0.0)
    m.factory = factory
    yield m
    m.finalize()


def test_abort_request_from_detokenizer_stops_the_request(pb: ModuleType, pb_slow_model: EngineModel) -> None:
    model = pb_slow_model
    req = engine_request(pb, "victim", prompt(8), {"max_tokens": 1000, "ignore_eos": True})
    model.execute([req])
    time.sleep(0.02)
    abort = adapter.abort_request(pb, "victim")  # exactly what the detokenizer sends
    abort_req = pb.InferenceRequest(inputs=abort.inputs(), request_id="victim", parameters=abort.parameters())
    model.execute([abort_req])
    [ack] = abort_req.get_response_sender().sent  # the abort request itself gets only FINAL
    assert ack.response is None and ack.flags == pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
    sender = req.get_response_sender()
    wait_done(sender)
    assert sender.sent[-1].response.outputs()[p.FINISH_REASON][0] == b"abort"


def test_abort_of_unknown_id_is_harmless(pb: ModuleType, model: EngineModel) -> None:
    abort = adapter.abort_request(pb, "nobody")
    req = pb.InferenceRequest(inputs=abort.inputs(), request_id="nobody", parameters=abort.parameters())
    model.execute([req])
    assert req.get_response_sender().finished


def test_engine_failure_ends_every_live_request_with_an_error(pb: ModuleType) -> None:
    factory = Factory(fail_on_call=3)
    model = EngineModel(pb, factory, cancel_poll_s=0.0)
    try:
        reqs = [
            engine_request(pb, f"f{i}", prompt(6, i), {"max_tokens": 50, "ignore_eos": True})
            for i in range(3)
        ]
        model.execute(reqs)
        for r in reqs:
            sender = r.get_response_sender()
            wait_done(sender)
            last = sender.sent[-1]
            assert last.flags == pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
            err = last.response.error()
            assert err.code() == pb.TritonError.INTERNAL
            assert type(p.parse_error(err.message())).__name__ == "EngineDead"
        assert not model.healthy()
        # Later requests fail at once instead of hanging.
        late = engine_request(pb, "late", prompt(3), {"max_tokens": 2})
        model.execute([late])
        assert late.get_response_sender().sent[0].response.error().code() == pb.TritonError.INTERNAL
    finally:
        model.finalize()


def test_finalize_ends_in_flight_requests(pb: ModuleType, pb_slow_model: EngineModel) -> None:
    req = engine_request(pb, "inflight", prompt(8), {"max_tokens": 5000, "ignore_eos": True})
    pb_slow_model.execute([req])
    time.sleep(0.02)
    pb_slow_model.finalize()
    sender = req.get_response_sender()
    assert sender.finished and sender.sent[-1].response.has_error()


def test_many_concurrent_requests_each_get_their_own_stream(pb: ModuleType, model: EngineModel) -> None:
    reqs = [
        engine_request(pb, f"m{i}", prompt(5 + i, i), {"max_tokens": 7, "ignore_eos": True})
        for i in range(12)
    ]
    threads = [threading.Thread(target=model.execute, args=([r],)) for r in reqs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in reqs:
        sender = r.get_response_sender()
        wait_done(sender)
        assert sum(len(o[p.TOKEN_IDS]) for o in outputs(sender)) == 7
        assert sender.sent[-1].flags == pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def test_model_py_wires_config_and_loop(pb: ModuleType, load_model, monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_model("llm_engine")
    seen: list[EngineConfig] = []

    def fake_factory(config: EngineConfig):
        seen.append(config)
        return Factory(block_size=config.block_size)

    monkeypatch.setattr(module, "engine_loop_factory", fake_factory)
    config = EngineConfig(max_model_len=512, block_size=16, max_num_seqs=4)
    triton_model = module.TritonPythonModel()
    triton_model.initialize(initialize_args("llm_engine", config.to_params()))
    try:
        assert seen == [config]
        sampling = {"max_tokens": 3, "ignore_eos": True, "stream_interval": 1}  # one response per token
        req = engine_request(pb, "via-model-py", prompt(4), sampling)
        assert triton_model.execute([req]) is None
        wait_done(req.get_response_sender())
        assert len(req.get_response_sender().responses) == 3
    finally:
        triton_model.finalize()


def test_model_py_rejects_an_unrendered_config(pb: ModuleType, load_model) -> None:
    from paddlellm.errors import ConfigError

    module = load_model("llm_engine")
    params = EngineConfig().to_params() | {"block_size": "${block_size}"}
    with pytest.raises(ConfigError, match="block_size"):
        module.TritonPythonModel().initialize(initialize_args("llm_engine", params))


class ScriptedLoop:
    """A loop that answers every add with one final output of fixed new ids (what a resumed engine sends)."""

    def __init__(self, new_ids: list[int]) -> None:
        self.new_ids = new_ids

    def add(self, request_id, prompt_ids, params, sink, resume_ids=(), images=None):
        n = len(resume_ids) + len(self.new_ids)
        sink(
            RequestOutput(
                request_id, tuple(self.new_ids), len(prompt_ids), n, finished=True, finish_reason="stop"
            )
        )
        return params

    def abort(self, request_id: str) -> None: ...

    def healthy(self) -> bool:
        return True

    def stop(self, timeout: float | None = 30.0) -> None: ...


def test_a_character_split_across_the_cut_comes_out_whole(pb: ModuleType, llama2_tokenizer_dir: str) -> None:
    from paddlellm.text.incremental import detokenize_step
    from paddlellm.text.tokenizer import TextTokenizer

    tok = TextTokenizer.from_dir(llama2_tokenizer_dir)
    ids = tok.encode("ok 😀!", add_special_tokens=False)  # "▁ok", "▁", 4 byte-fallback tokens, "!"
    cut = ids.index(next(i for i in ids if tok.token_bytes(i) == b"\x9f"))  # after the lead byte
    m = EngineModel(pb, lambda before_step: ScriptedLoop(ids[cut:]), cancel_poll_s=0.0)
    try:
        req = engine_request(pb, "split", prompt(4), {"max_tokens": 16}, resume=ids[:cut])
        m.execute([req])
        wait_done(req.get_response_sender())
    finally:
        m.finalize()
    [out] = outputs(req.get_response_sender())
    window = [int(t) for t in out[p.WINDOW_IDS]]
    text = detokenize_step(tok, window, int(out[p.PREFIX_LEN][0]), final=True)
    assert text == "😀!"  # the lead byte came from the resumed ids, so the emoji is whole


@pytest.mark.parametrize("interval", [3, 5])
def test_stream_interval_sends_the_first_token_then_every_k(
    pb: ModuleType, model: EngineModel, interval: int
) -> None:
    """stream_interval k: one response for the first token, then one per k tokens, the rest with the last; the
    ids, their order, the windows and the counters are what per-token streaming would have sent."""
    sampling = {"max_tokens": 12, "temperature": 0.0, "ignore_eos": True}
    req = engine_request(pb, "k", prompt(9), {**sampling, "stream_interval": interval})
    model.execute([req])
    sender = req.get_response_sender()
    wait_done(sender)
    outs = outputs(sender)
    sizes = [len(o[p.TOKEN_IDS]) for o in outs]
    rest = 11 % interval
    assert sizes == [1] + [interval] * (11 // interval) + ([rest] if rest else [])
    got = [int(t) for o in outs for t in o[p.TOKEN_IDS]]
    assert got == expected_tokens("k", prompt(9), **sampling)
    assert int(outs[-1][p.COMPLETION_TOKENS][0]) == 12
    assert outs[-1][p.FINISH_REASON][0].decode() == "length"
    assert [s.flags for s in sender.sent][-1] == pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
    emitted: list[int] = []
    for o in outs:
        window, prefix_len = [int(t) for t in o[p.WINDOW_IDS]], int(o[p.PREFIX_LEN][0])
        assert window[:prefix_len] == emitted[len(emitted) - prefix_len :]
        assert window[prefix_len:] == [int(t) for t in o[p.TOKEN_IDS]]
        emitted += window[prefix_len:]


@pytest.mark.parametrize(
    ("budget", "streams", "sizes"), [(1e9, 2, [1] * 12), (1e-9, 2, [1, 11]), (1e-9, 1, [1] * 12)]
)
def test_auto_stream_interval_follows_the_pacer(
    pb: ModuleType, budget: float, streams: int, sizes: list[int]
) -> None:
    """stream_interval 0 (auto, the default): per token while the token rate is within the pacer's budget;
    over it, the first token at once and then the pacer's interval (at most MAX_AUTO_INTERVAL); a lone
    stream per token whatever the rate. The tokens are the same either way."""
    factory = Factory()
    m = EngineModel(pb, factory, cancel_poll_s=0.0, pacer=StreamPacer(budget_per_s=budget))
    try:
        sampling = {"max_tokens": 12, "temperature": 0.0, "ignore_eos": True}
        reqs = [engine_request(pb, f"s{i}", prompt(9, i), sampling) for i in range(streams)]
        m.execute(reqs)
        for i, req in enumerate(reqs):
            sender = req.get_response_sender()
            wait_done(sender)
            outs = outputs(sender)
            assert [len(o[p.TOKEN_IDS]) for o in outs] == sizes
            got = [int(t) for o in outs for t in o[p.TOKEN_IDS]]
            assert got == expected_tokens(f"s{i}", prompt(9, i), **sampling)
    finally:
        m.finalize()


def test_stream_interval_flushes_held_tokens_when_the_request_stops_early(
    pb: ModuleType, model: EngineModel
) -> None:
    """A stop before the k-th token still delivers every held token, in the final response."""
    full = expected_tokens("s", prompt(9), max_tokens=12, temperature=0.0, ignore_eos=True)
    stop_at = full[6]
    sampling = {"max_tokens": 12, "temperature": 0.0, "stop_token_ids": [stop_at], "stream_interval": 4}
    req = engine_request(pb, "s", prompt(9), sampling)
    model.execute([req])
    sender = req.get_response_sender()
    wait_done(sender)
    outs = outputs(sender)
    got = [int(t) for o in outs for t in o[p.TOKEN_IDS]]
    assert got == full[: full.index(stop_at) + 1]
    assert outs[-1][p.FINISH_REASON][0].decode() == "stop"
    assert all(len(o[p.TOKEN_IDS]) <= 4 for o in outs)


def test_final_only_request_gets_one_response_with_every_token(pb: ModuleType, model: EngineModel) -> None:
    """SamplingParams.stream false (the vLLM backend's `stream` input, off by default): one FINAL response."""
    sampling = {"max_tokens": 9, "temperature": 0.0, "ignore_eos": True}
    req = engine_request(pb, "f", prompt(7), sampling | {"stream": False})
    model.execute([req])
    wait_done(req.get_response_sender())
    [out] = outputs(req.get_response_sender())
    assert [int(t) for t in out[p.TOKEN_IDS]] == expected_tokens("f", prompt(7), **sampling)
    assert out[p.WINDOW_IDS].tolist() == out[p.TOKEN_IDS].tolist() and int(out[p.PREFIX_LEN][0]) == 0
    assert out[p.FINISH_REASON][0] == b"length"


def test_echo_puts_the_prompt_in_the_first_window_only(pb: ModuleType, model: EngineModel) -> None:
    """SamplingParams.echo: the detokenizer turns the prompt into text before the first tokens; the
    token outputs and counts stay the generated ones."""
    ids = prompt(5)
    sampling = {"max_tokens": 4, "temperature": 0.0, "ignore_eos": True}
    req = engine_request(pb, "e", ids, sampling | {"echo": True})
    model.execute([req])
    wait_done(req.get_response_sender())
    outs = outputs(req.get_response_sender())
    new = expected_tokens("e", ids, **sampling)
    assert [int(t) for o in outs for t in o[p.TOKEN_IDS]] == new
    assert outs[0][p.WINDOW_IDS].tolist() == ids + new[:1] and int(outs[0][p.PREFIX_LEN][0]) == 0
    second = outs[1][p.WINDOW_IDS].tolist()
    assert second[: int(outs[1][p.PREFIX_LEN][0])] == (ids + new[:1])[-DETOKENIZER_CONTEXT:]


@pytest.mark.parametrize("delivery", [{"stream_interval": 1}, {"stream_interval": 3}, {"stream": False}])
def test_logprobs_output_follows_the_engine(pb: ModuleType, model: EngineModel, delivery: dict) -> None:
    """The `logprobs` output of a request that asked, over the real loop: per response the entries of its
    token_ids in order (held tokens' entries ride with them), the prompt's entries on the first response."""
    from tests.unit.engine_fakes import fake_logprobs

    ids = prompt(6)
    sampling = {"max_tokens": 10, "temperature": 0.0, "ignore_eos": True, "logprobs": 2, "prompt_logprobs": 1}
    req = engine_request(pb, "lp", ids, sampling | delivery)
    model.execute([req])
    wait_done(req.get_response_sender())
    outs = outputs(req.get_response_sender())
    data = [json.loads(o[p.LOGPROBS][0]) for o in outs]
    generated = [int(t) for o in outs for t in o[p.TOKEN_IDS]]
    assert generated == expected_tokens("lp", ids, max_tokens=10, temperature=0.0, ignore_eos=True)
    for o, d in zip(outs, data, strict=True):
        assert [e["id"] for e in d["content"]] == o[p.TOKEN_IDS].tolist()
    entries = [e for d in data for e in d["content"]]
    expected = [fake_logprobs(t, len(ids) + k, 2) for k, t in enumerate(generated)]
    assert [(e["logprob"], e["rank"]) for e in entries] == [(x.logprob, x.rank) for x in expected]
    assert [[t["id"] for t in e["top_logprobs"]] for e in entries] == [[t, t + 1] for t in generated]
    assert data[0]["prompt"] == [None] + [
        json.loads(model.logprobs.entry(fake_logprobs(t, k, 1))) for k, t in enumerate(ids) if k
    ]
    assert all("prompt" not in d for d in data[1:])


def test_requests_without_logprobs_send_an_empty_logprobs_output(pb: ModuleType, model: EngineModel) -> None:
    req = engine_request(pb, "plain", prompt(4), {"max_tokens": 3, "ignore_eos": True, "stream_interval": 1})
    model.execute([req])
    wait_done(req.get_response_sender())
    assert [o[p.LOGPROBS][0] for o in outputs(req.get_response_sender())] == [b""] * 3


class RunsLoop(ScriptedLoop):
    """Answers every add with outputs of several tokens each (speculative decoding's accepted runs)."""

    def __init__(self, runs: list[int]) -> None:
        super().__init__([])
        self.runs = runs

    def add(self, request_id, prompt_ids, params, sink, resume_ids=(), images=None):
        done = 0
        for i, n in enumerate(self.runs):
            ids = tuple(range(100 + done, 100 + done + n))
            done += n
            last = i == len(self.runs) - 1
            sink(
                RequestOutput(
                    request_id,
                    ids,
                    len(prompt_ids),
                    done,
                    finished=last,
                    finish_reason="length" if last else None,
                )
            )
        return params


@pytest.mark.parametrize(("interval", "sizes"), [(3, [1, 3, 3, 3, 2]), (0, [1, 5, 2, 4]), (16, [1, 11])])
def test_an_explicit_interval_caps_runs_of_tokens(pb: ModuleType, interval: int, sizes: list[int]) -> None:
    """max_streaming_response_tokens k is "at most k per chunk": a step's run of more tokens is cut into
    k-token responses, the remainder held; auto (0, per token at this rate) sends each run whole. The ids, the
    cumulative counts and the final flag are those of one response per run."""
    m = EngineModel(pb, lambda before_step: RunsLoop([1, 5, 2, 4]), cancel_poll_s=0.0, pacer=StreamPacer(1e9))
    try:
        req = engine_request(pb, "runs", prompt(4), {"max_tokens": 12, "stream_interval": interval})
        m.execute([req])
        sender = req.get_response_sender()
        wait_done(sender)
    finally:
        m.finalize()
    outs = outputs(sender)
    assert [len(o[p.TOKEN_IDS]) for o in outs] == sizes
    assert [int(t) for o in outs for t in o[p.TOKEN_IDS]] == list(range(100, 112))
    counts = [int(o[p.COMPLETION_TOKENS][0]) for o in outs]
    assert counts == list(np.cumsum(sizes)) and outs[-1][p.FINISH_REASON][0].decode() == "length"
    flags = [s.flags for s in sender.sent]
    assert (
        flags[-1] == pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        and pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL not in flags[:-1]
    )
