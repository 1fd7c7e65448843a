"""Logprobs and prompt logprobs against transformers' log_softmax on the same weights (fp32, quantization
none): the default model and a random-weight Qwen2. Entries within 5e-3 (the chosen token's value, the top-N
values, each top id's value under the reference), ranks consistent with the reference, greedy tokens their
own top-1. Runs under chunked prefill, and with prompt chunks longer than the runner's LM-head slice.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", exc_type=ModuleNotFoundError)
transformers = pytest.importorskip("transformers", exc_type=ModuleNotFoundError)

from paddlellm.sampling import SamplingParams  # noqa: E402
from paddlellm.step_types import TokenLogprobs  # noqa: E402
from paddlellm.worker.model_runner import PROMPT_LOGPROB_ROWS  # noqa: E402
from tests.parity.driver import run_requests  # noqa: E402
from tests.parity.test_tiny_models import hf_logits, hf_model, make_runner, prompts  # noqa: E402

pytestmark = [pytest.mark.parity, pytest.mark.timeout(600)]
TOL = 5e-3


def _ref_logprobs(model, ids: list[int]) -> np.ndarray:
    """Row j: transformers' log_softmax over the vocabulary for the token after ids[: j + 1]."""
    logits = torch.tensor(hf_logits(model, ids), dtype=torch.float64)
    return torch.log_softmax(logits, dim=-1).numpy()


def _check_entry(entry: TokenLogprobs, ref: np.ndarray, token: int, n_top: int) -> None:
    assert entry.token_id == token
    assert abs(entry.logprob - ref[token]) <= TOL, (entry.logprob, ref[token])
    v = ref[token]
    assert 1 + np.sum(ref > v + TOL) <= entry.rank <= 1 + np.sum(ref > v - TOL), entry.rank
    assert len(entry.top) == n_top
    ref_top = np.sort(ref)[::-1][:n_top]
    assert np.allclose([lp for _, lp in entry.top], ref_top, rtol=0, atol=TOL)
    for t, lp in entry.top:
        assert abs(lp - ref[t]) <= TOL
    assert [lp for _, lp in entry.top] == sorted((lp for _, lp in entry.top), reverse=True)


def _check_run(runner, model, ps: list[list[int]], sps: list[SamplingParams], budget: int) -> None:
    lps: list[list[TokenLogprobs]] = [[] for _ in ps]
    plps: list[dict[int, TokenLogprobs]] = [{} for _ in ps]
    outs = run_requests(runner, ps, sps, token_budget=budget, logprobs=lps, prompt_logprobs=plps)
    for p, sp, out, lp, plp in zip(ps, sps, outs, lps, plps, strict=True):
        ref = _ref_logprobs(model, p + out)
        if sp.logprobs is None:
            assert lp == []
        else:
            assert len(lp) == len(out)
            for k, (tok, entry) in enumerate(zip(out, lp, strict=True)):
                _check_entry(entry, ref[len(p) + k - 1], tok, sp.logprobs)
                if sp.greedy:
                    assert entry.rank == 1
                    assert entry.top[:1] == (((tok, entry.logprob),) if sp.logprobs else ())
        if sp.prompt_logprobs is None:
            assert plp == {}
        else:
            assert sorted(plp) == list(range(1, len(p)))
            for pos, entry in plp.items():
                _check_entry(entry, ref[pos - 1], p[pos], sp.prompt_logprobs)


def test_qwen2_random_weights(tiny_checkpoint) -> None:
    path = tiny_checkpoint(arch="qwen2", tokenizer="llama2", tie=False)
    runner = make_runner(path)
    model = hf_model(path)
    ps = prompts(runner.info.vocab_size, [5, 40, PROMPT_LOGPROB_ROWS + 30], seed=11)
    sps = [
        SamplingParams(temperature=0.0, max_tokens=6, logprobs=5, prompt_logprobs=3),
        SamplingParams(temperature=0.8, top_k=20, seed=4, max_tokens=6, logprobs=2),
        SamplingParams(temperature=0.0, max_tokens=4, logprobs=0, prompt_logprobs=20),
    ]
    _check_run(runner, model, ps, sps, budget=24)  # chunked prefill, mixed steps
    _check_run(runner, model, ps, sps, budget=4096)  # the long prompt in one chunk: two LM-head slices


def test_default_model(default_model_dir: str) -> None:
    runner = make_runner(default_model_dir, block_size=64, num_blocks=64, max_model_len=2048)
    model = hf_model(default_model_dir)  # the converted checkpoint: the same fp32 weights
    tok = transformers.AutoTokenizer.from_pretrained(default_model_dir)
    texts = ["The capital of France is", "请用一句话介绍北京。 Then count: one, two, three"]
    ps = [list(tok(t)["input_ids"]) for t in texts]
    sps = [
        SamplingParams(temperature=0.0, max_tokens=5, logprobs=5, prompt_logprobs=5),
        SamplingParams(temperature=0.7, seed=1, max_tokens=5, logprobs=3, prompt_logprobs=0),
    ]
    _check_run(runner, model, ps, sps, budget=8)
