"""The engine with tensor parallelism (rank worker processes): same tokens as TP=1, and a rank killed
mid-generation ends every in-flight request with an error (never a hang) and makes the loop unhealthy."""

import os
import signal
import threading

import pytest

from paddlellm.config import EngineConfig
from paddlellm.engine.core import LLMEngine
from paddlellm.engine.loop import EngineLoop
from paddlellm.errors import EngineDead
from paddlellm.sampling import SamplingParams

pytest.importorskip("paddle", exc_type=ModuleNotFoundError)


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint) -> str:
    return tiny_checkpoint(arch="llama", tokenizer="llama2", seed=11)


def _engine(path: str, tp: int, **options) -> LLMEngine:
    base = {"num_threads": 1, "block_size": 16, "max_model_len": 512, "num_gpu_blocks_override": 64}
    return LLMEngine.create(EngineConfig(model=path, tensor_parallel_size=tp, **{**base, **options}))


def _reqs():
    return {
        f"r{i}": (
            [(13 * j + i) % 1000 + 50 for j in range(5 + 20 * i)],
            SamplingParams(max_tokens=10, temperature=0.0 if i % 2 else 0.8, seed=i, ignore_eos=True),
        )
        for i in range(6)
    }


def _run(engine: LLMEngine) -> dict[str, list[int]]:
    for rid, (ids, p) in _reqs().items():
        engine.add_request(rid, ids, p)
    got: dict[str, list[int]] = {}
    for out in engine.run_until_done():
        got.setdefault(out.request_id, []).extend(out.new_token_ids)
    return got


def test_tp2_engine_matches_tp1(ckpt):
    one = _engine(ckpt, 1)
    want = _run(one)
    one.shutdown()
    two = _engine(ckpt, 2)
    try:
        assert _run(two) == want
        assert two.stats().num_free_blocks == 64
    finally:
        two.shutdown()


@pytest.mark.parametrize(
    ("block_size", "shared", "hits_each"), [(16, 40, 32), (32, 56, 56)], ids=["whole-blocks", "partial-hit"]
)
def test_tp2_with_prefix_caching_matches_tp1_without(ckpt, block_size: int, shared: int, hits_each: int):
    """Block ids are decided by the scheduler and sent to every rank, so all ranks keep the same block table
    and a cached prefix needs no special case under TP: TP=2 with the cache on gives TP=1's tokens without.
    With 16-token blocks a 40-token shared prefix is two cached blocks; with 32-token blocks 56 tokens are
    one cached block plus a partial hit of 24 rows, copied on every rank (each holds its own KV heads)."""
    system = [(29 * j) % 1000 + 50 for j in range(shared)]
    params = [
        SamplingParams(max_tokens=12, temperature=0.8 * (i % 2), seed=i, ignore_eos=True) for i in range(4)
    ]
    reqs = {f"q{i}": (system + [60 + i] * (3 + i), params[i]) for i in range(4)}

    def waves(engine: LLMEngine) -> dict[str, list[int]]:
        got: dict[str, list[int]] = {}
        for rid, (ids, p) in reqs.items():  # one after another: later ones find the prefix cached
            engine.add_request(rid, ids, p)
            for out in engine.run_until_done():
                got.setdefault(out.request_id, []).extend(out.new_token_ids)
        return got

    one = _engine(ckpt, 1, block_size=block_size, enable_prefix_caching=False)
    want = waves(one)
    one.shutdown()
    two = _engine(ckpt, 2, block_size=block_size)
    try:
        assert waves(two) == want
        assert two.stats().prefix_cache_hits == 3 * hits_each
        assert two.stats().num_free_blocks == 64
    finally:
        two.shutdown()


def test_killed_rank_ends_in_flight_requests_with_an_error(ckpt):
    engine = _engine(ckpt, 2)
    loop = EngineLoop(engine).start()
    finals: dict[str, object] = {}
    first_token = threading.Event()
    all_done = threading.Event()
    lock = threading.Lock()

    def sink(out):
        with lock:
            if out.new_token_ids:
                first_token.set()
            if out.finished:
                finals[out.request_id] = out
                if len(finals) == 4:
                    all_done.set()

    try:
        for i in range(4):
            loop.add(f"r{i}", [100 + i] * 8, SamplingParams(max_tokens=400, ignore_eos=True), sink)
        assert first_token.wait(120)
        os.kill(engine.executor.pids[1], signal.SIGKILL)
        assert all_done.wait(60), "in-flight requests were not ended after a rank died"
        for out in finals.values():
            assert out.finish_reason == "error" and isinstance(out.error, EngineDead)
        assert not loop.healthy()
        with pytest.raises(EngineDead, match="the engine is not running"):
            loop.add("late", [5, 6], SamplingParams(), sink)
    finally:
        loop.stop()
