"""LLMEngine over the fake executor: the step loop, stats, warmup; and KV-cache sizing."""

import pytest

from paddlellm.config import EngineConfig
from paddlellm.engine.kv_budget import block_bytes, num_kv_blocks
from paddlellm.errors import ConfigError, EngineDead
from paddlellm.sampling import SamplingParams
from tests.unit.engine_fakes import collect, fake_info, make_engine, prompt


def test_step_returns_outputs_until_done_and_stats_track_the_batch():
    engine, ex = make_engine(max_num_seqs=3)
    for i in range(5):
        engine.add_request(f"r{i}", prompt(10 + i, i), SamplingParams(max_tokens=4 + i, temperature=0.0))
    s = engine.stats()
    assert (s.num_waiting, s.num_running, s.num_free_blocks, s.num_total_blocks) == (5, 0, 64, 64)
    first = engine.step()
    s = engine.stats()
    assert (s.num_waiting, s.num_running, s.last_batch_size) == (2, 3, 3)
    assert [o.new_token_ids and len(o.new_token_ids) for o in first] == [1, 1, 1]
    outs = first + engine.run_until_done()
    tokens = collect(outs)
    assert {r: len(t) for r, t in tokens.items()} == {f"r{i}": 4 + i for i in range(5)}
    finals = [o for o in outs if o.finished]
    assert len(finals) == 5 and all(o.finish_reason == "length" for o in finals)
    assert all(o.num_output_tokens == len(tokens[o.request_id]) for o in finals)
    assert finals[0].timings.first_token >= finals[0].timings.arrival
    assert engine.stats().num_free_blocks == 64 and not engine.has_unfinished()
    calls = len(ex.calls)
    assert engine.step() == [] and len(ex.calls) == calls  # an idle step does not call the executor


def test_outputs_are_independent_of_engine_limits():
    reqs = [
        (prompt(30 + 17 * i, i), SamplingParams(max_tokens=20, temperature=0.7, seed=i)) for i in range(10)
    ]

    def run(**cfg):
        engine, _ = make_engine(**cfg)
        for i, (ids, p) in enumerate(reqs):
            engine.add_request(f"r{i}", ids, p)
        return collect(engine.run_until_done())

    base = run(num_blocks=512)
    assert run(num_blocks=512, max_num_seqs=1) == base
    assert run(num_blocks=30, max_num_batched_tokens=40, max_num_seqs=4) == base
    assert run(num_blocks=512, block_size=1) == base


def test_executor_failure_propagates_from_step():
    engine, _ = make_engine(fail_on_call=2)
    engine.add_request("a", prompt(4), SamplingParams(max_tokens=5))
    engine.step()
    with pytest.raises(EngineDead, match="fake worker died"):
        engine.step()
    with pytest.raises(EngineDead, match="fake worker died"):
        engine.check_health()


def test_warmup_leaves_a_clean_engine_and_keeps_seeds():
    engine, ex = make_engine(num_blocks=64, max_num_seqs=4, max_num_batched_tokens=256)
    engine.warmup()
    assert ex.calls, "warmup ran nothing"
    assert max(s.total_tokens for s in ex.calls) == 256  # min(batched tokens, 512)
    assert max(len(s.num_scheduled_tokens) for s in ex.calls) == 4
    s = engine.stats()
    assert (s.num_free_blocks, s.num_running, s.num_waiting, s.num_preemptions) == (64, 0, 0, 0)
    engine.add_request("x", prompt(4), SamplingParams(temperature=1.0))
    cold, _ = make_engine()
    cold.add_request("x", prompt(4), SamplingParams(temperature=1.0))
    assert engine.scheduler.requests["x"].seed == cold.scheduler.requests["x"].seed


def test_kv_blocks_from_override_cpu_budget_and_device_memory():
    info = fake_info()  # 2 layers x 2 kv heads x 16 dims: 512 B/token in fp32
    assert info.kv_bytes_per_token() == 512
    cfg = EngineConfig(block_size=64, cpu_memory_budget_gib=1.0, gpu_memory_utilization=0.5)
    assert block_bytes(cfg, info) == 64 * 512
    assert num_kv_blocks(cfg, info) == int(0.5 * 2**30 // (64 * 512))
    assert num_kv_blocks(cfg.replace(num_gpu_blocks_override=7), info) == 7
    assert num_kv_blocks(cfg.replace(tensor_parallel_size=2), info) == 2 * num_kv_blocks(cfg, info)
    gpu = cfg.replace(device="gpu")
    assert num_kv_blocks(gpu, info, device_memory_bytes=64 * 512 * 10) == 5
    with pytest.raises(ConfigError, match="needs the executor's measured device memory"):
        num_kv_blocks(gpu, info)
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        num_kv_blocks(cfg.replace(cpu_memory_budget_gib=1e-6), info)
