"""The native decode attention (paddlellm/native/paged_attention.c) equals Paddle's gather + matmul path on
the same paged cache, for every kernel ISA the CPU runs: GQA groups, ragged context lengths, scattered blocks,
head sizes the vector path takes (64, 32; 24 on AVX2 only; 256 accumulated in memory) and one it never does
(20), 1 and 2 threads, and a step that mixes decodes with a prefill chunk."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from paddlellm.layers.attention import AttentionMetadata, SeqSpan, paged_attention
from paddlellm.layers.decode_attention import NativeDecodeAttention
from paddlellm.native import build

BLOCK = 16



def _step(kv_heads: int, group: int, d: int, lens: list[int], prefill: int, seed: int):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    num_blocks = 64
    num_slots = num_blocks * BLOCK
    cache = rng.standard_normal((2 * kv_heads * num_slots, d), dtype=np.float32)
    free = list(rng.permutation(num_blocks))
    spans = []
    for n in lens:  # decodes: context n - 1 cached, one new token at position n - 1
        table = [int(free.pop()) for _ in range(-(-n // BLOCK))]
        spans.append(SeqSpan(n - 1, 1, table))
    if prefill:
        table = [int(free.pop()) for _ in range(-(-(prefill + 5) // BLOCK))]
        spans.append(SeqSpan(5, prefill, table))
    t = len(lens) + prefill
    q = rng.standard_normal((t, kv_heads * group, d), dtype=np.float32) * 0.3
    kv = rng.standard_normal((t, 2 * kv_heads, d), dtype=np.float32)
    return spans, num_slots, cache, q, kv


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("kv_heads", "group", "d", "lens", "prefill"),
    [
        (3, 3, 64, [1, 40, 17, 300], 0),
        (2, 1, 64, [64, 64, 64], 0),  # equal lengths: the Paddle path uses no mask
        (1, 4, 24, [5, 33], 0),  # vector path on AVX2 (8 lanes), scalar on AVX-512 (16)
        (1, 2, 20, [3, 70], 0),  # scalar path on every ISA
        (1, 2, 256, [3, 70], 0),  # more than 8 vectors: accumulated in memory, vector path on every ISA
        (2, 2, 32, [9, 120], 37),  # decodes and a prefill chunk in one step
    ],
)
def test_native_equals_paddle_path(  # type: ignore[no-untyped-def]
    native, threads, kv_heads, group, d, lens, prefill
) -> None:
    spans, num_slots, cache, q, kv = _step(kv_heads, group, d, lens, prefill, seed=len(lens) * 7 + d)
    outs = []
    for kernel in (None, NativeDecodeAttention(native, threads)):
        meta = AttentionMetadata.build(spans, len(lens), BLOCK, num_slots, kv_heads, group, kernel)
        c = paddle.to_tensor(cache)  # each path writes the step's K|V into its own copy
        out = paged_attention(paddle.to_tensor(q), paddle.to_tensor(kv), c, meta, kv_heads, group)
        outs.append(out.numpy())
    assert outs[1].shape == (len(lens) + prefill, kv_heads * group * d)
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=2e-6)


def test_a_request_does_not_depend_on_its_batch(native: build.NativeLibrary) -> None:
    spans, num_slots, cache, q, kv = _step(3, 3, 64, [50, 7, 200, 33], 0, seed=3)
    kernel = NativeDecodeAttention(native, 2)
    c = paddle.to_tensor(cache)
    paddle.scatter_(  # write the step's K|V once, then attend with and without the other requests
        c,
        AttentionMetadata.build(spans, 4, BLOCK, num_slots, 3, 3).write_rows,
        paddle.to_tensor(kv.reshape(-1, 64)),
        overwrite=True,
    )
    full = AttentionMetadata.build(spans, 4, BLOCK, num_slots, 3, 3, kernel)
    batch = kernel(paddle.to_tensor(q), c, full.slot_table, full.token_rows, full.token_lens, 3, 3).numpy()
    one = AttentionMetadata.build(spans[2:3], 1, BLOCK, num_slots, 3, 3, kernel)
    alone = kernel(paddle.to_tensor(q[2:3]), c, one.slot_table, one.token_rows, one.token_lens, 3, 3).numpy()
    assert np.array_equal(batch[2:3], alone)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("kv_heads", "group", "d", "lens", "prefill"),
    [
        (3, 3, 64, [1, 40, 17, 300], 0),
        (1, 4, 24, [5, 33], 0),  # vector path on AVX2, scalar on AVX-512
        (1, 2, 20, [3, 70], 0),  # scalar path on every ISA
        (1, 2, 256, [3, 70], 0),  # more than 8 vectors: accumulated in memory
        (2, 2, 32, [9, 120], 37),
    ],
)
def test_a_float16_cache_gives_the_float32_results_of_its_values(  # type: ignore[no-untyped-def]
    native, threads, kv_heads, group, d, lens, prefill
) -> None:
    """--kv-cache-dtype float16: each K|V value is widened exactly and the math is the fp32 kernel's, so the
    output equals, bit for bit, the fp32 kernel's on a cache holding the same (fp16-representable) values."""
    spans, num_slots, cache, q, _ = _step(kv_heads, group, d, lens, prefill, seed=len(lens) * 5 + d)
    half = cache.astype(np.float16)
    kernel = NativeDecodeAttention(native, threads)
    meta = AttentionMetadata.build(spans, len(lens), BLOCK, num_slots, kv_heads, group, kernel)
    outs = [
        kernel(paddle.to_tensor(q), paddle.to_tensor(c), meta.slot_table, meta.token_rows, meta.token_lens,
               kv_heads, group).numpy()
        for c in (half, half.astype(np.float32))
    ]
    assert np.array_equal(outs[0], outs[1])
