"""Attention by the C kernel `paged_decode_attention` (paddlellm/native/paged_attention.c): every token's
query heads (a decode's one token, or each token of a prefill chunk, causally) attend to its context rows
read in place from the paged cache, instead of Paddle's gather into a padded [2 * kv_heads, B, L, d] copy +
two batched matmuls + mask + softmax.

Inputs come from `AttentionMetadata` (slot_table [requests, L], token_rows [T], token_lens [T], int64,
built once per step and shared by all layers).
"""

from __future__ import annotations

import paddle
from paddle import _C_ops

from paddlellm.layers.thread_team import ThreadTeam, team_of
from paddlellm.native.build import NativeLibrary


class NativeDecodeAttention:
    def __init__(self, native: NativeLibrary, team: int | ThreadTeam) -> None:
        self._fn = native.lib.paged_decode_attention
        self._team = team_of(team)
        self._place = paddle.CPUPlace()

    def __call__(
        self,
        q: paddle.Tensor,
        cache: paddle.Tensor,
        slots: paddle.Tensor,
        rows: paddle.Tensor | None,
        lens: paddle.Tensor,
        kv_heads: int,
        group: int,
    ) -> paddle.Tensor:
        """q [B, kv_heads * group, d] (pre-scaled) -> [B, kv_heads * group * d]; query b attends to the first
        lens[b] slots of slots[rows[b]] (rows None: row b). The cache is float32 or float16."""
        if not q.is_contiguous():
            q = q.contiguous()
        b, heads, d = q.shape
        num_slots = cache.shape[0] // (2 * kv_heads)
        out = _C_ops.empty([b, heads * d], paddle.float32, self._place)
        rc = self._fn(
            q.data_ptr(),
            cache.data_ptr(),
            num_slots,
            slots.data_ptr(),
            rows.data_ptr() if rows is not None else None,
            lens.data_ptr(),
            b,
            slots.shape[1],
            kv_heads,
            group,
            d,
            out.data_ptr(),
            int(cache.dtype == paddle.float16),
            self._team.size,
        )
        if rc != 0:
            raise MemoryError("paged_decode_attention: no memory for its score buffers")
        return out
