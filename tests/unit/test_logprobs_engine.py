"""Logprobs through the scheduler and LLMEngine (fake model): aligned with the new ids of each output,
prompt logprobs once and complete on the first output, across chunked prefill, preemption and resume."""

from __future__ import annotations

import pytest

from paddlellm.engine.outputs import RequestOutput
from paddlellm.sampling import SamplingParams
from paddlellm.step_types import ModelRunnerOutput
from tests.unit.engine_fakes import fake_logprobs, make_engine, prompt


def _by_request(outputs: list[RequestOutput]) -> dict[str, list[RequestOutput]]:
    got: dict[str, list[RequestOutput]] = {}
    for o in outputs:
        got.setdefault(o.request_id, []).append(o)
    return got


def _check_request(outs: list[RequestOutput], prompt_ids: list[int], sp: SamplingParams) -> None:
    """Each output's logprobs match its new ids; the prompt's come once, first, complete and exact."""
    position = len(prompt_ids)
    for o in outs:
        if sp.logprobs is None:
            assert o.logprobs is None
        else:
            assert o.logprobs is not None and len(o.logprobs) == len(o.new_token_ids)
            for tok, entry in zip(o.new_token_ids, o.logprobs, strict=True):
                assert entry == fake_logprobs(tok, position, sp.logprobs)
                position += 1
    if sp.prompt_logprobs is None:
        assert all(o.prompt_logprobs is None for o in outs)
        return
    assert outs[0].prompt_logprobs is not None
    assert all(o.prompt_logprobs is None for o in outs[1:])
    expected = (None, *(fake_logprobs(t, p, sp.prompt_logprobs) for p, t in enumerate(prompt_ids) if p))
    assert outs[0].prompt_logprobs == expected


@pytest.mark.parametrize("batched_tokens", [2048, 16])
def test_logprobs_align_with_new_ids_and_prompt_logprobs_come_once(batched_tokens: int) -> None:
    engine, ex = make_engine(max_num_batched_tokens=batched_tokens, max_num_seqs=4)
    reqs = {
        "plain": (prompt(30, 0), SamplingParams(max_tokens=6, temperature=0.0)),
        "lp": (prompt(41, 1), SamplingParams(max_tokens=7, temperature=0.7, seed=3, logprobs=2)),
        "both": (prompt(50, 2), SamplingParams(max_tokens=5, temperature=0.0, logprobs=0, prompt_logprobs=3)),
        "prompt": (prompt(1, 3), SamplingParams(max_tokens=4, prompt_logprobs=0)),
    }
    for rid, (ids, sp) in reqs.items():
        engine.add_request(rid, ids, sp)
    got = _by_request(engine.run_until_done())
    for rid, (ids, sp) in reqs.items():
        _check_request(got[rid], ids, sp)
    assert got["prompt"][0].prompt_logprobs == (None,)
    if batched_tokens == 16:  # the 50-token prompt ran in chunks
        assert ex.state["both"].history[0] < 50


def test_preemption_recomputes_without_duplicate_entries() -> None:
    reqs = {
        f"r{i}": (
            prompt(10 + 7 * i, i),
            SamplingParams(
                max_tokens=30 + 3 * i,
                temperature=0.0 if i % 2 else 0.7,
                seed=100 + i,
                logprobs=i % 3,
                prompt_logprobs=1 if i % 2 else None,
            ),
        )
        for i in range(6)
    }
    engine, ex = make_engine(num_blocks=9, max_num_seqs=6)
    for rid, (ids, sp) in reqs.items():
        engine.add_request(rid, ids, sp)
    got = _by_request(engine.run_until_done())
    assert engine.stats().num_preemptions > 0
    assert any(n.output_token_ids for s in ex.calls for n in s.new_requests)  # recomputes happened
    for rid, (ids, sp) in reqs.items():
        _check_request(got[rid], ids, sp)
        assert sum(len(o.new_token_ids) for o in got[rid]) == sp.max_tokens


def test_prompt_logprobs_request_reads_no_cached_prefix() -> None:
    engine, _ = make_engine(enable_prefix_caching=True)
    ids = prompt(70, 5)
    engine.add_request("warm", ids, SamplingParams(max_tokens=2))
    engine.run_until_done()
    engine.add_request("echo", ids, SamplingParams(max_tokens=2, prompt_logprobs=0))
    outs = _by_request(engine.run_until_done())["echo"]
    assert outs[0].num_cached_tokens == 0
    _check_request(outs, ids, SamplingParams(max_tokens=2, prompt_logprobs=0))
    # its blocks are still registered for others (and it did not spoil the cache)
    engine.add_request("after", ids, SamplingParams(max_tokens=2))
    assert _by_request(engine.run_until_done())["after"][0].num_cached_tokens == 64


def test_resume_ids_have_no_entries() -> None:
    engine, _ = make_engine()
    ids = prompt(12, 1)
    sp = SamplingParams(max_tokens=6, temperature=0.0, logprobs=1)
    engine.add_request("r", ids, sp, resume_ids=[5, 6])
    outs = engine.run_until_done()
    new = [t for o in outs for t in o.new_token_ids]
    entries = [e for o in outs for e in (o.logprobs or ())]
    assert len(new) == 4 and [e.token_id for e in entries] == new
    assert entries[0] == fake_logprobs(new[0], len(ids) + 2, 1)


def test_abort_output_carries_empty_logprobs() -> None:
    engine, _ = make_engine()
    engine.add_request("r", prompt(8), SamplingParams(max_tokens=50, logprobs=0, prompt_logprobs=0))
    first = engine.step()[0]
    assert first.logprobs is not None and len(first.logprobs) == 1
    assert first.prompt_logprobs is not None and len(first.prompt_logprobs) == 8
    out = engine.abort("r")
    assert out is not None and out.logprobs == () and out.prompt_logprobs is None


def test_missing_logprobs_from_the_executor_is_an_error() -> None:
    engine, _ = make_engine()
    s = engine.scheduler
    s.add("r", prompt(4), SamplingParams(max_tokens=3, logprobs=0))
    sched = s.schedule()
    with pytest.raises(RuntimeError, match="no logprobs"):
        s.update(sched, ModelRunnerOutput({"r": 9}))



def test_prompt_logprobs_request_is_no_prefix_cache_query() -> None:
    engine, _ = make_engine(enable_prefix_caching=True)
    ids = prompt(40, 7)
    engine.add_request("warm", ids, SamplingParams(max_tokens=2))
    engine.run_until_done()
    queries = engine.stats().prefix_cache_queries
    engine.add_request("other", prompt(50, 8), SamplingParams(max_tokens=6))
    engine.add_request("echo", ids, SamplingParams(max_tokens=6, prompt_logprobs=0))
    got = _by_request(engine.run_until_done())
    assert engine.stats().prefix_cache_queries == queries + 50  # only "other" looked
    _check_request(got["echo"], ids, SamplingParams(max_tokens=6, prompt_logprobs=0))


def test_a_recompute_with_every_prompt_logprob_reads_the_cache() -> None:
    """After a preemption, a request that already holds all its prompt logprobs needs no prompt rows."""
    engine, _ = make_engine(enable_prefix_caching=True)
    ids = prompt(40, 7)
    engine.add_request("warm", ids, SamplingParams(max_tokens=2))
    engine.run_until_done()
    s = engine.scheduler
    sp = SamplingParams(max_tokens=2, prompt_logprobs=0)
    req = s.add("echo", ids, sp)
    assert s.schedule().new_requests[0].num_computed_tokens == 0
    s.abort("echo")
    req = s.add("echo2", ids, sp)
    req.prompt_logprobs = [None, *(fake_logprobs(t, p) for p, t in enumerate(ids) if p)]  # as if computed
    assert s.schedule().new_requests[0].num_computed_tokens == 32
