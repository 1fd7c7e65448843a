"""The packed GEMM (paddlellm/native/packed_sgemm.c via layers/gemm.py), for every kernel ISA the CPU runs,
against numpy float64, on the shapes that exercise its edges: M across the row blocks (8 on AVX-512, 4 on
AVX2) and 64-row chunks, N across the panels (32 / 24 columns; masked last panel), odd K, bias, 1 and 2
threads; a row's result independent of the rows around it; fp32 results bitwise equal across ISAs.

An ISA the CPU lacks is skipped; a missing compiler is a failure (scripts/setup.sh installs gcc).
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from paddlellm.config import EngineConfig
from paddlellm.cpu import read_cpu
from paddlellm.errors import ConfigError
from paddlellm.layers.gemm import PackedGemm, PaddleGemm, pack_panels
from paddlellm.layers.kernels import select_kernels
from paddlellm.native import build


def _ref(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    y = x.astype(np.float64) @ w.astype(np.float64).T
    return y + b if b is not None else y


SHAPES = [(1, 17, 1), (3, 64, 31), (8, 576, 32), (9, 100, 33), (70, 33, 100), (7, 40, 17), (13, 5, 48)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_float64_reference(
    native: build.NativeLibrary, threads: int, m: int, k: int, n: int, with_bias: bool
) -> None:
    rng = np.random.default_rng(m * 1000 + k + n)
    w = rng.standard_normal((n, k), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32) if with_bias else None
    x = rng.standard_normal((m, k), dtype=np.float32)
    got = PackedGemm(native, threads).weight(w, b)(paddle.to_tensor(x)).numpy()
    assert got.shape == (m, n)
    np.testing.assert_allclose(got, _ref(x, w, b), rtol=1e-5, atol=1e-4 * np.sqrt(k))


def test_a_row_does_not_depend_on_the_batch_or_threads(native: build.NativeLibrary) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((200, 576), dtype=np.float32)
    x = rng.standard_normal((67, 576), dtype=np.float32)
    alone = PackedGemm(native, 1).weight(w)(paddle.to_tensor(x[5:6])).numpy()
    for threads in (1, 2):
        batch = PackedGemm(native, threads).weight(w)(paddle.to_tensor(x)).numpy()
        assert np.array_equal(batch[5:6], alone)  # bitwise: fixed summation order per output


def test_views_and_leading_dims(native: build.NativeLibrary) -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((40, 24), dtype=np.float32)
    x = paddle.to_tensor(rng.standard_normal((2, 6, 24), dtype=np.float32))
    f = PackedGemm(native, 2).weight(w)
    y = f(x)
    assert y.shape == [2, 6, 40]
    want = _ref(x.numpy().reshape(12, 24), w, None).reshape(2, 6, 40)
    np.testing.assert_allclose(y.numpy(), want, atol=1e-4)
    rows = x.reshape([12, 24])[3:7]  # a row view that starts past row 0
    np.testing.assert_allclose(f(rows).numpy(), _ref(rows.numpy(), w, None), atol=1e-4)
    cols = x.reshape([12, 24]).T.T  # non-contiguous strides are copied first
    np.testing.assert_allclose(f(cols).numpy(), _ref(cols.numpy(), w, None), atol=1e-4)
    assert f(paddle.zeros([0, 24])).shape == [0, 40]
    with pytest.raises(ValueError, match="24"):
        f(paddle.zeros([2, 23]))


def test_pack_layout() -> None:
    w = np.arange(33 * 3, dtype=np.float32).reshape(33, 3)  # [out, in]
    p = pack_panels(w, 32)
    assert p.shape == (2, 3, 32)
    assert p[0, 2, 5] == w[5, 2] and p[1, 1, 0] == w[32, 1] and not p[1, :, 1:].any()
    p = pack_panels(w, 24)
    assert p.shape == (2, 3, 24)
    assert p[0, 2, 5] == w[5, 2] and p[1, 1, 8] == w[32, 1] and not p[1, :, 9:].any()


def test_select_kernels_paths() -> None:
    paddle_kernels = select_kernels(EngineConfig(quantization="none", cpu_kernels="paddle"))
    assert isinstance(paddle_kernels.gemm, PaddleGemm)
    assert select_kernels(EngineConfig(quantization="none", device="gpu")).decode_attention is None
    with pytest.raises(ConfigError, match="cpu_kernels"):
        EngineConfig(cpu_kernels="fast")


def test_the_library_says_its_isa_and_panel_width(native: build.NativeLibrary) -> None:
    assert native.isa in native.path.name
    assert native.panel_width == (24 if native.isa == "avx2" else 32)


def test_fp32_results_are_the_same_bits_on_every_isa() -> None:
    """One FMA chain per output in k order, from the bias: the ISA (vector width, panel width, row block)
    changes nothing, so forcing AVX2 on an AVX-512 machine reproduces an AVX2 machine's numbers exactly."""
    cpu = read_cpu()
    if len(cpu.kernel_isas) < 2:
        pytest.skip(f"the CPU runs only {cpu.kernel_isas}")
    rng = np.random.default_rng(7)
    w = rng.standard_normal((100, 577), dtype=np.float32)
    b = rng.standard_normal(100, dtype=np.float32)
    x = paddle.to_tensor(rng.standard_normal((37, 577), dtype=np.float32))
    outs = {isa: PackedGemm(build.load(isa, cpu), 2).weight(w, b)(x).numpy() for isa in cpu.kernel_isas}
    first = outs[cpu.kernel_isas[0]]
    assert all(np.array_equal(first, y) for y in outs.values()), list(outs)


def test_build_is_cached_and_shared(native: build.NativeLibrary) -> None:
    assert build.build(native.isa) == native.path  # the second build finds the first one's library


def test_an_unwritable_cache_falls_back_to_paddle(native, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the cache directory would go
    monkeypatch.setenv(build.CACHE_ENV, str(blocker / "cache"))
    with pytest.raises(build.NativeUnavailable, match="cannot build"):
        build.build(native.isa)
    # auto: Paddle's ops, no crash
    assert select_kernels(EngineConfig(quantization="none")).decode_attention is None
    with pytest.raises(ConfigError, match="cpu_kernels='native'"):
        select_kernels(EngineConfig(quantization="none", cpu_kernels="native"))
    with pytest.raises(ConfigError, match=f"cpu_kernels='{native.isa}'"):
        select_kernels(EngineConfig(quantization="none", cpu_kernels=native.isa))


def _bf16(a: np.ndarray) -> np.ndarray:
    from paddlellm.layers.gemm import to_bf16_bits

    return (to_bf16_bits(a).astype(np.uint32) << 16).view(np.float32)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("m", "k", "n"), [*SHAPES, (3, 1, 5), (130, 7, 64)])
def test_bf16_matches_the_bf16_rounded_reference(native, threads, m, k, n) -> None:  # type: ignore[no-untyped-def]
    """Every ISA: vdpbf16ps on AVX512_BF16, bf16 widened to fp32 in registers on the others."""
    rng = np.random.default_rng(m + 10 * k + 100 * n)
    w = rng.standard_normal((n, k), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    x = rng.standard_normal((m, k), dtype=np.float32)
    got = PackedGemm(native, threads, bf16=True).weight(w, b)(paddle.to_tensor(x)).numpy()
    # The kernel's products are exact in fp32 (bf16 x bf16); only the fp32 summation order differs.
    np.testing.assert_allclose(got, _ref(_bf16(x), _bf16(w), b), rtol=1e-5, atol=1e-4 * np.sqrt(k))
    assert np.abs(got - _ref(x, w, b)).max() < 0.05 * np.sqrt(k)  # and near the fp32 product


def test_bf16_a_row_does_not_depend_on_the_batch_or_threads(native: build.NativeLibrary) -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((70, 301), dtype=np.float32)
    x = rng.standard_normal((67, 301), dtype=np.float32)
    alone = PackedGemm(native, 1, bf16=True).weight(w)(paddle.to_tensor(x[9:10])).numpy()
    for threads in (1, 2):
        batch = PackedGemm(native, threads, bf16=True).weight(w)(paddle.to_tensor(x)).numpy()
        assert np.array_equal(batch[9:10], alone)


def test_bf16_needs_the_native_kernels() -> None:
    with pytest.raises(ConfigError, match="bfloat16"):
        select_kernels(EngineConfig(quantization="none", dtype="bfloat16", cpu_kernels="paddle"))
    with pytest.raises(ConfigError, match="dtype"):
        EngineConfig(dtype="float16")
