"""Paged attention over a head-major KV cache, in a handful of large Paddle ops.

Cache layout (per layer, K and V in one tensor): [2 * kv_heads * num_slots, head_dim] with slot =
block * block_size + offset; row (j, slot) = j * num_slots + slot, j < kv_heads for K heads, then V heads.
One step:
1. write: scatter the step's new K|V rows at their slots (in place, one op);
2. with the native kernel (layers/decode_attention.py) every token's heads, decode or prefill, attend to its
   context rows in place in the cache (a prefill token's context ends at itself), all in one call, and steps
   3 and the rest of 2 do not apply. Decode requests (one new token each, batched first): gather each
   request's K and V context rows in one op into [2 * kv_heads, B, L, d] (padded to the longest context,
   masked only when lengths differ), then q [kv_heads, B, group, d] attends with one batched matmul per
   side: the query group of a KV head is the matmul's M dimension, so GQA needs no repeated K/V;
3. prefill chunks (several new tokens): each request gathers its context (cached + this chunk, written in
   step 1) and attends causally, in query tiles that read only the keys they can see.
All index and mask tensors are built once per step (AttentionMetadata) and shared by every layer; masks are
materialised at full shape because broadcasting elementwise kernels are slow on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import paddle

from paddlellm.layers.decode_attention import NativeDecodeAttention
from paddlellm.layers.host_tensor import host_tensor

NEG = -1e30  # additive mask; finite, so a padded row can never turn into NaN
TILE_ELEMENTS = 1 << 22  # score elements per prefill tile at most (16 MiB fp32)
QUERY_TILE = 128  # query rows per prefill tile: each tile reads only the keys up to its last query, which
# skips most of the causal mask's dead upper triangle (measured: attention of a 512-token prefill 2x faster)


@dataclass(frozen=True)
class SeqSpan:
    """One request in the step: `num_new` tokens starting at position `start`, addressed by `block_table`."""

    start: int
    num_new: int
    block_table: Sequence[int]


@dataclass(frozen=True)
class PrefillTile:
    q_lo: int  # query rows [q_lo, q_hi) within the request's chunk
    q_hi: int
    keys: int  # context rows this tile can see: start + q_hi
    mask: paddle.Tensor  # [kv_heads, group * (q_hi - q_lo), keys]


@dataclass(frozen=True)
class PrefillMeta:
    token_offset: int  # first row of this request in the step's token batch
    num_tokens: int
    context_len: int
    gather: paddle.Tensor  # [kv_heads * L] cache rows
    tiles: tuple[PrefillTile, ...]


@dataclass(frozen=True)
class AttentionMetadata:
    write_rows: paddle.Tensor  # [T * 2 * kv_heads] cache rows for the step's new K|V, token-major
    num_decode: int
    decode_len: int
    decode_gather: paddle.Tensor | None  # [2 * kv_heads * B * L]
    decode_mask: paddle.Tensor | None  # [kv_heads, B, group, L]; None when every context has length L
    prefills: tuple[PrefillMeta, ...]
    q_sections: tuple[int, ...]  # query rows of the decodes (if any), then of each prefill tile in order
    # With the native kernel every token (decode or prefill) is one query over its request's slots, and the
    # gather / mask / tile fields above stay empty:
    decode_kernel: NativeDecodeAttention | None = None
    slot_table: paddle.Tensor | None = None  # [requests, L] int64 cache slots of each request's context
    token_rows: paddle.Tensor | None = None  # [T] int64: the slot_table row of each token
    token_lens: paddle.Tensor | None = None  # [T] int64: context length each token sees (itself included)
    new_slots: paddle.Tensor | None = None  # [T] int64 cache slot of each new token

    @classmethod
    def build(
        cls,
        spans: Sequence[SeqSpan],
        num_decode: int,
        block_size: int,
        num_slots: int,
        kv_heads: int,
        group: int,
        decode_kernel: NativeDecodeAttention | None = None,
        tensor: Callable[[Any], paddle.Tensor] = host_tensor,
    ) -> AttentionMetadata:
        """spans: the step's requests in batch order, the first `num_decode` with num_new == 1. `tensor`
        turns the step's numpy index arrays into tensors (the runner passes its StepTensors)."""
        head_base = np.arange(2 * kv_heads, dtype=np.int64) * num_slots  # K heads, then V heads

        def slots(span: SeqSpan, lo: int, hi: int) -> np.ndarray:
            pos = np.arange(lo, hi, dtype=np.int64)
            table = np.asarray(span.block_table, dtype=np.int64)
            return table[pos // block_size] * block_size + pos % block_size

        new_slots = np.concatenate([slots(s, s.start, s.start + s.num_new) for s in spans])
        write_rows = (new_slots[:, None] + head_base[None, :]).reshape(-1)
        if decode_kernel is not None:
            return cls._build_native(spans, num_decode, new_slots, write_rows, slots, decode_kernel, tensor)

        decode_gather = decode_mask = None
        decode_len = 0
        if num_decode:
            lens = np.array([s.start + 1 for s in spans[:num_decode]], dtype=np.int64)
            decode_len = int(lens.max())
            ctx = np.zeros((num_decode, decode_len), dtype=np.int64)  # padding reads slot 0 (masked)
            for i, s in enumerate(spans[:num_decode]):
                ctx[i, : lens[i]] = slots(s, 0, int(lens[i]))
            decode_gather = tensor((head_base[:, None, None] + ctx[None]).reshape(-1))
            if lens.min() < decode_len:
                valid = np.arange(decode_len)[None, :] < lens[:, None]
                mask = np.where(valid, 0.0, NEG).astype(np.float32)[None, :, None, :]
                full = np.broadcast_to(mask, (kv_heads, num_decode, group, decode_len))
                decode_mask = tensor(np.ascontiguousarray(full))

        prefills = []
        offset = num_decode
        for s in spans[num_decode:]:
            length = s.start + s.num_new
            gather = tensor((head_base[:, None] + slots(s, 0, length)[None, :]).reshape(-1))
            tile_rows = max(1, min(QUERY_TILE, TILE_ELEMENTS // (kv_heads * group * length)))
            tiles = []
            for lo in range(0, s.num_new, tile_rows):
                hi = min(s.num_new, lo + tile_rows)
                keys = s.start + hi
                qpos = s.start + np.arange(lo, hi)
                allowed = np.arange(keys)[None, :] <= qpos[:, None]
                mask = np.where(allowed, 0.0, NEG).astype(np.float32)
                full = np.broadcast_to(mask[None, None], (kv_heads, group, hi - lo, keys))
                full = np.ascontiguousarray(full).reshape(kv_heads, group * (hi - lo), keys)
                tiles.append(PrefillTile(lo, hi, keys, tensor(full)))
            prefills.append(PrefillMeta(offset, s.num_new, length, gather, tuple(tiles)))
            offset += s.num_new
        sections = ([num_decode] if num_decode else []) + [t.q_hi - t.q_lo for p in prefills for t in p.tiles]
        return cls(
            tensor(write_rows),
            num_decode,
            decode_len,
            decode_gather,
            decode_mask,
            tuple(prefills),
            tuple(sections),
        )

    @classmethod
    def _build_native(
        cls,
        spans: Sequence[SeqSpan],
        num_decode: int,
        new_slots: np.ndarray,
        write_rows: np.ndarray,
        slots: Callable[[SeqSpan, int, int], np.ndarray],
        kernel: NativeDecodeAttention,
        tensor: Callable[[Any], paddle.Tensor],
    ) -> AttentionMetadata:
        """One row of slots per request; token i of a chunk starting at `start` sees start + i + 1 of them."""
        ends = [s.start + s.num_new for s in spans]
        table = np.zeros((len(spans), max(ends)), dtype=np.int64)  # padding is never read (lens)
        for i, (s, end) in enumerate(zip(spans, ends, strict=True)):
            table[i, :end] = slots(s, 0, end)
        rows = np.repeat(np.arange(len(spans), dtype=np.int64), [s.num_new for s in spans])
        lens = np.concatenate([np.arange(s.start + 1, s.start + s.num_new + 1) for s in spans])
        lens = lens.astype(np.int64)
        tensors = [tensor(a) for a in (table, rows, lens, new_slots)]
        return cls(tensor(write_rows), num_decode, 0, None, None, (), (), kernel, *tensors)


def paged_attention(
    q: paddle.Tensor,
    kv: paddle.Tensor | None,
    cache: paddle.Tensor,
    meta: AttentionMetadata,
    kv_heads: int,
    group: int,
) -> paddle.Tensor:
    """q [T, heads, d] (already scaled), kv [T, 2 * kv_heads, d] (K heads then V heads), both contiguous
    -> [T, heads * d].

    Writes kv into the cache first, so every request attends to its own new tokens too (kv None: the caller
    has written them, NativeOps.rope_write)."""
    d = q.shape[-1]
    heads = kv_heads * group
    if kv is not None:
        paddle.scatter_(cache, meta.write_rows, kv.reshape([-1, d]), overwrite=True)
    if meta.decode_kernel is not None:  # every token, decode or prefill, in one call
        table, rows, lens = meta.slot_table, meta.token_rows, meta.token_lens
        assert table is not None and rows is not None and lens is not None  # built with the kernel
        return meta.decode_kernel(q, cache, table, rows, lens, kv_heads, group)
    outs = []
    # One split into the decode rows and each prefill tile's rows: Paddle materialises a transposed view of
    # a slice that starts past row 0 ~10x slower than one of a fresh tensor.
    pieces = iter(paddle.split(q, list(meta.q_sections), axis=0) if len(meta.q_sections) > 1 else [q])
    b = meta.num_decode
    if b:
        length = meta.decode_len
        qd = paddle.transpose(next(pieces).reshape([b, kv_heads, group, d]), [1, 0, 2, 3])
        ctx = paddle.gather(cache, meta.decode_gather).reshape([2 * kv_heads, b, length, d])
        s = paddle.matmul(qd, ctx[:kv_heads], transpose_y=True)
        if meta.decode_mask is not None:
            s = s + meta.decode_mask
        o = paddle.matmul(paddle.nn.functional.softmax(s, axis=-1), ctx[kv_heads:])
        outs.append(paddle.transpose(o, [1, 0, 2, 3]).reshape([b, heads * d]))
    for p in meta.prefills:
        length = p.context_len
        ctx = paddle.gather(cache, p.gather).reshape([2 * kv_heads, length, d])
        kp, vp = ctx[:kv_heads], ctx[kv_heads:]
        for tile in p.tiles:
            n = tile.q_hi - tile.q_lo
            qt = paddle.transpose(next(pieces).reshape([n, kv_heads, group, d]), [1, 2, 0, 3])
            kt, vt = (kp, vp) if tile.keys == length else (kp[:, : tile.keys], vp[:, : tile.keys])
            s = paddle.matmul(qt.reshape([kv_heads, group * n, d]), kt, transpose_y=True) + tile.mask
            o = paddle.matmul(paddle.nn.functional.softmax(s, axis=-1), vt)
            o = paddle.transpose(o.reshape([kv_heads, group, n, d]), [2, 0, 1, 3])
            outs.append(o.reshape([n, heads * d]))
    return outs[0] if len(outs) == 1 else paddle.concat(outs, axis=0)
