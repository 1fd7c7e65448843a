"""TP=2 (and TP=3 on the default model) against TP=1: same greedy tokens, logits within 1e-4.

The reference runs the same ModelRunner unsharded (world=1) in one rank process, so both sides use the
real worker, channel and engine; only the sharding and the all-reduce differ.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from paddlellm.config import EngineConfig
from paddlellm.engine.core import LLMEngine
from paddlellm.errors import ConfigError, EngineDead
from paddlellm.executor.multiproc import MultiprocExecutor
from paddlellm.model_info import ModelInfo
from paddlellm.sampling import SamplingParams
from tests.kernel_choices import model_kernels

BLOCKS = 256


def _run(path: str, tp: int, prompts: list[list[int]], max_tokens: int, kernels: str = "auto"
         ) -> tuple[np.ndarray, dict[str, list[int]]]:
    # fp32 weights (quantization none): TP = 1 to 1e-4. Quantized activations (the default model's auto is
    # wint4) round each block to int8 after an all-reduce that sums in another order, so a rounding flip can
    # move a later logit: quantized TP is judged by the quality gate, not by this equality.
    config = EngineConfig(model=path, tensor_parallel_size=tp, max_model_len=256, block_size=16,
                          max_num_seqs=16, num_gpu_blocks_override=BLOCKS, cpu_kernels=kernels,
                          quantization="none")
    info = ModelInfo.from_dir(path)
    ex = MultiprocExecutor(config, info, BLOCKS)
    try:
        logits = ex.prompt_logits(prompts[0])
        engine = LLMEngine(config, ex, info, BLOCKS)
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        for i, p in enumerate(prompts):
            engine.add_request(f"r{i}", p, params)
        tokens: dict[str, list[int]] = {}
        for out in engine.run_until_done():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
        return logits, tokens
    finally:
        ex.shutdown()


def _prompts(vocab: int, n: int = 16) -> list[list[int]]:
    rng = np.random.default_rng(1)
    return [[int(t) for t in rng.integers(3, vocab, 3 + 5 * i)] for i in range(n)]


def _check(path: str, tp: int, n_req: int = 16, max_tokens: int = 12, kernels: str = "auto") -> None:
    prompts = _prompts(ModelInfo.from_dir(path).vocab_size, n_req)
    ref_logits, ref_tokens = _run(path, 1, prompts, max_tokens, kernels)
    logits, tokens = _run(path, tp, prompts, max_tokens, kernels)
    assert logits.shape == ref_logits.shape
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=1e-4)
    assert len(ref_tokens) == n_req and all(len(t) == max_tokens for t in ref_tokens.values())
    assert tokens == ref_tokens


@pytest.mark.parametrize("kernels", model_kernels())
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "ernie4_5"])
def test_tp2_matches_tp1(tiny_checkpoint, arch: str, kernels: str) -> None:
    _check(tiny_checkpoint(arch=arch, tokenizer="llama2", tie=arch != "qwen2"), tp=2, kernels=kernels)


def test_default_model_refuses_tp2_and_runs_tp3(default_model_dir: str) -> None:
    info = ModelInfo.from_dir(default_model_dir)
    assert (info.num_heads, info.num_kv_heads) == (9, 3)
    config = EngineConfig(model=default_model_dir, tensor_parallel_size=2, num_gpu_blocks_override=BLOCKS)
    with pytest.raises(ConfigError, match="does not divide .*num_attention_heads=9, num_key_value_heads=3"):
        MultiprocExecutor(config, info, BLOCKS)
    _check(default_model_dir, tp=3, n_req=4, max_tokens=6)


def test_kill_a_rank_mid_decode(tiny_checkpoint) -> None:
    """The real runner blocks in the shm all-reduce when its peer dies: the engine step must fail fast."""
    path = tiny_checkpoint(arch="llama", tokenizer="llama2")
    config = EngineConfig(model=path, tensor_parallel_size=2, max_model_len=256, block_size=16,
                          num_gpu_blocks_override=BLOCKS)
    info = ModelInfo.from_dir(path)
    ex = MultiprocExecutor(config, info, BLOCKS)
    shm = ex.shm_name
    try:
        engine = LLMEngine(config, ex, info, BLOCKS)
        params = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
        for i in range(4):
            engine.add_request(f"r{i}", [5 + i] * 8, params)
        for _ in range(3):
            engine.step()
        os.kill(ex.pids[1], signal.SIGKILL)
        t0 = time.monotonic()
        # The rank's death is the error (not the 600 s step timeout); the 120 s only guards against a hang.
        with pytest.raises(EngineDead, match="rank 1"):
            while time.monotonic() - t0 < 120:
                engine.step()
        with pytest.raises(EngineDead, match="rank 1"):
            engine.check_health()
        assert not os.path.exists(f"/dev/shm/{shm}")
    finally:
        ex.shutdown()
