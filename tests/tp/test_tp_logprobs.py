"""Logprobs and prompt logprobs under TP=2 equal TP=1's (fp32, quantization none): rank 0's sampler output
carries them through the worker channel, and the sharded LM head of the prompt rows all-reduces in step."""

from __future__ import annotations

import numpy as np

from paddlellm.config import EngineConfig
from paddlellm.engine.core import LLMEngine
from paddlellm.engine.outputs import RequestOutput
from paddlellm.executor.multiproc import MultiprocExecutor
from paddlellm.model_info import ModelInfo
from paddlellm.sampling import SamplingParams

BLOCKS = 128


Requests = dict[str, tuple[list[int], SamplingParams]]


def _run(path: str, tp: int, reqs: Requests) -> dict[str, list[RequestOutput]]:
    config = EngineConfig(model=path, tensor_parallel_size=tp, max_model_len=256, block_size=16,
                          max_num_seqs=8, max_num_batched_tokens=32, num_gpu_blocks_override=BLOCKS,
                          quantization="none")
    info = ModelInfo.from_dir(path)
    ex = MultiprocExecutor(config, info, BLOCKS)
    try:
        engine = LLMEngine(config, ex, info, BLOCKS)
        for rid, (ids, sp) in reqs.items():
            engine.add_request(rid, ids, sp)
        outs: dict[str, list[RequestOutput]] = {}
        for o in engine.run_until_done():
            outs.setdefault(o.request_id, []).append(o)
        return outs
    finally:
        ex.shutdown()


def _flat(outs: list[RequestOutput]) -> tuple[list[int], list, list]:
    tokens = [t for o in outs for t in o.new_token_ids]
    entries = [e for o in outs for e in (o.logprobs or ())]
    prompt = [e for o in outs for e in (o.prompt_logprobs or ())]
    return tokens, entries, prompt


def test_tp2_logprobs_equal_tp1(tiny_checkpoint) -> None:
    path = tiny_checkpoint(arch="qwen2", tokenizer="llama2", tie=False)
    vocab = ModelInfo.from_dir(path).vocab_size
    rng = np.random.default_rng(3)
    reqs = {
        f"r{i}": (
            [int(t) for t in rng.integers(3, vocab, 5 + 17 * i)],
            SamplingParams(max_tokens=6, temperature=0.0 if i % 2 == 0 else 0.9, seed=i, ignore_eos=True,
                           logprobs=3 + i, prompt_logprobs=None if i == 1 else 2),
        )
        for i in range(4)
    }
    ref, got = _run(path, 1, reqs), _run(path, 2, reqs)
    assert sorted(ref) == sorted(got) == sorted(reqs)
    for rid, (ids, sp) in reqs.items():
        r_tokens, r_entries, r_prompt = _flat(ref[rid])
        g_tokens, g_entries, g_prompt = _flat(got[rid])
        assert g_tokens == r_tokens and len(r_entries) == sp.max_tokens
        assert len(r_prompt) == (0 if sp.prompt_logprobs is None else len(ids))
        for a, b in zip(r_entries + r_prompt, g_entries + g_prompt, strict=True):
            if a is None:
                assert b is None
                continue
            assert (a.token_id, a.rank, [t for t, _ in a.top]) == (b.token_id, b.rank, [t for t, _ in b.top])
            assert abs(a.logprob - b.logprob) <= 1e-4
            assert np.allclose([v for _, v in a.top], [v for _, v in b.top], rtol=0, atol=1e-4)
