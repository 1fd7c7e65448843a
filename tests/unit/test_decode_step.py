"""The fused forward pass (decode_layers) against the layer-by-layer native path: the same bits.

Two runners on one checkpoint, one with `enforce_eager`: the same steps (prefill chunks that start at 0 and
that continue a request, decode steps at batch 1 and 3 with contexts of different lengths, a step mixing a
decode with a prefill); the final hidden states must be equal bit for bit at every step, for fp32, bf16, wint8
and wint4 weights, on every kernel ISA the host runs. Also: the fused pass is really taken (and not where it
must not be), and the native rotary + cache write equals Paddle's rotation and scatter.
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from paddlellm.config import EngineConfig
from paddlellm.layers.attention import SeqSpan
from paddlellm.model_info import ModelInfo
from paddlellm.worker.model_runner import ModelRunner
from tests.kernel_choices import model_kernels

pytest.importorskip("transformers", exc_type=ModuleNotFoundError)

NATIVE = [k for k in model_kernels() if k != "paddle"]
pytestmark = pytest.mark.skipif(not NATIVE, reason="no native kernel ISA on this CPU")

WEIGHTS = [("float32", "none"), ("bfloat16", "none"), ("float32", "wint8"), ("float32", "wint4")]


def _runner(path: str, kernels: str, dtype: str, quant: str, eager: bool) -> ModelRunner:
    cfg = EngineConfig(
        model=path, block_size=8, max_model_len=256, num_threads=2, cpu_kernels=kernels, dtype=dtype,
        quantization=quant, enforce_eager=eager,
    )
    return ModelRunner(cfg, ModelInfo.from_dir(path), num_blocks=64)


def _decode_trace(runner: ModelRunner, prompts: list[list[int]], steps: int) -> list[np.ndarray]:
    """Prefill every prompt in one step (the first two prompts' first 4 tokens one step before, so the prefill
    step continues chunks), then `steps` decode steps of all of them (greedy ids fed back), then one step
    mixing a decode with a new prompt's prefill: the final hidden states of every step."""
    tables = [list(range(i * 8, (i + 1) * 8)) for i in range(len(prompts) + 1)]
    out = []
    with paddle.no_grad():
        head = [(p[:4], t) for p, t in zip(prompts[:2], tables, strict=False)]
        spans = [SeqSpan(0, 4, t) for _, t in head]
        ids = np.concatenate([np.asarray(p, np.int64) for p, _ in head])
        out.append(runner._forward(ids, np.concatenate([np.arange(4)] * len(head)), spans, 0).numpy())
        starts = [4 if i < 2 else 0 for i in range(len(prompts))]
        spans = [SeqSpan(s, len(p) - s, t) for s, p, t in zip(starts, prompts, tables, strict=False)]
        ids = np.concatenate([np.asarray(p[s:], np.int64) for s, p in zip(starts, prompts, strict=True)])
        positions = np.concatenate([np.arange(s, len(p)) for s, p in zip(starts, prompts, strict=True)])
        hidden = runner._forward(ids, positions, spans, num_decode=0)
        out.append(hidden.numpy())
        last = np.cumsum([len(p) - s for s, p in zip(starts, prompts, strict=True)]) - 1
        nxt = runner.model.logits(hidden).numpy()[last].argmax(axis=1)
        lengths = [len(p) for p in prompts]
        for _ in range(steps):
            spans = [SeqSpan(n, 1, t) for n, t in zip(lengths, tables, strict=False)]
            ids = nxt.astype(np.int64)
            hidden = runner._forward(ids, np.asarray(lengths), spans, num_decode=len(prompts))
            out.append(hidden.numpy())
            nxt = runner.model.logits(hidden).numpy().argmax(axis=1)
            lengths = [n + 1 for n in lengths]
        # a decode and a new 9-token prompt in one step
        spans = [SeqSpan(lengths[0], 1, tables[0]), SeqSpan(0, 9, tables[-1])]
        ids = np.concatenate([nxt[:1].astype(np.int64), np.asarray(prompts[0][:9], np.int64)])
        out.append(runner._forward(ids, np.concatenate([[lengths[0]], np.arange(9)]), spans, 1).numpy())
    return out


@pytest.mark.parametrize("kernels", NATIVE)
@pytest.mark.parametrize(("dtype", "quant"), WEIGHTS)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # qwen2: q/k/v biases in the fused qkv GEMM
def test_fused_decode_equals_layer_path(
    tiny_checkpoint, arch: str, kernels: str, dtype: str, quant: str
) -> None:
    path = tiny_checkpoint(arch=arch, tokenizer="llama2")
    fused = _runner(path, kernels, dtype, quant, eager=False)
    eager = _runner(path, kernels, dtype, quant, eager=True)
    assert fused.model.fused is not None and eager.model.fused is None
    rng = np.random.RandomState(3)
    vocab = fused.info.vocab_size
    for lengths in ([11], [12, 17, 30]):
        prompts = [rng.randint(3, vocab, n).tolist() for n in lengths]
        a, b = _decode_trace(fused, prompts, 6), _decode_trace(eager, prompts, 6)
        for step, (x, y) in enumerate(zip(a, b, strict=True)):
            assert np.array_equal(x, y), f"{arch} {kernels} {dtype}/{quant} batch {len(lengths)} step {step}"


def test_fused_decode_is_not_built_where_layers_need_python(tiny_checkpoint) -> None:
    """Qwen3's per-head q/k norm runs in Paddle between the kernels: those layers run one by one."""
    path = tiny_checkpoint(arch="qwen3", tokenizer="llama2")
    assert _runner(path, NATIVE[0], "float32", "none", eager=False).model.fused is None


def test_paddle_kernels_have_no_fused_pass(tiny_checkpoint) -> None:
    path = tiny_checkpoint(arch="llama", tokenizer="llama2")
    runner = _runner(path, "paddle", "float32", "none", eager=False)
    assert runner.model.fused is None and not runner.model.native_rope


@pytest.mark.parametrize("kernels", NATIVE)
def test_native_rope_write_equals_paddle_rotation_and_scatter(kernels: str) -> None:
    from paddlellm.cpu import read_cpu
    from paddlellm.layers.decode_step import NativeOps
    from paddlellm.layers.rotary import RotaryTables
    from paddlellm.native.build import load

    heads, kvh, d, slots = 6, 2, 64, 40
    rng = np.random.RandomState(0)
    qkv = rng.standard_normal((5, heads + 2 * kvh, d)).astype(np.float32)
    positions = np.array([0, 3, 7, 8, 31])
    new_slots = np.array([4, 9, 17, 2, 39], np.int64)
    tables = RotaryTables(d, 10000.0, None, 64)
    cos, sin = tables.expand(positions, heads + kvh, kvh)
    want = qkv * cos + np.roll(qkv, d // 2, axis=2) * sin
    want_cache = np.zeros((2 * kvh * slots, d), np.float32)
    for t, s in enumerate(new_slots):
        for j in range(2 * kvh):
            want_cache[j * slots + s] = want[t, heads + j]

    ops = NativeOps(load(kernels, read_cpu()), 2)
    got = paddle.to_tensor(qkv.reshape(5, -1))
    cache = paddle.zeros([2 * kvh * slots, d])
    c, s = tables.rows(positions)
    c, s, slot_t = paddle.to_tensor(c), paddle.to_tensor(s), paddle.to_tensor(new_slots)
    ops.rope_write(got, cache, heads, kvh, c, s, slot_t)
    assert np.array_equal(got.numpy().reshape(qkv.shape), want)
    assert np.array_equal(cache.numpy(), want_cache)


@pytest.mark.parametrize("kernels", NATIVE)
@pytest.mark.parametrize("d", [64, 20])  # 20: a scalar tail after the vector part on every ISA
def test_native_rope_write_rounds_to_a_float16_cache(kernels: str, d: int) -> None:
    """A float16 cache receives each rotated K|V value rounded to nearest, ties to even (numpy's float16
    conversion), vector part and scalar tail alike; q|k rotate as with a float32 cache."""
    from paddlellm.cpu import read_cpu
    from paddlellm.layers.decode_step import NativeOps
    from paddlellm.layers.rotary import RotaryTables
    from paddlellm.native.build import load

    heads, kvh, slots = 4, 2, 16
    rng = np.random.RandomState(1)
    qkv = (rng.standard_normal((3, heads + 2 * kvh, d)) * 3).astype(np.float32)
    positions, new_slots = np.array([0, 5, 9]), np.array([7, 1, 15], np.int64)
    tables = RotaryTables(d, 10000.0, None, 32)
    c, s = (paddle.to_tensor(a) for a in tables.rows(positions))
    ops = NativeOps(load(kernels, read_cpu()), 2)
    caches, rotated = [], []
    for dtype in ("float32", "float16"):
        got = paddle.to_tensor(qkv.reshape(3, -1))
        cache = paddle.zeros([2 * kvh * slots, d], dtype=dtype)
        ops.rope_write(got, cache, heads, kvh, c, s, paddle.to_tensor(new_slots))
        caches.append(cache.numpy())
        rotated.append(got.numpy())
    assert np.array_equal(rotated[0], rotated[1])
    assert caches[1].dtype == np.float16 and np.array_equal(caches[1], caches[0].astype(np.float16))


def test_kv_cache_dtype_follows_the_weights_and_needs_native_kernels(tiny_checkpoint) -> None:
    from paddlellm.errors import ConfigError
    from paddlellm.kv_cache_dtype import resolve_kv_cache_dtype

    assert resolve_kv_cache_dtype("auto", "wint4", native=True) == "float16"
    assert resolve_kv_cache_dtype("auto", "wint8", native=True) == "float16"
    assert resolve_kv_cache_dtype("auto", "none", native=True) == "float32"  # transformers-exact stays fp32
    assert resolve_kv_cache_dtype("auto", "wint4", native=False) == "float32"
    assert resolve_kv_cache_dtype("float32", "wint4", native=True) == "float32"
    assert resolve_kv_cache_dtype("float16", "none", native=True) == "float16"
    with pytest.raises(ConfigError, match="kv_cache_dtype"):
        resolve_kv_cache_dtype("float16", "none", native=False)
    path = tiny_checkpoint(arch="llama", tokenizer="llama2")
    assert _runner(path, NATIVE[0], "float32", "wint4", eager=False).cache.layers[0].dtype == paddle.float16
    assert _runner(path, NATIVE[0], "float32", "none", eager=False).cache.layers[0].dtype == paddle.float32
    with pytest.raises(ConfigError, match="kv_cache_dtype"):
        ModelRunner(
            EngineConfig(model=path, max_model_len=64, cpu_kernels="paddle", kv_cache_dtype="float16"),
            ModelInfo.from_dir(path),
            num_blocks=8,
        )
