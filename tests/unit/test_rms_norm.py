"""RMSNorm with the residual add (layers/norm.py): the native kernel of every ISA the CPU runs and Paddle's
plain ops against float64 numpy, with and without the residual, odd widths (the scalar tail), 3-D and
non-contiguous inputs, 1 and 2 threads, prefill-sized inputs (the threaded path); a row independent of its
batch. Paddle's fused op is checked too where the CPU can run it."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from paddlellm.cpu import PADDLE_FUSED_CPU_FLAGS, read_cpu
from paddlellm.layers.norm import FusedRMSNorm, NativeNorms, PaddleRMSNorm
from paddlellm.native import build


def _ref(x: np.ndarray, r: np.ndarray | None, w: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    s = x.astype(np.float64) + (0 if r is None else r.astype(np.float64))
    return s / np.sqrt((s * s).mean(-1, keepdims=True) + eps) * w, s


def _check(norm, rows: int, n: int, with_residual: bool, seed: int) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n, dtype=np.float32)
    x = rng.standard_normal((rows, n), dtype=np.float32) * 3
    r = rng.standard_normal((rows, n), dtype=np.float32) if with_residual else None
    out, summed = norm(w, 1e-5)(paddle.to_tensor(x), None if r is None else paddle.to_tensor(r))
    want, want_sum = _ref(x, r, w, 1e-5)
    np.testing.assert_allclose(out.numpy(), want, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(summed.numpy(), want_sum, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("rows", "n"), [(1, 576), (7, 64), (3, 37), (2, 5), (300, 576)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_native_matches_float64(native: build.NativeLibrary, threads, rows, n, with_residual) -> None:  # type: ignore[no-untyped-def]
    _check(NativeNorms(native, threads), rows, n, with_residual, rows * 100 + n)


@pytest.mark.parametrize(("rows", "n"), [(1, 576), (3, 37)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_paddle_implementations_match_float64(rows: int, n: int, with_residual: bool) -> None:
    _check(PaddleRMSNorm, rows, n, with_residual, n)


@pytest.mark.parametrize(("rows", "n"), [(1, 576), (3, 37)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_paddle_fused_op_matches_float64(rows: int, n: int, with_residual: bool) -> None:
    cpu = read_cpu()
    if not cpu.paddle_fused_ops_ok:  # its AVX-512 kernel has no runtime check: it would die with SIGILL
        pytest.skip(f"Paddle's fused_rms_norm needs {', '.join(sorted(PADDLE_FUSED_CPU_FLAGS - cpu.flags))}")
    _check(FusedRMSNorm, rows, n, with_residual, n)


def test_shapes_views_and_batch_invariance(native: build.NativeLibrary) -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal(24, dtype=np.float32)
    norm = NativeNorms(native, 2)(w, 1e-6)
    qkv = paddle.to_tensor(rng.standard_normal((5, 6, 24), dtype=np.float32))
    q = qkv[:, :4]  # a per-head norm on a slice, as Qwen3's q_norm
    out, same = norm(q)
    assert out.shape == [5, 4, 24] and same is q
    np.testing.assert_allclose(out.numpy(), _ref(q.numpy(), None, w, 1e-6)[0], rtol=2e-5, atol=2e-5)
    x = rng.standard_normal((67, 24), dtype=np.float32)
    r = rng.standard_normal((67, 24), dtype=np.float32)
    batch = norm(paddle.to_tensor(x), paddle.to_tensor(r))[0].numpy()
    alone = norm(paddle.to_tensor(x[9:10]), paddle.to_tensor(r[9:10]))[0].numpy()
    assert np.array_equal(batch[9:10], alone)
    assert norm(paddle.zeros([0, 24]))[0].shape == [0, 24]
    with pytest.raises(ValueError, match="24"):
        norm(paddle.zeros([2, 23]))
