"""Resuming a cut stream: a request added with `resume_ids` continues as if it had generated them."""

import threading

import pytest

from paddlellm.engine.loop import EngineLoop
from paddlellm.errors import InvalidRequest
from paddlellm.sampling import SamplingParams
from tests.unit.engine_fakes import collect, make_engine, prompt

GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
SEEDED = SamplingParams(max_tokens=24, temperature=0.9, top_p=0.9, seed=7, ignore_eos=True)


def run(params: SamplingParams, resume: tuple[int, ...] = (), **cfg):
    engine, ex = make_engine(**cfg)
    engine.add_request("r", prompt(37, 3), params, resume_ids=resume)
    outs = engine.run_until_done()
    return outs, ex


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
@pytest.mark.parametrize("cut", [1, 5, 23])
def test_resumed_run_yields_exactly_the_rest_of_the_uncut_run(params, cut):
    full_outs, _ = run(params)
    full = collect(full_outs)["r"]
    assert len(full) == 24
    outs, ex = run(params, tuple(full[:cut]))
    assert collect(outs)["r"] == full[cut:]
    final = outs[-1]
    assert final.finished and final.finish_reason == "length"
    assert final.num_prompt_tokens == 37 and final.num_output_tokens == 24  # completion counts resume ids
    # The executor sees them as outputs (penalties count them), prefilled after the prompt.
    [new] = ex.calls[0].new_requests
    assert new.prompt_token_ids == tuple(prompt(37, 3)) and new.output_token_ids == tuple(full[:cut])
    assert ex.calls[0].num_scheduled_tokens["r"] == 37 + cut


def test_resume_with_a_small_step_budget_prefills_in_chunks_and_still_matches():
    full = collect(run(SEEDED)[0])["r"]
    outs, ex = run(SEEDED, tuple(full[:10]), max_num_batched_tokens=16, max_num_seqs=4)
    assert collect(outs)["r"] == full[10:]
    assert ex.state["r"].history[:3] == [16, 16, 15]


def test_min_tokens_counts_resume_ids():
    # EOS (2) as the only stop token: the fake never picks it, so use stop_token_ids from the uncut run.
    base = SamplingParams(max_tokens=30, temperature=0.0)
    full = collect(run(base)[0])["r"]
    stop = full[3]
    params = SamplingParams(max_tokens=30, temperature=0.0, stop_token_ids=(stop,), min_tokens=0)
    cut_full = collect(run(params)[0])["r"]
    assert cut_full == full[:4]
    # Resumed after 2 ids: the stop id comes at output index 3 -> same end.
    outs, _ = run(params, tuple(full[:2]))
    assert collect(outs)["r"] == full[2:4] and outs[-1].finish_reason == "stop"
    # min_tokens=4 counts the 2 resumed ids: the stop id at index 3 (4th output) does not stop yet.
    params_min = SamplingParams(max_tokens=30, temperature=0.0, stop_token_ids=(stop,), min_tokens=4)
    uncut_min = collect(run(params_min)[0])["r"]
    resumed_min = collect(run(params_min, tuple(full[:2]))[0])["r"]
    assert full[:2] + resumed_min == uncut_min


@pytest.mark.parametrize("k", [24, 30])
def test_resume_reaching_max_tokens_finishes_at_once_with_length(k):
    engine, ex = make_engine()
    resume = tuple(prompt(k, 9))
    engine.add_request("r", prompt(37, 3), GREEDY, resume_ids=resume)
    outs = engine.run_until_done()
    assert len(outs) == 1
    [out] = outs
    assert out.finished and out.finish_reason == "length" and out.new_token_ids == ()
    assert (out.num_prompt_tokens, out.num_output_tokens) == (37, k)
    assert ex.calls == [] and engine.stats().num_free_blocks == 64


def test_resume_ids_outside_the_vocabulary_are_rejected():
    engine, _ = make_engine()
    with pytest.raises(InvalidRequest, match=r"resume ids must be in \[0, 1000\)") as e:
        engine.add_request("r", prompt(5), GREEDY, resume_ids=(1, 5000))
    assert e.value.param == "resume_ids"
    with pytest.raises(InvalidRequest, match=r"resume ids must be in \[0, 1000\)"):
        engine.validate(prompt(5), GREEDY, (-1,))


def test_loop_add_with_resume_ids():
    full = collect(run(SEEDED)[0])["r"]
    engine, _ = make_engine()
    loop = EngineLoop(engine).start()
    got: list = []
    done = threading.Event()

    def sink(out):
        got.append(out)
        if out.finished:
            done.set()

    try:
        loop.add("r", prompt(37, 3), SEEDED, sink, resume_ids=full[:6])
        assert done.wait(10)
    finally:
        loop.stop()
    assert collect(got)["r"] == full[6:] and got[-1].num_output_tokens == 24
