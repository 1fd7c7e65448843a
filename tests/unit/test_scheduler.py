"""Scheduler behaviour, driven through LLMEngine with the fake executor or by hand-made runner outputs."""

import numpy as np
import pytest

from paddlellm.config import EngineConfig
from paddlellm.engine.scheduler import Scheduler
from paddlellm.errors import ConfigError, InvalidRequest, Overloaded
from paddlellm.sampling import SamplingParams
from paddlellm.step_types import ModelRunnerOutput
from tests.unit.engine_fakes import collect, make_engine, prompt

GREEDY = SamplingParams(max_tokens=8, temperature=0.0)


def run(engine, reqs: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, list[int]]:
    for rid, (ids, params) in reqs.items():
        engine.add_request(rid, ids, params)
    outs = engine.run_until_done()
    finals = [o for o in outs if o.finished]
    assert sorted(o.request_id for o in finals) == sorted(reqs)
    return collect(outs)


# ---------------------------------------------------------------- validation at add


def test_prompt_at_max_model_len_is_rejected_naming_the_limit():
    engine, _ = make_engine(max_model_len=64)
    with pytest.raises(InvalidRequest, match="the prompt has 64 tokens, but max_model_len is 64") as e:
        engine.add_request("a", prompt(64), GREEDY)
    assert e.value.param == "prompt" and "max_model_len" in str(e.value) and "64" in str(e.value)


def test_prompt_plus_max_tokens_over_limit_names_max_tokens():
    engine, _ = make_engine(max_model_len=64)
    engine.add_request("ok", prompt(56), GREEDY)  # 56 + 8 == 64 fits exactly
    with pytest.raises(InvalidRequest, match=r"more than max_model_len \(64\)") as e:
        engine.add_request("a", prompt(57), GREEDY)
    assert e.value.param == "max_tokens" and "max_model_len (64)" in str(e.value)


def test_request_larger_than_whole_cache_is_rejected():
    engine, _ = make_engine(num_blocks=4)  # 64 tokens of KV
    engine.add_request("fits", prompt(57), GREEDY)  # 57 + 8 - 1 = 64 KV tokens
    with pytest.raises(InvalidRequest, match="needs 5 KV blocks .* whole KV cache has 4") as e:
        engine.add_request("a", prompt(58), GREEDY)
    assert e.value.param == "max_tokens" and "KV" in str(e.value)
    with pytest.raises(InvalidRequest, match="needs 7 KV blocks of 16 tokens") as e:
        engine.add_request("b", prompt(100), GREEDY)
    assert e.value.param == "prompt"


@pytest.mark.parametrize("ids", [[], [5, 1000], [-1]])
def test_empty_or_out_of_vocab_prompt_is_rejected(ids):
    engine, _ = make_engine()
    rejected = r"the prompt is empty|prompt token ids must be in \[0, 1000\)"
    with pytest.raises(InvalidRequest, match=rejected) as e:
        engine.add_request("a", ids, GREEDY)
    assert e.value.param == "prompt"


def test_duplicate_request_id_is_rejected():
    engine, _ = make_engine()
    engine.add_request("a", prompt(4), GREEDY)
    with pytest.raises(InvalidRequest, match="request id 'a' is already in use") as e:
        engine.add_request("a", prompt(4), GREEDY)
    assert e.value.param == "request_id"


def test_max_size_bounds_the_waiting_queue():
    engine, _ = make_engine(scheduler_max_size=2)
    engine.add_request("a", prompt(4), GREEDY)
    engine.add_request("b", prompt(4), GREEDY)
    with pytest.raises(Overloaded, match=r"queue is full \(2 requests waiting"):
        engine.add_request("c", prompt(4), GREEDY)
    engine.step()  # both start running: the queue has room again
    engine.add_request("c", prompt(4), GREEDY)


# ---------------------------------------------------------------- batching policy


def test_token_budget_must_cover_a_full_decode_batch():
    with pytest.raises(ConfigError, match="max_num_batched_tokens"):
        make_engine(max_num_seqs=16, max_num_batched_tokens=8)


def test_fcfs_and_max_num_seqs():
    engine, ex = make_engine(max_num_seqs=2)
    for i in range(4):
        engine.add_request(f"r{i}", prompt(5, i), SamplingParams(max_tokens=2 + i, temperature=0.0))
    started: list[str] = []
    while engine.has_unfinished():
        engine.step()
        sched = ex.calls[-1]
        assert len(sched.num_scheduled_tokens) <= 2
        started += [n.request_id for n in sched.new_requests]
    assert started == ["r0", "r1", "r2", "r3"]
    assert engine.stats().num_free_blocks == 64


def test_cached_requests_carry_only_the_changes():
    engine, ex = make_engine(block_size=4)
    engine.add_request("a", prompt(6), SamplingParams(max_tokens=5, temperature=0.0))
    outs = engine.run_until_done()
    first, rest = ex.calls[0], ex.calls[1:]
    assert [n.request_id for n in first.new_requests] == ["a"]
    assert first.new_requests[0].block_ids == (0, 1) and first.num_scheduled_tokens == {"a": 6}
    tokens = collect(outs)["a"]
    for i, s in enumerate(rest):
        (c,) = s.cached_requests
        assert s.new_requests == () and s.num_scheduled_tokens == {"a": 1}
        assert c.new_token_ids == (tokens[i],) and c.num_computed_tokens == 6 + i
    # positions 6,7 fit the 2nd block; position 8 (3rd decode step) opens a third one
    assert [c.new_block_ids for s in rest for c in s.cached_requests] == [(), (), (2,), ()]
    assert ex.calls[-1].finished_request_ids == frozenset()


def test_finished_ids_reach_the_runner_at_the_next_step():
    engine, ex = make_engine()
    engine.add_request("short", prompt(4), SamplingParams(max_tokens=1, temperature=0.0))
    engine.add_request("long", prompt(4, 1), SamplingParams(max_tokens=4, temperature=0.0))
    engine.run_until_done()
    assert ex.calls[1].finished_request_ids == frozenset({"short"})
    assert "short" not in ex.state


def test_kv_cache_ratio_limits_admission_but_not_the_first_request():
    # 10 blocks of 16, ratio 0.5: admitting may fill 5 blocks; the rest stays for decode growth.
    engine, ex = make_engine(num_blocks=10, kv_cache_ratio=0.5)
    for i in range(3):
        engine.add_request(
            f"r{i}", prompt(32, i), SamplingParams(max_tokens=20, temperature=0.0)
        )  # 2 blocks each
    engine.step()
    assert sorted(ex.calls[0].num_scheduled_tokens) == ["r0", "r1"]  # 4 blocks; a third would make 6 > 5
    engine.run_until_done()
    assert engine.stats().num_free_blocks == 10

    alone, ex2 = make_engine(num_blocks=10, kv_cache_ratio=0.1)
    alone.add_request("big", prompt(100), GREEDY)  # 7 blocks > 0.1 x 10, but nothing else runs
    alone.step()
    assert list(ex2.calls[0].num_scheduled_tokens) == ["big"]


def test_chunked_prefill_gives_the_same_tokens():
    reqs = {
        "long": (prompt(900), SamplingParams(max_tokens=16, temperature=0.0)),
        "short": (prompt(20, 1), SamplingParams(max_tokens=16, temperature=0.0)),
    }
    small, ex = make_engine(num_blocks=200, max_num_batched_tokens=128)
    chunked = run(small, reqs)
    whole = run(make_engine(num_blocks=200, max_num_batched_tokens=2048)[0], reqs)
    assert chunked == whole and len(chunked["long"]) == 16
    assert all(s.total_tokens <= 128 for s in ex.calls)
    assert ex.state == {} or all(v.num_computed for v in ex.state.values())
    assert small.stats().num_free_blocks == 200


def test_chunking_keeps_decodes_running():
    engine, ex = make_engine(num_blocks=200, max_num_batched_tokens=64)
    engine.add_request("dec", prompt(8), SamplingParams(max_tokens=30, temperature=0.0))
    engine.step()
    engine.add_request("long", prompt(600, 1), GREEDY)
    for _ in range(5):
        engine.step()
        assert ex.calls[-1].num_scheduled_tokens["dec"] == 1
        assert ex.calls[-1].num_scheduled_tokens["long"] == 63


def test_preemption_recomputes_to_the_same_tokens_and_frees_every_block():
    reqs = {
        f"r{i}": (
            prompt(10 + 7 * i, i),
            SamplingParams(max_tokens=40 + 3 * i, temperature=0.0 if i % 2 else 0.7, seed=100 + i),
        )
        for i in range(8)
    }
    ample = run(make_engine(num_blocks=256)[0], reqs)
    tiny, ex = make_engine(num_blocks=9, max_num_seqs=8)
    start = tiny.stats().num_free_blocks
    got = run(tiny, reqs)
    assert tiny.stats().num_preemptions > 0
    assert got == ample
    assert all(len(got[r]) == p.max_tokens for r, (_, p) in reqs.items())
    assert tiny.stats().num_free_blocks == start == 9
    assert any(n.output_token_ids for s in ex.calls for n in s.new_requests)  # recompute sent outputs


def test_preemption_takes_the_newest_request():
    engine, ex = make_engine(num_blocks=4, block_size=4, kv_cache_ratio=1.0)
    engine.add_request("old", prompt(7), SamplingParams(max_tokens=9, temperature=0.0))
    engine.add_request("new", prompt(7, 1), SamplingParams(max_tokens=9, temperature=0.0))
    engine.step()  # both admitted: 2 blocks each, cache full
    engine.step()  # old decodes position 7 (fits), new too
    engine.step()  # old needs a 3rd block: new is preempted
    s = engine.stats()
    assert s.num_preemptions == 1 and s.num_running == 1 and s.num_waiting == 1
    assert engine.scheduler.waiting[0].request_id == "new"
    assert ex.calls[-1].finished_request_ids == frozenset({"new"})
    engine.run_until_done()
    assert engine.stats().num_free_blocks == 4


def test_seeded_request_is_batch_invariant():
    target = ("t", (prompt(12, 99), SamplingParams(max_tokens=24, temperature=0.8, top_p=0.9, seed=1234)))
    alone = run(make_engine()[0], dict([target]))["t"]
    crowd = {
        f"o{i}": (prompt(5 + i, i), SamplingParams(max_tokens=10 + i, temperature=0.8)) for i in range(31)
    }
    crowd[target[0]] = target[1]
    among = run(make_engine(num_blocks=64, max_num_seqs=32)[0], crowd)["t"]
    assert alone == among


def test_derived_seeds_are_distinct_and_reproducible():
    def seeds(cfg_seed):
        engine, _ = make_engine(seed=cfg_seed)
        for i in range(4):
            engine.add_request(f"r{i}", prompt(4), SamplingParams(temperature=1.0))
        engine.add_request("given", prompt(4), SamplingParams(seed=-5))
        return [r.seed for r in engine.scheduler.requests.values()]

    a = seeds(0)
    assert a == seeds(0) and a != seeds(1)
    assert len(set(a[:4])) == 4 and all(0 <= s < 2**63 for s in a[:4]) and a[4] == -5


# ---------------------------------------------------------------- abort and TTL


def test_abort_frees_blocks_and_emits_a_final_output():
    engine, ex = make_engine()
    engine.add_request("a", prompt(40), SamplingParams(max_tokens=50, temperature=0.0))
    engine.add_request("w", prompt(4), GREEDY)
    engine.step()
    engine.step()
    out = engine.abort("a")
    assert out.finished and out.finish_reason == "abort" and out.new_token_ids == ()
    assert out.num_output_tokens == 2
    assert engine.abort("a") is None
    engine.step()
    assert "a" in ex.calls[-1].finished_request_ids
    assert engine.abort("w").finish_reason == "abort"
    assert not engine.has_unfinished() and engine.stats().num_free_blocks == 64


def test_abort_waiting_request():
    engine, _ = make_engine(max_num_seqs=1)
    engine.add_request("a", prompt(4), GREEDY)
    engine.add_request("b", prompt(4), GREEDY)
    engine.step()
    assert engine.abort("b").finish_reason == "abort"
    assert collect(engine.run_until_done()).keys() == {"a"}


def test_ttl_expires_requests_that_never_started():
    now = [0.0]
    engine, _ = make_engine(max_num_seqs=1, scheduler_ttl=10.0, clock=lambda: now[0])
    engine.add_request("runs", prompt(4), SamplingParams(max_tokens=50, temperature=0.0))
    engine.add_request("waits", prompt(4, 1), GREEDY)
    engine.step()
    now[0] = 10.5
    outs = engine.step()
    (err,) = [o for o in outs if o.request_id == "waits"]
    assert err.finished and err.finish_reason == "error" and isinstance(err.error, Overloaded)
    assert "scheduler_ttl (10 s)" in str(err.error)
    # a request that started is not expired by the TTL
    outs = engine.run_until_done()
    assert [o.finish_reason for o in outs if o.finished] == ["length"]
    assert engine.stats().num_free_blocks == 64


# ---------------------------------------------------------------- stop rules (hand-made runner outputs)


def _scheduler(**cfg):
    # speculation (on by default) drafts here only when a test asks: test_spec_decode.py covers it
    config = EngineConfig(**{"block_size": 4, "max_model_len": 64, "speculative_config": "", **cfg})
    return Scheduler(config, num_blocks=32, eos_token_ids=(2,), vocab_size=100)


def test_max_tokens_none_runs_to_the_end_of_the_context() -> None:
    s = _scheduler()  # max_model_len 64, 32 blocks of 4 tokens (128 tokens of cache)
    assert s.validate([1] * 10, SamplingParams(max_tokens=None)).max_tokens == 54
    small = Scheduler(
        EngineConfig(block_size=4, max_model_len=64, speculative_config=""), num_blocks=8, eos_token_ids=(2,)
    )
    assert small.validate([1] * 10, SamplingParams(max_tokens=None)).max_tokens == 23  # 32 cache tokens
    with pytest.raises(InvalidRequest, match="the prompt has 64 tokens, but max_model_len is 64"):
        s.validate([1] * 64, SamplingParams(max_tokens=None))
    req = s.add("r", [1] * 60, SamplingParams(max_tokens=None, ignore_eos=True))
    assert req.sampling_params.max_tokens == 4
    outs = _feed(s, "r", [5, 6, 7, 8, 9])
    assert [o.finish_reason for o in outs if o.finished] == ["length"] and outs[-1].num_output_tokens == 4


def _feed(s: Scheduler, rid: str, tokens: list[int]):
    outs = []
    for t in tokens:
        sched = s.schedule()
        outs += s.update(sched, ModelRunnerOutput({rid: t}))
        if outs and outs[-1].finished:
            break
    return outs


@pytest.mark.parametrize(
    "params, tokens, want, reason",
    [
        (SamplingParams(max_tokens=5), [5, 2, 7], [5, 2], "stop"),
        (SamplingParams(max_tokens=5, ignore_eos=True), [5, 2, 7, 8, 9], [5, 2, 7, 8, 9], "length"),
        (SamplingParams(max_tokens=5, stop_token_ids=(7,)), [5, 7, 2], [5, 7], "stop"),
        (SamplingParams(max_tokens=5, min_tokens=2), [2, 2, 2, 9], [2, 2, 2], "stop"),
        (SamplingParams(max_tokens=3), [5, 6, 2], [5, 6, 2], "stop"),
        (SamplingParams(max_tokens=3), [5, 6, 7], [5, 6, 7], "length"),
    ],
)
def test_stop_rules(params, tokens, want, reason):
    s = _scheduler()
    s.add("r", [1, 3, 4], params)
    outs = _feed(s, "r", tokens)
    assert [t for o in outs for t in o.new_token_ids] == want
    assert outs[-1].finished and outs[-1].finish_reason == reason
    assert s.blocks.num_free_blocks == 32 and not s.has_unfinished()


def test_max_model_len_ends_with_length():
    s = _scheduler()
    s.add("r", list(range(3, 63)), SamplingParams(max_tokens=4))
    outs = _feed(s, "r", [5, 6, 7, 8, 9])
    assert len([t for o in outs for t in o.new_token_ids]) == 4 and outs[-1].finish_reason == "length"


def test_missing_sample_at_end_of_chunk_is_an_error():
    s = _scheduler()
    s.add("r", [1, 3], SamplingParams())
    with pytest.raises(RuntimeError, match="executor sampled no token for request 'r'"):
        s.update(s.schedule(), ModelRunnerOutput({}))


def test_ttl_spares_preempted_requests():
    now = [0.0]
    engine, _ = make_engine(
        num_blocks=4, block_size=4, kv_cache_ratio=1.0, scheduler_ttl=1.0, clock=lambda: now[0]
    )
    engine.add_request("old", prompt(7), SamplingParams(max_tokens=9, temperature=0.0))
    engine.add_request("new", prompt(7, 1), SamplingParams(max_tokens=9, temperature=0.0))
    for _ in range(3):
        engine.step()
    assert engine.stats().num_preemptions == 1
    now[0] = 100.0
    outs = engine.run_until_done()
    assert sorted(o.finish_reason for o in outs if o.finished) == ["length", "length"]


@pytest.mark.parametrize("seed", range(12))
def test_random_workloads_match_an_ample_run(seed):
    rng = np.random.default_rng(seed)
    block_size = int(rng.choice([1, 4, 16]))
    n = int(rng.integers(3, 20))
    reqs = {}
    for i in range(n):
        p = SamplingParams(
            max_tokens=int(rng.integers(1, 80)), temperature=float(rng.choice([0.0, 0.9])), seed=i
        )
        reqs[f"r{i}"] = (prompt(int(rng.integers(1, 120)), i), p)
    need = max(-(-(len(ids) + p.max_tokens - 1) // block_size) for ids, p in reqs.values())
    cfg = {
        "block_size": block_size,
        "max_num_seqs": int(rng.integers(1, 10)),
        "max_num_batched_tokens": int(rng.integers(10, 300)),
        "kv_cache_ratio": float(rng.uniform(0.85, 1.0)),
    }
    ample = run(make_engine(num_blocks=4096, block_size=block_size)[0], reqs)
    tight_blocks = need + int(rng.integers(0, need + 1))
    engine, _ = make_engine(num_blocks=tight_blocks, **cfg)
    aborted = set(rng.choice(sorted(reqs), size=n // 4, replace=False).tolist()) if n >= 4 else set()
    for rid, (ids, p) in reqs.items():
        engine.add_request(rid, ids, p)
    outs, steps = [], 0
    while engine.has_unfinished():
        outs += engine.step()
        steps += 1
        if steps == 3:
            for rid in aborted:
                if (o := engine.abort(rid)) is not None:
                    outs.append(o)
        assert steps < 10_000
    got = collect(outs)
    for rid in reqs:
        if rid not in aborted:
            assert got[rid] == ample[rid]
        else:
            assert got.get(rid, []) == ample[rid][: len(got.get(rid, []))]
    assert engine.stats().num_free_blocks == tight_blocks
