"""WeightReader: named tensors straight from a checkpoint's *.safetensors files, as float32 numpy arrays.

Tensor-parallel ranks read only their shard (`rows` / `cols` slices go through safetensors' lazy slicing, so
a rank never materialises a full matrix it does not hold). BF16 has no numpy dtype: such tensors are read
from the file's header offsets through a memory map and widened to float32 by a 16-bit shift.
"""

from __future__ import annotations

import glob
import json
import os
import struct
from typing import Any

import numpy as np
from safetensors import safe_open

from paddlellm.errors import CheckpointError
from paddlellm.quant_blocks import BlockQuantized, BlockStore


class WeightReader:
    def __init__(self, path: str) -> None:
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not files:
            raise CheckpointError(
                os.path.join(path, "*.safetensors"), "(file)", "no safetensors weights found"
            )
        self._where: dict[str, str] = {}
        self._handles: dict[str, Any] = {}
        for file in files:
            handle = safe_open(file, framework="np")
            self._handles[file] = handle
            for name in handle.keys():
                self._where[name] = file
        self._headers: dict[str, dict[str, Any]] = {}
        self.path = path
        self._blocks: BlockStore | None = None

    def blocks(self, name: str) -> BlockQuantized | None:
        """The tensor as the GGUF file stored it (Q8_0 / Q4_0 / Q4_1 blocks), when the checkpoint was
        converted from one and keeps them (paddlellm/quant_blocks.py); else None."""
        if self._blocks is None:
            self._blocks = BlockStore(self.path)
        return self._blocks.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> list[int]:
        return list(self._slice(name).get_shape())

    def get(
        self, name: str, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None
    ) -> np.ndarray:
        """The tensor (or its [rows, cols] window) as contiguous float32."""
        sl = self._slice(name)
        index: tuple[slice, ...] = (slice(*rows) if rows else slice(None),)
        if cols:
            index = index + (slice(*cols),)
        if sl.get_dtype() == "BF16":
            arr = self._bf16(name)[index]
        else:
            arr = sl[index] if (rows or cols) else self._handles[self._where[name]].get_tensor(name)
        return np.ascontiguousarray(arr, dtype=np.float32)

    def _slice(self, name: str) -> Any:
        if name not in self._where:
            raise CheckpointError(name, name, "tensor missing from the checkpoint's safetensors files")
        return self._handles[self._where[name]].get_slice(name)

    def _bf16(self, name: str) -> np.ndarray:
        file = self._where[name]
        header = self._headers.get(file)
        if header is None:
            with open(file, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = {"size": size, "meta": json.loads(f.read(size))}
            self._headers[file] = header
        meta = header["meta"][name]
        start, end = meta["data_offsets"]
        raw = np.memmap(
            file, dtype=np.uint16, mode="r", offset=8 + header["size"] + start, shape=((end - start) // 2,)
        )
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(meta["shape"])
