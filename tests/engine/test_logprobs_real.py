"""Logprobs through LLMEngine over a real (tiny, random-weight) checkpoint and the in-process executor.

Each entry equals the log-softmax of the runner's own `prompt_logits` over prompt + outputs (so the values
are the model's, whatever batch, chunking or preemption produced them); prompt logprobs come once, on the
first output, one per prompt position; greedy tokens are their own top-1 with rank 1; the offline LLM API
hands them through.
"""

from __future__ import annotations

import numpy as np
import pytest

from paddlellm.config import EngineConfig
from paddlellm.engine.core import LLMEngine
from paddlellm.engine.outputs import RequestOutput
from paddlellm.sampling import SamplingParams
from paddlellm.step_types import TokenLogprobs

pytest.importorskip("paddle", exc_type=ModuleNotFoundError)
import paddlellm.executor.inproc  # noqa: E402, F401

TOL = 1e-4  # the same model under another batch/chunking: float32 summation order only


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint) -> str:
    return tiny_checkpoint(arch="llama", tokenizer="llama2", seed=7)


def _engine(path: str, **cfg) -> LLMEngine:
    base = {"block_size": 16, "max_model_len": 512, "num_gpu_blocks_override": 128, "max_num_seqs": 8,
            "num_threads": 2, "quantization": "none"}
    return LLMEngine.create(EngineConfig(model=path, **{**base, **cfg}))


def _prompt(n: int, k: int) -> list[int]:
    return [(97 * i + 31 * k + 5) % 31000 + 100 for i in range(n)]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _check(entry: TokenLogprobs, ref: np.ndarray, token: int, n_top: int) -> None:
    assert entry.token_id == token and abs(entry.logprob - ref[token]) <= TOL
    assert entry.rank == 1 + int(np.sum(ref > ref[token] + TOL)) or abs(
        np.sort(ref)[::-1][entry.rank - 1] - ref[token]) <= TOL
    assert len(entry.top) == n_top
    for t, lp in entry.top:
        assert abs(lp - ref[t]) <= TOL
    assert np.allclose([lp for _, lp in entry.top], np.sort(ref)[::-1][:n_top], atol=TOL)


Requests = dict[str, tuple[list[int], SamplingParams]]


def _run_and_check(engine: LLMEngine, reqs: Requests) -> dict[str, list[int]]:
    for rid, (ids, sp) in reqs.items():
        engine.add_request(rid, ids, sp)
    outs: dict[str, list[RequestOutput]] = {}
    for o in engine.run_until_done():
        outs.setdefault(o.request_id, []).append(o)
    tokens = {}
    for rid, (ids, sp) in reqs.items():
        got = outs[rid]
        new = [t for o in got for t in o.new_token_ids]
        tokens[rid] = new
        ref = _log_softmax(engine.executor.prompt_logits(ids + new))
        if sp.logprobs is not None:
            entries = [e for o in got for e in (o.logprobs or ())]
            assert all(o.logprobs is not None and len(o.logprobs) == len(o.new_token_ids) for o in got)
            assert len(entries) == len(new)
            for k, (tok, e) in enumerate(zip(new, entries, strict=True)):
                _check(e, ref[len(ids) + k - 1], tok, sp.logprobs)
                if sp.greedy:
                    assert e.rank == 1
                    assert not sp.logprobs or e.top[0] == (tok, e.logprob)
        else:
            assert all(o.logprobs is None for o in got)
        if sp.prompt_logprobs is not None:
            first = got[0].prompt_logprobs
            assert first is not None and len(first) == len(ids) and first[0] is None
            assert all(o.prompt_logprobs is None for o in got[1:])
            for pos in range(1, len(ids)):
                entry = first[pos]
                assert entry is not None
                _check(entry, ref[pos - 1], ids[pos], sp.prompt_logprobs)
    return tokens


def _requests(n: int = 6, step: int = 23, max_tokens: int = 12) -> Requests:
    return {
        f"r{i}": (
            _prompt(10 + step * i, i),
            SamplingParams(
                max_tokens=max_tokens,
                temperature=0.0 if i % 2 else 0.8,
                seed=i,
                ignore_eos=True,
                logprobs=None if i == 3 else i % 4 * 2,
                prompt_logprobs=2 if i % 3 == 0 else None,
            ),
        )
        for i in range(n)
    }


def test_logprobs_with_chunked_prefill(ckpt) -> None:
    engine = _engine(ckpt, max_num_batched_tokens=24)
    _run_and_check(engine, _requests())
    assert engine.stats().num_free_blocks == 128


def test_logprobs_with_preemption(ckpt) -> None:
    reqs = _requests(n=8, step=9, max_tokens=40)
    ample = _run_and_check(_engine(ckpt), reqs)
    tiny = _engine(ckpt, num_gpu_blocks_override=12)  # 192 tokens of KV for ~8 x 80
    got = _run_and_check(tiny, reqs)
    assert tiny.stats().num_preemptions > 0
    assert got == ample


def test_offline_llm_returns_logprobs(ckpt) -> None:
    from paddlellm.llm import LLM

    engine = _engine(ckpt)

    class Ids:
        def encode(self, text: str) -> list[int]:
            return _prompt(len(text), 0)

        def decode(self, ids) -> str:
            return " ".join(map(str, ids))

        def encode_chat(self, messages) -> list[int]:
            return _prompt(5, 1)

    llm = LLM.from_engine(engine, Ids())
    sp = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True, logprobs=1, prompt_logprobs=0)
    a, b = llm.generate(["abcdef", [300, 301, 302]], [sp, SamplingParams(max_tokens=2)])
    assert a.logprobs is not None and [e.token_id for e in a.logprobs] == list(a.token_ids)
    assert a.prompt_logprobs is not None and len(a.prompt_logprobs) == 6 and a.prompt_logprobs[0] is None
    assert b.logprobs is None and b.prompt_logprobs is None
