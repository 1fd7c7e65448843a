"""Qwen2.5-VL's vision tower: ViT with 2-D rotary and window attention, then the patch merger. fp32, plain
Paddle ops (it runs once per image, at prefill; nothing here is on the decode path).

Algorithm, for the images of one call (several images of different sizes; attention never crosses images):
1. patch embedding: the checkpoint's Conv3d with stride = kernel is a matmul of each patch's flattened
   (C, T, P, P) pixels (the processor's row layout) with the kernel reshaped to [hidden, C*T*P*P];
2. order: rows arrive merge-block-major (each m x m block of patches consecutive, m = spatial merge size).
   Blocks are regrouped window by window (windows of window_size pixels, row-major over each image's merged
   grid, edge windows smaller), so every window is one contiguous run of rows;
3. 2-D rotary: the first half of each head's frequencies rotate by the patch's row, the second by its column
   (d/4 frequencies each, half-split layout), with the rows' positions permuted alike;
4. blocks: x += attn(RMSNorm(x)); x += SwiGLU-MLP(RMSNorm(x)), with attention inside each window, except the
   `fullatt_block_indexes` layers, which attend over each whole image (per frame). Segments of different
   lengths are padded to the longest and masked, so each layer is one batched matmul per side;
5. merger: RMSNorm, each block's m*m rows concatenated, Linear-GELU-Linear to the text model's hidden size,
   then the blocks put back in the processor's (row-major) order.
Output: [sum of t*H*W/m^2 over the images, out_hidden], images in call order; `split` cuts it per image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import paddle

from paddlellm.layers.gemm import PaddleGemm
from paddlellm.layers.host_tensor import host_tensor
from paddlellm.layers.norm import PaddleRMSNorm
from paddlellm.vision.vl_config import VisionTowerConfig
from paddlellm.weight_reader import WeightReader

NEG = -1e30  # additive mask for padded keys: finite, so a padded query row never turns into NaN
Grid = tuple[int, int, int]


@dataclass(frozen=True)
class Segments:
    """Variable-length attention segments over N rows, padded to [S, L]."""

    gather: paddle.Tensor  # [S * L] row of each padded slot (padding reads row 0)
    mask: paddle.Tensor | None  # [S, 1, 1, L] additive; None when every segment has length L
    valid: paddle.Tensor | None  # [N] padded slot of each row, in row order; None without padding
    count: int
    length: int

    @classmethod
    def build(cls, lengths: Sequence[int], tensor: Callable[[Any], paddle.Tensor]) -> Segments:
        lengths = [n for n in lengths if n > 0]
        longest = max(lengths)
        starts = np.cumsum([0, *lengths[:-1]])
        slot = np.arange(longest)[None, :]
        inside = slot < np.asarray(lengths)[:, None]  # [S, L]
        gather = np.where(inside, starts[:, None] + slot, 0).reshape(-1).astype(np.int64)
        if inside.all():
            return cls(tensor(gather), None, None, len(lengths), longest)
        mask = np.where(inside, 0.0, NEG).astype(np.float32)[:, None, None, :]
        valid = np.flatnonzero(inside.reshape(-1)).astype(np.int64)
        return cls(tensor(gather), tensor(mask), tensor(valid), len(lengths), longest)


class VisionBlock:
    def __init__(self, cfg: VisionTowerConfig, reader: WeightReader, prefix: str) -> None:
        gemm = PaddleGemm()

        def linear(name: str):  # noqa: ANN202 - a GemmWeight
            return gemm.weight(reader.get(f"{prefix}.{name}.weight"), reader.get(f"{prefix}.{name}.bias"))

        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.norm1 = PaddleRMSNorm(reader.get(f"{prefix}.norm1.weight"), cfg.norm_eps)
        self.norm2 = PaddleRMSNorm(reader.get(f"{prefix}.norm2.weight"), cfg.norm_eps)
        # the softmax scale folded into the q rows of the fused qkv weight and bias
        w, b = reader.get(f"{prefix}.attn.qkv.weight"), reader.get(f"{prefix}.attn.qkv.bias")
        scale = np.float32(self.head_dim**-0.5)
        w[: cfg.hidden_size] *= scale
        b[: cfg.hidden_size] *= scale
        self.qkv = gemm.weight(w, b)
        self.proj = linear("attn.proj")
        self.gate, self.up, self.down = (
            linear("mlp.gate_proj"),
            linear("mlp.up_proj"),
            linear("mlp.down_proj"),
        )

    def __call__(
        self, x: paddle.Tensor, cos: paddle.Tensor, sin: paddle.Tensor, seg: Segments
    ) -> paddle.Tensor:
        n, h, d = x.shape[0], self.heads, self.head_dim
        qkv = self.qkv(self.norm1(x)[0]).reshape([n, 3 * h, d])
        q, k, v = paddle.split(qkv, 3, axis=1)
        q = q * cos + paddle.roll(q, d // 2, axis=2) * sin
        k = k * cos + paddle.roll(k, d // 2, axis=2) * sin

        def padded(t: paddle.Tensor) -> paddle.Tensor:  # [N, h, d] -> [S, h, L, d]
            t = paddle.gather(t, seg.gather).reshape([seg.count, seg.length, h, d])
            return paddle.transpose(t, [0, 2, 1, 3])

        scores = paddle.matmul(padded(q), padded(k), transpose_y=True)
        if seg.mask is not None:
            scores = scores + seg.mask
        o = paddle.matmul(paddle.nn.functional.softmax(scores, axis=-1), padded(v))
        o = paddle.transpose(o, [0, 2, 1, 3]).reshape([seg.count * seg.length, h * d])
        if seg.valid is not None:
            o = paddle.gather(o, seg.valid)
        x = x + self.proj(o)
        hidden = self.norm2(x)[0]
        return x + self.down(paddle.nn.functional.silu(self.gate(hidden)) * self.up(hidden))


class Qwen2_5_VisionTower:
    def __init__(self, cfg: VisionTowerConfig, reader: WeightReader, prefix: str = "visual") -> None:
        self.cfg = cfg
        gemm = PaddleGemm()
        patch = reader.get(f"{prefix}.patch_embed.proj.weight")  # [hidden, C, T, P, P]
        self.patch_embed = gemm.weight(patch.reshape(cfg.hidden_size, -1))
        self.blocks = [VisionBlock(cfg, reader, f"{prefix}.blocks.{i}") for i in range(cfg.depth)]
        m = f"{prefix}.merger"
        self.ln_q = PaddleRMSNorm(reader.get(f"{m}.ln_q.weight"), cfg.norm_eps)
        self.mlp0 = gemm.weight(reader.get(f"{m}.mlp.0.weight"), reader.get(f"{m}.mlp.0.bias"))
        self.mlp2 = gemm.weight(reader.get(f"{m}.mlp.2.weight"), reader.get(f"{m}.mlp.2.bias"))
        quarter = cfg.head_dim // 4  # frequencies per axis
        self.inv_freq = (
            1.0 / cfg.rope_theta ** (np.arange(0, 2 * quarter, 2, dtype=np.float32) / (2 * quarter))
        ).astype(np.float32)

    @staticmethod
    def tokens_per_image(grids: Sequence[Grid], merge: int) -> list[int]:
        return [t * h * w // (merge * merge) for t, h, w in grids]

    def split(self, embeds: paddle.Tensor, grids: Sequence[Grid]) -> list[paddle.Tensor]:
        """The call's output cut into one [tokens, out_hidden] tensor per image."""
        return paddle.split(embeds, self.tokens_per_image(grids, self.cfg.spatial_merge_size), axis=0)

    def __call__(
        self,
        pixel_values: np.ndarray,
        grids: Sequence[Grid],
        tensor: Callable[[Any], paddle.Tensor] = host_tensor,
    ) -> paddle.Tensor:
        """pixel_values [sum t*H*W, C*T*P*P] (the processor's rows, images concatenated) -> embeddings.
        `tensor` makes the call's input tensors: the runner passes its StepTensors (host_tensor leaks a
        little per tensor, layers/host_tensor.py)."""
        cfg = self.cfg
        unit = cfg.spatial_merge_size**2
        n = sum(t * h * w for t, h, w in grids)
        if pixel_values.shape != (n, cfg.patch_dim):
            raise ValueError(f"pixel_values {pixel_values.shape} != ({n}, {cfg.patch_dim}) for grids {grids}")
        order, window_lengths = self._window_order(grids)
        rows = (order[:, None] * unit + np.arange(unit)[None, :]).reshape(-1)  # patch rows, window order
        pos = self._patch_positions(grids)[rows]  # [N, 2] (row, col) of each permuted patch
        freqs = pos[:, :, None].astype(np.float32) * self.inv_freq[None, None, :]  # [N, 2, d/4]
        freqs = freqs.reshape(n, -1)  # rows' frequencies, then columns'
        cos = np.cos(np.concatenate([freqs, freqs], axis=1))[:, None, :]
        sin = np.sin(freqs)
        sin = np.concatenate([-sin, sin], axis=1)[:, None, :]  # roll(x, d/2) * this == rotate_half(x) * sin
        windows = Segments.build([k * unit for k in window_lengths], tensor)
        images = Segments.build([h * w for t, h, w in grids for _ in range(t)], tensor)
        heads = cfg.num_heads
        cos_t = tensor(np.ascontiguousarray(np.broadcast_to(cos, (n, heads, cfg.head_dim))))
        sin_t = tensor(np.ascontiguousarray(np.broadcast_to(sin, (n, heads, cfg.head_dim))))
        with paddle.no_grad():
            x = self.patch_embed(tensor(np.ascontiguousarray(pixel_values[rows], dtype=np.float32)))
            for i, block in enumerate(self.blocks):
                x = block(x, cos_t, sin_t, images if i in cfg.fullatt_block_indexes else windows)
            merged = self.ln_q(x)[0].reshape([n // unit, -1])
            merged = self.mlp2(paddle.nn.functional.gelu(self.mlp0(merged), approximate=False))
            return paddle.gather(merged, tensor(np.argsort(order).astype(np.int64)))

    def _patch_positions(self, grids: Sequence[Grid]) -> np.ndarray:
        """[N, 2] (row, column) of each patch row in the processor's merge-block-major order."""
        m = self.cfg.spatial_merge_size
        out = []
        for t, h, w in grids:
            rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
            blocks = [a.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1) for a in (rr, cc)]
            out.append(np.tile(np.stack(blocks, axis=1), (t, 1)))
        return np.concatenate(out)

    def _window_order(self, grids: Sequence[Grid]) -> tuple[np.ndarray, list[int]]:
        """Merged-token indices (over all images) in window order, and each window's merged-token count."""
        cfg = self.cfg
        side = cfg.window_size // cfg.spatial_merge_size // cfg.patch_size  # merged tokens per window side
        order, lengths, base = [], [], 0
        for t, h, w in grids:
            mh, mw = h // cfg.spatial_merge_size, w // cfg.spatial_merge_size
            index = np.arange(t * mh * mw).reshape(t, mh, mw) + base
            for f in range(t):
                for r in range(0, mh, side):
                    for c in range(0, mw, side):
                        win = index[f, r : r + side, c : c + side].reshape(-1)
                        order.append(win)
                        lengths.append(len(win))
            base += t * mh * mw
        return np.concatenate(order), lengths
