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
    sampling_params: SamplingParams, seed: int = 1, position: int = 10, outputs: tuple[int, ...] = ()
) -> SampleRow:
    return SampleRow(sampling_params, seed, position, outputs)


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


# ---------------------------------------------------------------- min_p, top_k

def _support(logits: np.ndarray, sp: SamplingParams, draws: int = 400) -> set[int]:
    return {sample(logits, [row(sp, seed=s, position=s % 7)])[0] for s in range(draws)}


def _freq(logits: np.ndarray, sp: SamplingParams, draws: int = 3000) -> np.ndarray:
    got = [sample(logits, [row(sp, seed=s)])[0] for s in range(draws)]
    return np.bincount(got, minlength=logits.shape[1]) / draws


PROBS = np.array([[0.4, 0.3, 0.2, 0.1]])


def test_top_k_keeps_the_k_most_likely_renormalised() -> None:
    logits = np.log(PROBS)
    assert _support(logits, SamplingParams(top_k=2)) == {0, 1}
    assert _support(logits, SamplingParams(top_k=1)) == {0}
    assert np.allclose(_freq(logits, SamplingParams(top_k=2)), [4 / 7, 3 / 7, 0, 0], atol=0.03)
    # ties at the cut go by token id, as in top_p
    assert _support(np.array([[1.0, 2.0, 2.0, 2.0, 0.0]]), SamplingParams(top_k=2)) == {1, 2}


def test_min_p_keeps_tokens_at_least_min_p_times_the_top() -> None:
    logits = np.log(PROBS)
    assert _support(logits, SamplingParams(min_p=0.45)) == {0, 1, 2}  # p >= 0.18
    assert _support(logits, SamplingParams(min_p=0.76)) == {0}  # 0.3 < 0.304
    assert np.allclose(_freq(logits, SamplingParams(min_p=0.45)), [4 / 9, 3 / 9, 2 / 9, 0], atol=0.03)
    # with a temperature, min_p applies to the tempered distribution: T=0.5 squares the odds
    assert _support(logits, SamplingParams(min_p=0.5, temperature=0.5)) == {0, 1}  # 0.09/0.16 >= .5 > .04/.16


def test_order_min_p_then_top_k_then_top_p_over_the_rest() -> None:
    logits = np.log(PROBS)
    # min_p 0.3 keeps {0, 1, 2}; top_k 2 keeps {0, 1}; renormalised (4/7, 3/7), top_p 0.5 keeps {0}. Over the
    # original distribution top_p 0.5 would keep {0, 1} (0.4 < 0.5).
    assert _support(logits, SamplingParams(min_p=0.3, top_k=2, top_p=0.5)) == {0}
    assert _support(logits, SamplingParams(min_p=0.3, top_k=2, top_p=0.6)) == {0, 1}
    assert _support(logits, SamplingParams(top_k=3, top_p=0.7)) == {0, 1}  # 0.4/0.9 < 0.7 <= 0.7/0.9


def test_disabled_top_k_and_min_p_draw_exactly_as_without_them() -> None:
    logits = np.random.RandomState(3).randn(8, 300) * 2
    base = SamplingParams(temperature=0.9, top_p=0.95)
    ref = [sample(logits, [row(base, seed=s, position=s) for _ in range(8)]) for s in range(20)]
    for off in (SamplingParams(temperature=0.9, top_p=0.95, top_k=0, min_p=0.0),
                SamplingParams(temperature=0.9, top_p=0.95, top_k=-1),
                SamplingParams(temperature=0.9, top_p=0.95, top_k=300)):
        assert [sample(logits, [row(off, seed=s, position=s) for _ in range(8)]) for s in range(20)] == ref


def _reference_sample_row(logits: np.ndarray, sp: SamplingParams, seed: int, position: int) -> int:
    """The sampler's draw before top_k / min_p existed (temperature and top_p only), kept verbatim."""
    z = logits / sp.temperature
    z -= z.max()
    probs = np.exp(z)
    order = np.argsort(-probs, kind="stable")
    sorted_p = probs[order] / probs.sum()
    cum = np.cumsum(sorted_p)
    if sp.top_p < 1.0:
        keep = int(np.searchsorted(cum, sp.top_p, side="left")) + 1
        cum = np.cumsum(sorted_p[:keep])
    u = uniform(seed, position) * cum[-1]
    k = int(np.searchsorted(cum, u, side="right"))
    return int(order[min(k, len(cum) - 1)])


@pytest.mark.parametrize("sp", [SamplingParams(temperature=0.7), SamplingParams(temperature=1.3, top_p=0.8)])
def test_existing_params_draw_bit_identically_to_the_old_sampler(sp: SamplingParams) -> None:
    logits = (np.random.RandomState(5).randn(16, 2000) * 3).astype(np.float32)
    rows = [row(sp, seed=1000 + i, position=40 + i) for i in range(16)]
    expected = [
        _reference_sample_row(logits[i].astype(np.float64), sp, 1000 + i, 40 + i) for i in range(16)
    ]
    assert sample(logits, rows) == expected


def test_top_k_and_min_p_are_batch_invariant() -> None:
    logits = np.random.RandomState(6).randn(12, 500) * 2
    sp = SamplingParams(temperature=1.0, top_k=20, min_p=0.05, seed=9)
    alone = sample(logits[4:5], [row(sp, seed=77, position=31)])[0]
    rows = [row(SamplingParams(temperature=0.0 if i % 2 else 0.8), seed=i, position=31) for i in range(12)]
    rows[4] = row(sp, seed=77, position=31)
    assert sample(logits, rows)[4] == alone


# ---------------------------------------------------------------- logprobs

def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


def test_logprobs_equal_log_softmax_of_the_raw_logits() -> None:
    logits = (np.random.RandomState(7).randn(5, 700) * 3).astype(np.float32)
    params = [
        SamplingParams(temperature=0.0, logprobs=3),  # plain greedy: the fast path
        SamplingParams(temperature=0.7, top_k=5, presence_penalty=1.5, logprobs=0),  # not the modified logits
        SamplingParams(temperature=1.0),  # did not ask
        SamplingParams(temperature=0.0, frequency_penalty=2.0, logprobs=20),
        SamplingParams(temperature=0.9, top_p=0.5, logprobs=1),
    ]
    rows = [row(p, seed=i, outputs=(1, 2, 3)) for i, p in enumerate(params)]
    tokens, lps = Sampler([EOS]).sample_with_logprobs(paddle.to_tensor(logits), rows)
    assert tokens == sample(logits, rows)
    assert lps[2] is None
    for i, p in enumerate(params):
        if p.logprobs is None:
            continue
        entry, ref = lps[i], _np_log_softmax(logits[i])
        assert entry is not None and entry.token_id == tokens[i]
        assert abs(entry.logprob - ref[tokens[i]]) < 1e-5
        assert entry.rank == 1 + int(np.sum(logits[i] > logits[i, tokens[i]]))
        want = sorted(range(700), key=lambda t: (-logits[i, t], t))[: p.logprobs]
        assert [t for t, _ in entry.top] == want
        assert np.allclose([v for _, v in entry.top], ref[want], atol=1e-5)
    # greedy: the chosen token is its own top-1 with rank 1
    assert lps[0] is not None and lps[0].rank == 1 and lps[0].top[0] == (tokens[0], lps[0].logprob)


def test_logprobs_rank_and_top_ties_by_id_on_a_large_vocabulary() -> None:
    from paddlellm.worker.sampler import token_logprobs, top_ids

    rng = np.random.RandomState(8)
    # many exact ties; a vocabulary that is no multiple of the chunk
    x = rng.randint(-40, 12, size=(3, 49_157)).astype(np.float32)
    x[1, 49_150:] = 50.0  # the top in the partial last chunk
    for r in range(3):
        brute = sorted(range(x.shape[1]), key=lambda t: (-x[r, t], t))
        for n in (1, 5, 20):
            assert top_ids(x[r], n).tolist() == brute[:n]
    entries = token_logprobs(x, [7, 49_151, 100], [20, 4, 0])
    for r, e in enumerate(entries):
        ref = _np_log_softmax(x[r])
        assert abs(e.logprob - ref[e.token_id]) < 1e-5
        assert e.rank == 1 + int(np.sum(x[r] > x[r, e.token_id]))
    assert entries[1].rank == 1 and [t for t, _ in entries[1].top] == [49_150, 49_151, 49_152, 49_153]
    assert entries[2].top == ()
    assert top_ids(np.array([3.0, 1.0, 3.0]), 5).tolist() == [0, 2, 1]  # n beyond the vocabulary


def _full_sort_draw(logits: np.ndarray, row: SampleRow) -> int:
    """The sampler's draw with the whole vocabulary sorted (the definition the head search must match)."""
    p = row.sampling_params
    z = logits / p.temperature
    z -= z.max()
    probs = np.exp(z)
    order = np.argsort(-probs, kind="stable")
    sorted_p = probs[order] / probs.sum()
    keep = len(sorted_p)
    if p.min_p > 0.0:
        keep = int(np.count_nonzero(sorted_p >= p.min_p * sorted_p[0]))
    if p.top_k > 0:
        keep = min(keep, p.top_k)
    if keep < len(sorted_p):
        sorted_p = sorted_p[:keep] / sorted_p[:keep].sum()
    cum = np.cumsum(sorted_p)
    if p.top_p < 1.0:
        keep = int(np.searchsorted(cum, p.top_p, side="left")) + 1
        cum = np.cumsum(sorted_p[:keep])
    k = int(np.searchsorted(cum, uniform(row.seed, row.position) * cum[-1], side="right"))
    return int(order[min(k, len(cum) - 1)])


@pytest.mark.parametrize("vocab", [49_152, 1000, 50])
def test_head_search_draws_what_a_full_sort_draws(vocab: int) -> None:
    """The sampler orders only the head of the vocabulary (growing it as needed): every draw must equal the
    full sort's, for peaked and flat rows, ties, and each kept-set rule (top_p, top_k, min_p, combined)."""
    sampler = Sampler([2])
    rng = np.random.default_rng(vocab)
    params = [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.7, top_p=0.9),
        SamplingParams(temperature=1.3, top_k=40),
        SamplingParams(temperature=1.0, min_p=0.05),
        SamplingParams(temperature=1.0, top_k=256),
        SamplingParams(temperature=2.0, top_p=0.999, top_k=3000),
        SamplingParams(temperature=1.0, top_k=5000),
        SamplingParams(temperature=0.9, min_p=0.2, top_p=0.8),
    ]
    for scale in (0.5, 3.0, 10.0):
        for sp in params:
            for seed in range(6):
                logits = np.round(rng.standard_normal(vocab) * scale, 1)  # rounding makes ties
                row = SampleRow(sp, seed, 7 + seed, (), 0)
                assert sampler._sample_row(logits.copy(), row) == _full_sort_draw(logits.copy(), row)
