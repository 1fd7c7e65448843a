"""Sampler semantics: greedy, temperature/top_p draws from (seed, position), penalties, min_tokens."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from paddlellm.sampling import SamplingParams
from paddlellm.worker.sampler import Sampler, SampleRow, uniform

EOS = 7


def sample(logits: np.ndarray, rows: list[SampleRow]) -> list[int]:
    return Sampler([EOS]).sample(paddle.to_tensor(logits.astype(np.float32)), rows)


def row(
    params: SamplingParams, seed: int = 1, position: int = 10, outputs: tuple[int, ...] = ()
) -> SampleRow:
    return SampleRow(params, seed, position, outputs)


def test_uniform_is_a_pure_function_of_seed_and_position() -> None:
    draws = [uniform(s, p) for s in (0, 1, -5, 2**63 - 1) for p in range(50)]
    assert all(0.0 <= u < 1.0 for u in draws)
    assert draws == [uniform(s, p) for s in (0, 1, -5, 2**63 - 1) for p in range(50)]
    assert len(set(draws)) == len(draws)
    assert abs(np.mean([uniform(3, p) for p in range(20000)]) - 0.5) < 0.01


def test_greedy_fast_and_slow_paths_agree() -> None:
    logits = np.random.RandomState(0).randn(6, 50)
    greedy = SamplingParams(temperature=0.0)
    fast = sample(logits, [row(greedy) for _ in range(6)])
    assert fast == list(np.argmax(logits, axis=1))
    # a zero-effect penalty row goes through numpy and must agree
    slow = sample(logits, [row(SamplingParams(temperature=0.0, presence_penalty=0.0, min_tokens=0))] * 6)
    assert slow == fast


def test_seeded_draw_independent_of_batch_and_reproducible() -> None:
    rng = np.random.RandomState(1)
    logits = rng.randn(32, 200) * 2
    p = SamplingParams(temperature=0.8, top_p=0.9)
    alone = sample(logits[5:6], [row(p, seed=42, position=17)])
    batch_rows = [row(p, seed=i, position=17) for i in range(32)]
    batch_rows[5] = row(p, seed=42, position=17)
    assert sample(logits, batch_rows)[5] == alone[0]
    draws = {sample(logits[5:6], [row(p, seed=42, position=q)])[0] for q in range(40)}
    assert len(draws) > 1  # different positions draw differently


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    p = SamplingParams(temperature=1.0, top_p=0.7)
    seen = {sample(logits, [row(p, seed=s)])[0] for s in range(300)}
    assert seen == {0, 1}
    freq = (
        np.bincount(
            [sample(logits, [row(SamplingParams(temperature=1.0), seed=s)])[0] for s in range(2000)],
            minlength=4,
        )
        / 2000
    )
    assert np.allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.04)


def test_penalties_follow_openai() -> None:
    logits = np.array([[2.0, 1.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    greedy_presence = SamplingParams(temperature=0.0, presence_penalty=0.5)
    assert sample(logits, [row(greedy_presence, outputs=(0,))]) == [1]
    assert sample(logits, [row(greedy_presence, outputs=(1,))]) == [0]
    freq = SamplingParams(temperature=0.0, frequency_penalty=0.06)
    assert sample(logits, [row(freq, outputs=(0,))]) == [0]  # 2.0 - 0.06 > 1.9
    assert sample(logits, [row(freq, outputs=(0, 0))]) == [1]  # 2.0 - 0.12 < 1.9
    logits[0, 5] = 1.5
    neg = SamplingParams(temperature=0.0, presence_penalty=-1.0)  # a negative penalty favours repeats
    assert sample(logits, [row(neg, outputs=(5,))]) == [5]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_min_tokens_suppresses_eos_and_stop_ids(temperature: float) -> None:
    logits = np.full((1, 10), -5.0)
    logits[0, EOS] = 10.0
    logits[0, 3] = 9.0
    logits[0, 4] = 1.0
    p = SamplingParams(temperature=temperature, min_tokens=2, stop_token_ids=(3,), max_tokens=5)
    for s in range(20):
        assert sample(logits, [row(p, seed=s, outputs=(4,))])[0] not in (EOS, 3)
    assert sample(
        logits, [row(SamplingParams(temperature=0.0, min_tokens=2, max_tokens=5), outputs=(4, 4))]
    ) == [EOS]


def test_min_tokens_counts_outputs_without_their_ids() -> None:
    logits = np.full((1, 10), -5.0)
    logits[0, EOS] = 10.0
    p = SamplingParams(temperature=0.0, min_tokens=3, max_tokens=5)
    assert sample(logits, [SampleRow(p, 1, 10, (), num_outputs=2)])[0] != EOS
    assert sample(logits, [SampleRow(p, 1, 10, (), num_outputs=3)])[0] == EOS
