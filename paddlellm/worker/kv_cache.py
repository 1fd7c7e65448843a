"""KVCache: the paged K/V tensors of one rank, head-major and contiguous per layer.

Per layer, one tensor [2 * kv_heads * num_blocks * block_size, head_dim]: row j * num_slots + slot holds K
head j (j < kv_heads) or V head j - kv_heads of token slot `slot = block * block_size + offset`. One scatter
writes a step's K and V; one gather of rows reshapes, without a transpose, into the [2 * kv_heads, batch,
len, d] operands of the attention matmuls. Zero-initialised, so padded reads are always finite.
"""

from __future__ import annotations

import paddle


class KVCache:
    def __init__(
        self, num_layers: int, kv_heads: int, head_dim: int, num_blocks: int, block_size: int
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_slots = num_blocks * block_size
        self.kv_heads = kv_heads
        rows = 2 * kv_heads * self.num_slots
        self.layers: list[paddle.Tensor] = [
            paddle.zeros([rows, head_dim], dtype="float32") for _ in range(num_layers)
        ]

