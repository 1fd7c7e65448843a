"""The quantized-weight kernels (`--quantization wint8`, `wint4`): bit-exact against NumPy doing the same
quantized arithmetic, across blocking edges and every ISA this CPU runs (forced lower ISAs too), batch
invariant; the Paddle-ops reference computes the same math."""

from __future__ import annotations

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

from paddlellm.cpu import read_cpu  # noqa: E402
from paddlellm.layers.quant_gemm import (  # noqa: E402
    BLOCK,
    X8,
    X16,
    Int4Gemm,
    Int8Gemm,
    PaddleInt4Gemm,
    PaddleInt8Gemm,
    pack_q4_panels,
    pack_u8_pair_panels,
    q8_0_as_u8,
    quantize_activations,
    quantize_q4,
    quantize_u8,
    tables_fp16,
)
from paddlellm.native import build  # noqa: E402
from paddlellm.quant_blocks import BlockQuantized  # noqa: E402


def _reference(x: np.ndarray, q: np.ndarray, d: np.ndarray, mn: np.ndarray, qx: float, bias) -> np.ndarray:
    """What the kernels compute, op by op in float32, block by block (a block's integer sum in int64): the
    integer dot product scaled by d, plus the activations' block sum scaled by the minimum."""
    xq, a = quantize_activations(x, qx)
    acc = np.zeros((x.shape[0], q.shape[0]), np.float32)
    for b in range(a.shape[1]):
        cols = slice(b * BLOCK, (b + 1) * BLOCK)
        xb = xq[:, cols]
        sums = (xb @ q[:, cols].astype(np.int64).T).astype(np.float32)
        xsa = xb.sum(axis=1).astype(np.float32) * a[:, b]
        acc = acc + (sums * a[:, b : b + 1]) * d[None, :, b]
        acc = acc + xsa[:, None] * mn[None, :, b]
    return acc + bias[None, :] if bias is not None else acc


def reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """wint8: u8 weights with a minimum, int16 activations."""
    return _reference(x, *quantize_u8(w), X16, bias)


def _data(m: int, k: int, n: int, seed: int, bias: bool = True) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[:, rng.integers(0, k)] *= 20  # an outlier channel, as real activations have
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    return x, w, b


def _run(native: build.NativeLibrary, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, threads: int = 2):
    layer = Int8Gemm(native, threads).weight(w, b)
    return layer(paddle.to_tensor(x)).numpy()


@pytest.mark.parametrize(
    ("m", "k", "n"),
    [(1, 576, 1536), (3, 5, 7), (4, 8, 16), (9, 63, 33), (17, 130, 47), (64, 576, 192), (70, 1536, 40)],
)
def test_bit_exact_against_the_numpy_reference(native: build.NativeLibrary, m: int, k: int, n: int) -> None:
    """M across row-block edges (MR 4 or 8, chunks), K not a multiple of 4, N across partial panels."""
    for bias in (True, False):
        x, w, b = _data(m, k, n, seed=m * 1000 + k + n, bias=bias)
        got = _run(native, x, w, b)
        np.testing.assert_array_equal(got, reference(x, w, b))


def test_a_row_does_not_depend_on_the_batch_or_threads(native: build.NativeLibrary) -> None:
    x, w, b = _data(33, 200, 100, seed=3)
    full = _run(native, x, w, b, threads=2)
    for i in (0, 5, 32):
        np.testing.assert_array_equal(_run(native, x[i : i + 1], w, b, threads=1)[0], full[i])
    np.testing.assert_array_equal(_run(native, x[7:20], w, b, threads=1), full[7:20])


def _runnable_isas(least: int = 2) -> tuple[str, ...]:
    """The kernel ISAs this CPU (description) runs; skips the test when fewer than `least` do, since with one
    ISA a cross-ISA comparison would only compare a library with itself."""
    isas = read_cpu().kernel_isas
    if len(isas) < least:
        pytest.skip(f"cross-ISA check needs {least} kernel ISAs, this CPU runs {len(isas)}: {isas}")
    return isas


def test_every_isa_gives_the_same_bits() -> None:
    cpu = read_cpu()
    x, w, b = _data(11, 300, 70, seed=5)
    results = {isa: _run(build.load(isa, cpu), x, w, b) for isa in _runnable_isas()}
    first_isa, first = next(iter(results.items()))
    for isa, got in results.items():
        np.testing.assert_array_equal(got, first, err_msg=f"{isa} vs {first_isa}")


def test_zero_rows_and_extremes(native: build.NativeLibrary) -> None:
    x, w, b = _data(5, 64, 40, seed=9)
    x[1] = 0.0  # a zero activation row: scale 0, output = bias
    w[3] = 0.0  # a zero weight row
    x[2, 0] = 1e6  # one huge value: every other entry of the row quantizes to ~0
    got = _run(native, x, w, b)
    np.testing.assert_array_equal(got, reference(x, w, b))
    np.testing.assert_array_equal(got[1], b)


def test_pack_layout() -> None:
    q, d, mn = quantize_u8(np.arange(-60, 60, dtype=np.float32).reshape(4, 30))  # K 30 -> one block of 32
    assert q.shape == (4, 32) and q[:, :30].max() == 255 and q[:, :30].min() == 0
    packed = pack_u8_pair_panels(q, d, mn, nr=8, half=False)  # 1 panel, 1 block: 16 pairs x 8 lanes, d, m
    assert packed.dtype == np.uint8 and packed.shape == (16 * 8 * 2 + 2 * 8 * 4,)
    pairs = packed[: 16 * 8 * 2].view(np.int16).reshape(16, 8)
    lane = pairs[4, 1].tobytes()  # column 1, k = 8, 9
    assert list(np.frombuffer(lane, np.uint8)) == list(q[1, 8:10])
    assert not pairs[:, 4:].any()  # columns 4..7: padding
    tables = packed[16 * 8 * 2 :].view(np.float32).reshape(2, 8)
    assert np.array_equal(tables[0, :4], d[:, 0]) and np.array_equal(tables[1, :4], mn[:, 0])
    assert not tables[:, 4:].any()


def test_q8_0_blocks_convert_exactly() -> None:
    rng = np.random.default_rng(1)
    q8 = rng.integers(-128, 128, (3, 64)).astype(np.int8)
    d = rng.random((3, 2)).astype(np.float32)
    q, d2, mn = q8_0_as_u8(BlockQuantized("q8_0", q8, d, None))
    restored = q.astype(np.float64) * np.repeat(d2, 32, axis=1) + np.repeat(mn, 32, axis=1)
    assert np.array_equal(restored, q8.astype(np.float64) * np.repeat(d, 32, axis=1))


def test_a_q4_grid_is_exact_in_wint8() -> None:
    """Weights on a Q4_1 grid (the default model's) keep their values: 17 u8 steps per nibble step."""
    rng = np.random.default_rng(2)
    q4 = rng.integers(0, 16, (5, 64)).astype(np.float32)
    q4[:, 0], q4[:, 32], q4[:, 1], q4[:, 33] = 0, 0, 15, 15  # each block spans the whole grid
    w = (q4 * np.float32(0.013) - np.float32(0.07)).astype(np.float32)
    q, d, mn = quantize_u8(w)
    assert np.array_equal(q.astype(np.int64), (q4 * 17).astype(np.int64))


def test_int8_is_close_to_fp32_and_the_paddle_reference() -> None:
    """Quantization error stays small, and the Paddle-ops reference computes the same math (it rounds
    half away from zero, NumPy half to even: ties may differ by one step)."""
    x, w, b = _data(6, 256, 64, seed=11)
    exact = x @ w.T + b
    ref = reference(x, w, b)
    rel = np.abs(ref - exact).max() / np.abs(exact).max()
    assert rel < 0.01, rel  # 8-bit weights with a minimum, int16 activations (int8 ones gave ~3 %)
    paddle_y = PaddleInt8Gemm().weight(w, b)(paddle.to_tensor(x)).numpy()
    np.testing.assert_allclose(paddle_y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


# ------------------------------------------------------------------ wint4 (GGUF Q4_1's math)
def reference_w4(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """wint4: nibbles with a minimum, int8 activations."""
    return _reference(x, *quantize_q4(w), X8, bias)


def _run4(native: build.NativeLibrary, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, threads: int = 2):
    return Int4Gemm(native, threads).weight(w, b)(paddle.to_tensor(x)).numpy()


W4_SHAPES = [(1, 576, 1536), (3, 5, 7), (9, 63, 33), (17, 130, 47), (70, 256, 40)]


@pytest.mark.parametrize(("m", "k", "n"), W4_SHAPES)
def test_w4_bit_exact_against_the_numpy_reference(native: build.NativeLibrary, m: int, k: int, n: int):
    for bias in (True, False):
        x, w, b = _data(m, k, n, seed=m * 7 + k + n, bias=bias)
        np.testing.assert_array_equal(_run4(native, x, w, b), reference_w4(x, w, b))


def test_w4_rows_are_batch_and_thread_invariant(native: build.NativeLibrary) -> None:
    x, w, b = _data(21, 160, 90, seed=13)
    full = _run4(native, x, w, b)
    for i in (0, 9, 20):
        np.testing.assert_array_equal(_run4(native, x[i : i + 1], w, b, threads=1)[0], full[i])


def test_w4_isas_agree(native: build.NativeLibrary) -> None:
    """This ISA against another one the CPU runs: the best, or for the best itself the next best."""
    other = next(isa for isa in _runnable_isas() if isa != native.isa)
    x, w, b = _data(21, 160, 90, seed=13)
    theirs = _run4(build.load(other, read_cpu()), x, w, b)
    np.testing.assert_array_equal(theirs, _run4(native, x, w, b), err_msg=f"{other} vs {native.isa}")


def test_q4_quantization_and_packing() -> None:
    w = np.linspace(-1, 2, 40, dtype=np.float32).reshape(1, 40)
    q, d, mn = quantize_q4(w)
    assert q.shape == (1, 64) and d.shape == mn.shape == (1, 2)
    assert tables_fp16(d, mn)  # GGUF Q4_1's d and m are fp16 values
    restored = q[:, :40] * np.repeat(d, 32)[:40] + np.repeat(mn, 32)[:40]
    assert q.max() <= 15 and np.abs(restored - w).max() <= d.max() / 2 + 1e-3
    packed = pack_q4_panels(q, d, mn, nr=8, half=True)  # 1 panel, 2 blocks of 4 octets x 8 lanes, d, m (fp16)
    block = 4 * 8 * 4 + 2 * 8 * 2
    assert packed.dtype == np.uint8 and packed.shape == (2 * block,)
    lanes = packed[block : block + 4 * 8 * 4].view(np.int32).reshape(4, 8)  # the second block
    lane = np.frombuffer(lanes[1, 0].tobytes(), np.uint8)  # column 0, k = 32 + 8..15
    assert list(lane & 15) == list(q[0, 40:44]) and list(lane >> 4) == list(q[0, 44:48])
    assert not lanes[:, 1:].any()
    tables = packed[block + 4 * 8 * 4 : 2 * block].view(np.float16).reshape(2, 8).astype(np.float32)
    assert tables[0, 0] == d[0, 1] and tables[1, 0] == mn[0, 1] and not tables[:, 1:].any()


@pytest.mark.parametrize("kind", ["q4_1", "q8_0"])
def test_tables_are_fp16_when_exact_else_fp32(native: build.NativeLibrary, kind: str) -> None:
    """The kernels read a block's d and m as fp16 when every value is one (GGUF blocks as stored: the wint4
    layers and the Q8_0 head of the default model), else as fp32 (wint8 re-quantized; blocks scaled by a
    factor that is not a power of two): the same values, so the same bits as the reference either way."""
    rng = np.random.default_rng(23)
    n, k = 37, 96
    d = rng.uniform(0.001, 0.02, (n, k // BLOCK)).astype(np.float16).astype(np.float32)
    if kind == "q4_1":
        q = rng.integers(0, 16, (n, k)).astype(np.uint8)
        mn = rng.uniform(-0.2, 0.0, d.shape).astype(np.float16).astype(np.float32)
        blocks = BlockQuantized(kind, q, d, mn)
        qx, uq, ud, um = X8, q, d, mn
    else:
        q8 = rng.integers(-128, 128, (n, k)).astype(np.int8)
        blocks = BlockQuantized(kind, q8, d, None)
        qx, (uq, ud, um) = X16, q8_0_as_u8(blocks)
    x = rng.standard_normal((3, k)).astype(np.float32)
    gemm = Int4Gemm(native, 2) if kind == "q4_1" else Int8Gemm(native, 2)
    for factor in (np.float32(1), np.float32(0.125), np.float32(0.1)):  # 0.1: d * 0.1 is not fp16
        scaled = blocks.scaled(factor)
        s_d, s_m = (ud * factor).astype(np.float32), (um * factor).astype(np.float32)
        layer = gemm.weight(scaled.dequantize(), None, scaled)
        assert layer.as_stored
        assert bool(layer.flags) == (factor != np.float32(0.1)), factor
        got = layer(paddle.to_tensor(x)).numpy()
        np.testing.assert_array_equal(got, _reference(x, uq, s_d, s_m, qx, None))


def test_w4_paddle_reference_computes_the_same_math() -> None:
    """The Paddle-ops path (--cpu-kernels paddle, GPUs) against the NumPy twin of the kernel (ties round
    half away from zero there, half to even here: a tie may differ by one step)."""
    x, w, b = _data(5, 200, 48, seed=17)
    ref = reference_w4(x, w, b)
    got = PaddleInt4Gemm().weight(w, b)(paddle.to_tensor(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
