"""The team size TeamTuner picks changes speed only: the default model gives the same tokens and the same
logprob bits with every step run by one thread, by two, and by the tuner alternating between them (batched
decode, a prefill chunk, sampled rows), on every weight format and kernel ISA the tests run."""

from __future__ import annotations

import pytest

from paddlellm.llm import LLM
from paddlellm.sampling import SamplingParams
from tests.kernel_choices import model_kernels

pytest.importorskip("paddle", exc_type=ModuleNotFoundError)

PROMPTS = [
    [{"role": "user", "content": "Name three rivers in Europe and say one thing about each."}],
    [{"role": "user", "content": "Write a haiku about a lighthouse."}],
    [{"role": "user", "content": "Explain what a prime number is to a child."}],
]


def _answers(llm: LLM, force: int | None) -> list[tuple[list[int], list[object]]]:
    runner = llm.engine.executor.runner
    tuner = runner.tuner
    if force is not None:
        step = {"n": 0}

        def begin(requests: int, prefill: bool = False) -> int:  # force (or alternate: 0) every team
            step["n"] += 1
            runner.kernels.team.size = force or (1 + step["n"] % 2)
            return runner.kernels.team.size

        tuner.begin = begin  # type: ignore[method-assign]
    params = [
        SamplingParams(max_tokens=24, temperature=0.0, logprobs=2),
        SamplingParams(max_tokens=24, temperature=0.9, top_p=0.9, seed=11, logprobs=2),
        SamplingParams(max_tokens=24, temperature=0.0, logprobs=2),
    ]
    outs = llm.chat(PROMPTS, params)
    return [(list(o.token_ids), list(o.logprobs or ())) for o in outs]


@pytest.mark.parametrize("quantization", ["auto", "none"])
@pytest.mark.parametrize("kernels", model_kernels())
def test_team_size_changes_no_bits(default_model_dir: str, quantization: str, kernels: str) -> None:
    with LLM(
        default_model_dir, num_threads=2, quantization=quantization, cpu_kernels=kernels, max_num_seqs=4
    ) as llm:
        runner = llm.engine.executor.runner
        assert runner.tuner.candidates == (2, 1)
        assert runner.kernels.gemm.team is runner.kernels.team  # every native call reads the tuned size
        two = _answers(llm, 2)
        one = _answers(llm, 1)
        alternating = _answers(llm, 0)
    assert one == two
    assert alternating == two
