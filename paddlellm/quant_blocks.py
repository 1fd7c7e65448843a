"""Block-quantized weights as a GGUF file stores them: Q8_0, Q4_0 and Q4_1, blocks of 32 along the input
dimension, one scale (and for Q4_1 a minimum) per row and block.

`BlockQuantized` holds them unpacked (one value per weight, scales in fp32, exact from the file's fp16) so the
kernels can run the very weights llama.cpp runs, with no second rounding: `q8_0` is --quantization wint8's
format (w = d * q), `q4_0` and `q4_1` are wint4's (w = d * q + m; Q4_0's m is -8 d, exact).
`read_gguf_blocks` parses a GGUF tensor's raw bytes; the GGUF converter stores the result beside the fp32
weights (`BLOCKS_FILE`), and `load_blocks` reads it back. Pure numpy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

BLOCK = 32
BLOCKS_FILE = os.path.join("gguf_blocks", "blocks.safetensors")  # a subdirectory: not a *.safetensors weight
KINDS = ("q8_0", "q4_0", "q4_1")
WINT = {"q8_0": "wint8", "q4_0": "wint4", "q4_1": "wint4"}  # the --quantization that runs each as is


@dataclass(frozen=True)
class BlockQuantized:
    kind: str  # one of KINDS
    q: np.ndarray  # [N, K] int8 (q8_0) or uint8 nibble values 0..15 (q4_*)
    d: np.ndarray  # [N, K / 32] float32
    m: np.ndarray | None  # [N, K / 32] float32 (q4_*), None for q8_0

    def dequantize(self) -> np.ndarray:
        """The fp32 weights the file means (what gguf's own dequantize gives): d * q (+ m)."""
        d = np.repeat(self.d, BLOCK, axis=1)
        w = d * self.q.astype(np.float32)
        return w + np.repeat(self.m, BLOCK, axis=1) if self.m is not None else w

    def rows(self, lo: int, hi: int) -> BlockQuantized:
        m = self.m[lo:hi] if self.m is not None else None
        return BlockQuantized(self.kind, self.q[lo:hi], self.d[lo:hi], m)

    def cols(self, lo: int, hi: int) -> BlockQuantized | None:
        """Input features [lo, hi), or None when the window does not fall on block boundaries."""
        if lo % BLOCK or hi % BLOCK:
            return None
        m = self.m[:, lo // BLOCK : hi // BLOCK] if self.m is not None else None
        return BlockQuantized(self.kind, self.q[:, lo:hi], self.d[:, lo // BLOCK : hi // BLOCK], m)

    def scaled(self, factor: np.float32) -> BlockQuantized:
        """factor * the weights: d and m scaled (exact for a power of two, e.g. 1 / sqrt(64))."""
        m = self.m * factor if self.m is not None else None
        return BlockQuantized(self.kind, self.q, self.d * factor, m)

    def permute_rows(self, order: np.ndarray) -> BlockQuantized:
        m = self.m[order] if self.m is not None else None
        return BlockQuantized(self.kind, self.q[order], self.d[order], m)

    @staticmethod
    def concat(parts: list[BlockQuantized]) -> BlockQuantized | None:
        """Parts stacked along the output rows (fused q|k|v, gate|up); None unless all share one kind."""
        if not parts or len({p.kind for p in parts}) != 1:
            return None
        m = np.concatenate([p.m for p in parts]) if parts[0].m is not None else None  # type: ignore[misc]
        return BlockQuantized(parts[0].kind, np.concatenate([p.q for p in parts]),
                              np.concatenate([p.d for p in parts]), m)


# GGUF block sizes in bytes: fp16 d [, fp16 m], then the quants.
_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20}


def read_gguf_blocks(kind: str, data: np.ndarray, rows: int, cols: int) -> BlockQuantized:
    """Parse a GGUF tensor's bytes (`GGUFReader` tensor `.data`, uint8 [rows, bytes per row])."""
    if cols % BLOCK:
        raise ValueError(f"{kind}: {cols} columns is not a whole number of blocks")
    kb = cols // BLOCK
    raw = np.ascontiguousarray(data, dtype=np.uint8).reshape(rows, kb, _BYTES[kind])
    d = raw[:, :, 0:2].copy().view(np.float16)[:, :, 0].astype(np.float32)
    if kind == "q8_0":
        return BlockQuantized(kind, raw[:, :, 2:].copy().view(np.int8).reshape(rows, cols), d, None)
    start = 4 if kind == "q4_1" else 2
    qs = raw[:, :, start : start + 16]
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=2)  # element j: low nibble of byte j, j + 16: high
    if kind == "q4_1":
        m = raw[:, :, 2:4].copy().view(np.float16)[:, :, 0].astype(np.float32)
    else:
        m = d * np.float32(-8)
    return BlockQuantized(kind, nibbles.reshape(rows, cols).astype(np.uint8), d, m)


def save_blocks(path: str, blocks: dict[str, BlockQuantized]) -> None:
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray] = {}
    for name, b in blocks.items():
        tensors[f"{name}::q"] = np.ascontiguousarray(b.q)
        tensors[f"{name}::d"] = np.ascontiguousarray(b.d)
        if b.m is not None:
            tensors[f"{name}::m"] = np.ascontiguousarray(b.m)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(tensors, path, metadata={name: b.kind for name, b in blocks.items()})


def resolved_quantization(quantization: str, dtype: str, checkpoint: str) -> str:
    """The --quantization a run uses: `auto` becomes the checkpoint's stored format, or 'none' under an
    explicit --dtype bfloat16 (bf16 weights asked for: the stored blocks are not used then)."""
    if quantization != "auto":
        return quantization
    return stored_quantization(checkpoint) if dtype == "float32" else "none"


def stored_quantization(checkpoint: str) -> str:
    """--quantization auto: the format that runs a converted GGUF's own blocks (wint4 when it has Q4_0/Q4_1
    tensors, wint8 when only Q8_0), or 'none' for a checkpoint without them."""
    formats = {WINT[kind] for kind in BlockStore(checkpoint).kinds.values()}
    return "wint4" if "wint4" in formats else ("wint8" if formats else "none")


class BlockStore:
    """The blocks a converted GGUF checkpoint keeps beside its fp32 weights (read lazily, per tensor)."""

    def __init__(self, checkpoint: str) -> None:
        from safetensors import safe_open

        path = os.path.join(checkpoint, BLOCKS_FILE)
        self._handle = safe_open(path, framework="np") if os.path.isfile(path) else None
        self.kinds: dict[str, str] = dict(self._handle.metadata() or {}) if self._handle else {}

    def get(self, name: str) -> BlockQuantized | None:
        kind = self.kinds.get(name)
        if kind is None or self._handle is None:
            return None
        get = self._handle.get_tensor
        m = get(f"{name}::m") if kind != "q8_0" else None
        return BlockQuantized(kind, get(f"{name}::q"), get(f"{name}::d"), m)
