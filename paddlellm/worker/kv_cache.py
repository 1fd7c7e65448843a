"""KVCache: the paged K/V tensors of one rank, head-major and contiguous per layer.

Per layer, one tensor [2 * kv_heads * num_blocks * block_size, head_dim] (float32, or float16:
kv_cache_dtype.py): row j * num_slots + slot holds K
head j (j < kv_heads) or V head j - kv_heads of token slot `slot = block * block_size + offset`. One scatter
writes a step's K and V; one gather of rows reshapes, without a transpose, into the [2 * kv_heads, batch,
len, d] operands of the attention matmuls. Zero-initialised, so padded reads are always finite.

`copy_rows` serves prefix caching's partial hits: a token's K/V rows are the same bits wherever its request
computed them (the kernels are batch-invariant), so copying them equals computing them.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np
import paddle

from paddlellm.step_types import BlockCopy


class KVCache:
    def __init__(
        self,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        num_blocks: int,
        block_size: int,
        dtype: str = "float32",
    ) -> None:
        """`dtype`: float32, or float16 (written and read by the native kernels only, kv_cache_dtype.py)."""
        self.dtype = dtype
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_slots = num_blocks * block_size
        self.kv_heads = kv_heads
        rows = 2 * kv_heads * self.num_slots
        self.layers: list[paddle.Tensor] = [
            paddle.zeros([rows, head_dim], dtype=dtype) for _ in range(num_layers)
        ]

    def copy_rows(self, copies: Sequence[BlockCopy]) -> None:
        """For each copy, the first `rows` token slots of block `src` -> block `dst`, K and V of every head
        and layer, in place (a NumPy view of each layer's memory: one strided copy per layer and copy)."""
        if not copies:
            return
        np_dtype = np.float16 if self.dtype == "float16" else np.float32
        for layer in self.layers:
            d = layer.shape[1]
            size = layer.shape[0] * d * np.dtype(np_dtype).itemsize
            buf = (ctypes.c_char * size).from_address(layer.data_ptr())
            view = np.frombuffer(buf, dtype=np_dtype)
            view = view.reshape(2 * self.kv_heads, self.num_blocks, self.block_size, d)
            for c in copies:  # a few per step (admissions with a partial hit)
                view[:, c.dst, : c.rows] = view[:, c.src, : c.rows]
