"""Sampler with grammar masks (structured output): the mask is applied first, so top-k/top-p/min-p rank only
allowed tokens and no draw lands outside it; an allow-everything mask changes no draw; the draw stays a
function of (seed, position, mask); grammar rows get no min_tokens EOS ban; logprobs stay raw (before the
mask)."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from paddlellm.sampling import SamplingParams
from paddlellm.structured.bitmask import pack_token_bitmask
from paddlellm.worker.sampler import Sampler, SampleRow

EOS = 7
VOCAB = 200


def mask_of(allowed: list[int] | np.ndarray, vocab: int = VOCAB) -> np.ndarray:
    bits = np.zeros(vocab, dtype=bool)
    bits[np.asarray(allowed, dtype=np.int64)] = True
    return pack_token_bitmask(bits)


ALL = mask_of(np.arange(VOCAB))


def sample(logits: np.ndarray, rows: list[SampleRow]) -> list[int]:
    return Sampler([EOS]).sample(paddle.to_tensor(logits.astype(np.float32)), rows)


def row(
    p: SamplingParams, mask: np.ndarray | None = None, seed: int = 1, position: int = 10, outputs=()
) -> SampleRow:
    return SampleRow(p, seed, position, outputs, mask=mask)


def logits_batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randn(n, VOCAB) * 3


def test_greedy_takes_the_best_allowed_token_and_unmasked_rows_are_untouched() -> None:
    logits = logits_batch(2)
    allowed = np.argsort(logits[0])[:5]  # the five worst tokens of row 0
    got = sample(
        logits, [row(SamplingParams(temperature=0.0), mask_of(allowed)), row(SamplingParams(temperature=0.0))]
    )
    assert got[0] == allowed[np.argmax(logits[0][allowed])]
    assert got[1] == int(np.argmax(logits[1]))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.7, top_p=0.8),
        SamplingParams(temperature=1.3, top_k=3),
        SamplingParams(temperature=1.0, min_p=0.2),
        SamplingParams(temperature=0.9, presence_penalty=1.5, frequency_penalty=-1.0),
    ],
)
def test_draws_land_only_on_allowed_tokens(params: SamplingParams) -> None:
    logits = logits_batch(1, 3)
    allowed = np.argsort(logits[0])[::2][:40]  # every other token by rank: the best one excluded
    rows = [
        row(params, mask_of(allowed), seed=s, position=s % 7, outputs=(int(allowed[0]),) * 3)
        for s in range(300)
    ]
    got = sample(np.repeat(logits, len(rows), axis=0), rows)
    assert set(got) <= set(allowed.tolist())
    assert len(set(got)) > 1 or params.top_k == 1


def test_top_k_ranks_only_allowed_tokens() -> None:
    """Masking first: top_k=1 is the best allowed token (masking after top_k would leave nothing)."""
    logits = logits_batch(1, 5)
    order = np.argsort(-logits[0])
    allowed = order[3:9]
    rows = [row(SamplingParams(temperature=1.0, top_k=1), mask_of(allowed), seed=s) for s in range(50)]
    assert set(sample(np.repeat(logits, 50, axis=0), rows)) == {int(order[3])}


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.8, top_p=0.9),
        SamplingParams(temperature=1.1, top_k=20, min_p=0.01),
        SamplingParams(temperature=0.6, presence_penalty=0.5, frequency_penalty=0.3),
    ],
)
def test_an_allow_everything_mask_changes_no_draw(params: SamplingParams) -> None:
    logits = logits_batch(64, 9)
    outputs = (3, 3, 11, 50)
    plain = sample(logits, [row(params, None, seed=s, position=s, outputs=outputs) for s in range(64)])
    masked = sample(logits, [row(params, ALL, seed=s, position=s, outputs=outputs) for s in range(64)])
    assert masked == plain


def test_a_masked_draw_depends_only_on_seed_position_and_mask() -> None:
    logits = logits_batch(16, 11)
    p = SamplingParams(temperature=0.9, top_p=0.95)
    mask = mask_of(np.arange(0, VOCAB, 3))
    alone = sample(logits[4:5], [row(p, mask, seed=42, position=17)])
    batch = [row(p, mask_of(np.arange(i, VOCAB, 5)), seed=i, position=3) for i in range(16)]
    batch[4] = row(p, mask, seed=42, position=17)
    assert sample(logits, batch)[4] == alone[0]


def test_grammar_rows_get_no_min_tokens_eos_ban() -> None:
    logits = logits_batch(1, 13)
    logits[0, EOS] = 50.0  # the model wants to end
    p = SamplingParams(temperature=0.0, min_tokens=5)
    assert sample(logits, [row(p, None)])[0] != EOS  # without a grammar min_tokens bans EOS
    # with one, the grammar decides where the answer may end: min_tokens does not override it
    assert sample(logits, [row(p, mask_of([EOS, 20]))])[0] == EOS
    assert sample(logits, [row(SamplingParams(temperature=0.9, min_tokens=5), mask_of([EOS]))])[0] == EOS


def test_logprobs_are_raw_before_the_mask() -> None:
    logits = logits_batch(1, 17)
    best = int(np.argmax(logits[0]))
    allowed = [t for t in range(VOCAB) if t != best]
    tokens, lps = Sampler([EOS]).sample_with_logprobs(
        paddle.to_tensor(logits.astype(np.float32)),
        [row(SamplingParams(temperature=0.0, logprobs=2), mask_of(allowed))],
    )
    x = logits[0].astype(np.float32).astype(np.float64)
    ref = x - x.max() - np.log(np.exp(x - x.max()).sum())
    (entry,) = lps
    assert tokens[0] != best and entry.token_id == tokens[0] and entry.rank == 2
    assert abs(entry.logprob - ref[tokens[0]]) < 1e-5
    assert entry.top[0][0] == best  # the disallowed token is still the most likely one, as reported


def test_a_mask_that_allows_nothing_is_not_applied() -> None:
    logits = logits_batch(1, 19)
    got = sample(logits, [row(SamplingParams(temperature=0.8), mask_of([]))])
    assert 0 <= got[0] < VOCAB  # no NaN draw; the scheduler refuses it (grammar_rows.stop_reason)
