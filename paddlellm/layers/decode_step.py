"""The native decoder steps beside the GEMMs (paddlellm/native/decode_step.c), and the fused forward pass.

- `NativeOps`: rotary on q|k plus the K|V cache write in one call (instead of Paddle's multiply, roll,
  multiply, add, split and scatter), and SwiGLU. The layer-by-layer path uses them whenever the native kernels
  run, so it computes exactly what the fused pass computes.
- `FusedDecode`: a step (decodes and prefill chunks alike) through all layers in one native call,
  `decode_layers`: one OpenMP region per step, no Python between the kernels. Built by the model when every
  layer runs on native kernels and nothing needs Python in the middle (one rank: no all-reduce between the
  attention and the MLP; no per-head q/k norm); otherwise, and with `enforce_eager`, the layers run one by
  one. The two paths give the same bits (tests/unit/test_decode_step.py).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass

import paddle
from paddle import _C_ops

from paddlellm.layers.gemm import LinearSpec
from paddlellm.layers.thread_team import ThreadTeam, team_of
from paddlellm.native.build import NativeLibrary


class _Linear(ctypes.Structure):  # pl_linear in decode_step.c
    _fields_ = [
        ("kind", ctypes.c_int32),
        ("flags", ctypes.c_int32),
        ("k", ctypes.c_int64),
        ("n", ctypes.c_int64),
        ("w", ctypes.c_void_p),
        ("t1", ctypes.c_void_p),
        ("t2", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
    ]


class _Layer(ctypes.Structure):  # pl_layer
    _fields_ = [
        ("qkv", _Linear),
        ("o", _Linear),
        ("gate", _Linear),
        ("up", _Linear),
        ("down", _Linear),
        ("in_norm", ctypes.c_void_p),
        ("post_norm", ctypes.c_void_p),
        ("cache", ctypes.c_void_p),
    ]


def _linear(spec: LinearSpec) -> _Linear:
    tables = (spec.w or None, spec.t1 or None, spec.t2 or None, spec.bias or None)
    return _Linear(spec.kind, spec.flags, spec.k, spec.n, *tables)


class NativeOps:
    """The elementwise decoder steps of one loaded library."""

    def __init__(self, native: NativeLibrary, team: int | ThreadTeam) -> None:
        self._rope = native.lib.rotary_cache_write
        self._swiglu = native.lib.swiglu
        self._team = team_of(team)
        self._place = paddle.CPUPlace()

    def rope_write(
        self,
        qkv: paddle.Tensor,
        cache: paddle.Tensor,
        heads: int,
        kv_heads: int,
        cos: paddle.Tensor,
        sin: paddle.Tensor,
        new_slots: paddle.Tensor,
    ) -> None:
        """qkv [T, (heads + 2 * kv_heads) * d] (contiguous, rotated in place: q and k heads); its K|V heads go
        to the cache at the tokens' slots (rounded to fp16 for a float16 cache). cos / sin: [T, d] (signed
        sin, rotary.py)."""
        t, d = qkv.shape[0], cos.shape[-1]
        num_slots = cache.shape[0] // (2 * kv_heads)
        rc = self._rope(
            qkv.data_ptr(), t, heads + kv_heads, 2 * kv_heads, d, cos.data_ptr(), sin.data_ptr(),
            cache.data_ptr(), num_slots, new_slots.data_ptr(), int(cache.dtype == paddle.float16),
            self._team.size,
        )
        if rc != 0:
            raise ValueError(f"rotary_cache_write: head_dim {d} is not even or above 512")

    def swiglu(self, gate: paddle.Tensor, up: paddle.Tensor) -> paddle.Tensor:
        """silu(gate) * up, both [rows, n] contiguous."""
        rows, n = gate.shape
        out = _C_ops.empty([rows, n], paddle.float32, self._place)
        if rows:
            self._swiglu(gate.data_ptr(), up.data_ptr(), out.data_ptr(), rows, n, self._team.size)
        return out


@dataclass(frozen=True)
class LayerSpec:
    """One decoder layer for the fused pass: its five linear layers and the two norms' weight addresses."""

    qkv: LinearSpec
    o: LinearSpec
    gate: LinearSpec
    up: LinearSpec
    down: LinearSpec
    in_norm: int
    post_norm: int


@dataclass(frozen=True)
class DecodeShape:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    final_norm: int  # the final RMSNorm's weight address


class FusedDecode:
    """All layers of a step in one native call (decode_layers)."""

    def __init__(
        self, native: NativeLibrary, team: int | ThreadTeam, layers: Sequence[LayerSpec], shape: DecodeShape
    ) -> None:
        self._fn = native.lib.decode_layers
        self._team = team_of(team)
        self._shape = shape
        self._specs = list(layers)
        self._place = paddle.CPUPlace()
        if native.lib.decode_layer_struct_size() != ctypes.sizeof(_Layer):
            raise RuntimeError("decode_step.c's pl_layer does not match layers/decode_step.py's _Layer")
        self._layers = (_Layer * len(self._specs))()
        self._caches: tuple[int, ...] = ()

    def _bind(self, caches: Sequence[paddle.Tensor]) -> None:
        """The per-layer structs, with the KV caches' addresses (fixed once the runner allocated them)."""
        ptrs = tuple(c.data_ptr() for c in caches)
        if ptrs == self._caches:
            return
        for i, (spec, cache) in enumerate(zip(self._specs, ptrs, strict=True)):
            self._layers[i] = _Layer(
                _linear(spec.qkv), _linear(spec.o), _linear(spec.gate), _linear(spec.up), _linear(spec.down),
                spec.in_norm, spec.post_norm, cache,
            )
        self._caches = ptrs

    def __call__(
        self,
        x: paddle.Tensor,
        cos: paddle.Tensor,
        sin: paddle.Tensor,
        new_slots: paddle.Tensor,
        slots: paddle.Tensor,
        rows: paddle.Tensor,
        lens: paddle.Tensor,
        caches: Sequence[paddle.Tensor],
    ) -> paddle.Tensor:
        """x [T, hidden] embeddings of the step's tokens -> the final norm's output [T, hidden]; writes each
        layer's K|V rows. cos / sin [T, head_dim]; new_slots [T], slots [requests, L], rows [T], lens [T]
        (AttentionMetadata)."""
        s = self._shape
        self._bind(caches)
        if not x.is_contiguous():
            x = x.contiguous()
        b = x.shape[0]
        out = _C_ops.empty([b, s.hidden], paddle.float32, self._place)
        num_slots = caches[0].shape[0] // (2 * s.kv_heads)
        rc = self._fn(
            self._layers, len(self._specs), x.data_ptr(), b, s.hidden, cos.data_ptr(), sin.data_ptr(),
            new_slots.data_ptr(), slots.data_ptr(), rows.data_ptr(), lens.data_ptr(), slots.shape[1], s.heads,
            s.kv_heads,
            s.head_dim, num_slots, s.eps, s.final_norm, out.data_ptr(),
            int(caches[0].dtype == paddle.float16), self._team.size,
        )
        if rc == -1:
            raise MemoryError("decode_layers: no memory for its activation buffers")
        if rc != 0:
            raise ValueError("decode_layers: the layers' shapes do not form a decoder it can run")
        return out
