"""DecoderModel: the one Paddle implementation of every architecture in paddlellm/model_registry.py.

The architectures differ only in load-time facts, read from the model's ArchSpec (`info.spec`) here so the
forward pass has no branches per model: tensor names come from `spec.weights`; q/k/v and o/MLP biases are
loaded when the checkpoint has them; `spec.qk_norm` adds per-head RMSNorm on q and k; `spec.interleaved_rope`
(rotating adjacent pairs) becomes the half-split convention by permuting each q/k head's rows (q.k is
unchanged when both sides are permuted alike). The softmax scale is folded into the q rows (or the q-norm
weight). Config features the decoder lacks were refused when ModelInfo was read.

Per layer: residual+RMSNorm (one kernel), one qkv matmul, rotary on q|k|v together, paged attention, o matmul,
residual+RMSNorm, gate and up matmuls, swiglu, down matmul. On the native CPU kernels the rotary and the K|V
cache write are one call and a step runs every layer in one native call (`FusedDecode`, unless
`fuse_decode` is off or a layer needs Python in the middle: tensor parallelism's all-reduce, Qwen3's q/k
norm).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import paddle

from paddlellm.cpu import read_cpu
from paddlellm.layers.attention import AttentionMetadata, paged_attention
from paddlellm.layers.decode_step import DecodeShape, FusedDecode, LayerSpec
from paddlellm.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from paddlellm.layers.gemm import NativeLinear
from paddlellm.layers.kernels import Kernels, paddle_kernels
from paddlellm.layers.linear import AllReduce, ColumnParallelLinear, RowParallelLinear, Shard
from paddlellm.layers.norm import NativeRMSNorm
from paddlellm.model_info import ModelInfo
from paddlellm.quant_blocks import BlockQuantized
from paddlellm.weight_reader import WeightReader


class DecoderLayer:
    def __init__(
        self,
        info: ModelInfo,
        reader: WeightReader,
        prefix: str,
        shard: Shard,
        all_reduce: AllReduce | None,
        kernels: Kernels,
    ) -> None:
        gemm, norm = kernels.gemm, kernels.norm
        self.ops = kernels.ops
        d = info.head_dim
        self.head_dim = d
        self.heads = info.num_heads // shard.world
        self.kv_heads = info.num_kv_heads // shard.world
        self.group = self.heads // self.kv_heads
        scale = d**-0.5
        perm = np.concatenate([np.arange(0, d, 2), np.arange(1, d, 2)])
        names = info.spec.weights
        interleaved = info.spec.interleaved_rope
        fold_scale = not info.qk_norm
        q_name, k_name, v_name, o_name = (
            f"{prefix}.{n}" for n in (names.q_proj, names.k_proj, names.v_proj, names.o_proj)
        )

        def fix_qk(name: str, w: np.ndarray, b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
            if name == v_name:
                return w, b
            if interleaved:
                w = w.reshape(-1, d, w.shape[1])[:, perm].reshape(w.shape)
                b = None if b is None else b.reshape(-1, d)[:, perm].reshape(-1)
            if fold_scale and name == q_name:
                w = w * np.float32(scale)
                b = None if b is None else b * np.float32(scale)
            return w, b

        def fix_qk_blocks(name: str, blocks: BlockQuantized) -> BlockQuantized:
            """fix_qk for weights kept as a GGUF file stored them: the same row order and q scale."""
            if name == v_name:
                return blocks
            if interleaved:
                blocks = blocks.permute_rows(np.arange(blocks.q.shape[0]).reshape(-1, d)[:, perm].reshape(-1))
            if fold_scale and name == q_name:
                blocks = blocks.scaled(np.float32(scale))
            return blocks

        qkv = [(q_name, d), (k_name, d), (v_name, d)]
        self.qkv = ColumnParallelLinear.load(reader, qkv, shard, fix_qk, gemm, fix_qk_blocks)
        self.o_proj = RowParallelLinear.load(reader, o_name, d, shard, all_reduce, gemm)
        # gate and up stay two matmuls: with N = 2 * intermediate, MKL's x @ W was ~1.5-2x slower at
        # batch >= 8 than two half-width calls, and equal at batch 1.
        gate, up = f"{prefix}.{names.gate_proj}", f"{prefix}.{names.up_proj}"
        self.gate = ColumnParallelLinear.load(reader, [(gate, 1)], shard, gemm=gemm)
        self.up = ColumnParallelLinear.load(reader, [(up, 1)], shard, gemm=gemm)
        self.down = RowParallelLinear.load(reader, f"{prefix}.{names.down_proj}", 1, shard, all_reduce, gemm)
        eps = info.rms_norm_eps
        self.input_norm = norm(reader.get(f"{prefix}.{names.input_norm}"), eps)
        self.post_norm = norm(reader.get(f"{prefix}.{names.post_norm}"), eps)
        self.q_norm = self.k_norm = None
        if info.qk_norm:
            qw = reader.get(f"{prefix}.{names.q_norm}")
            kw = reader.get(f"{prefix}.{names.k_norm}")
            if interleaved:
                qw, kw = qw[perm], kw[perm]
            self.q_norm = norm(qw * np.float32(scale), eps)
            self.k_norm = norm(kw, eps)

    def __call__(
        self,
        x: paddle.Tensor,
        residual: paddle.Tensor | None,
        cos: paddle.Tensor,
        sin: paddle.Tensor,
        meta: AttentionMetadata,
        cache: paddle.Tensor,
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """cos / sin: [T, d] rows with the native ops, else expanded to [T, heads + 2 * kv_heads, d]."""
        t, d, h, kvh = x.shape[0], self.head_dim, self.heads, self.kv_heads
        hidden, residual = self.input_norm(x, residual)
        qkv = self.qkv(hidden).reshape([t, h + 2 * kvh, d])
        if self.q_norm is not None and self.k_norm is not None:
            parts = [self.q_norm(qkv[:, :h])[0], self.k_norm(qkv[:, h : h + kvh])[0], qkv[:, h + kvh :]]
            qkv = paddle.concat(parts, axis=1)
        if self.ops is not None:  # rotate q|k in place and write K|V to the cache: one call
            assert meta.new_slots is not None
            self.ops.rope_write(qkv, cache, h, kvh, cos, sin, meta.new_slots)
            q, kv = paddle.split(qkv, [h, 2 * kvh], axis=1)[0], None
        else:
            # V heads have cos 1 / sin 0: one rotation over q|k|v leaves V exact and K|V adjacent for the
            # cache. split, not slices: Paddle's strided-view copies are slow.
            qkv = qkv * cos + paddle.roll(qkv, d // 2, axis=2) * sin
            q, kv = paddle.split(qkv, [h, 2 * kvh], axis=1)
        attn = paged_attention(q, kv, cache, meta, kvh, self.group)
        hidden, residual = self.post_norm(self.o_proj(attn), residual)
        gate, up = self.gate(hidden), self.up(hidden)
        act = self.ops.swiglu(gate, up) if self.ops is not None else paddle.nn.functional.swiglu(gate, up)
        return self.down(act), residual

    def fused_spec(self) -> LayerSpec | None:
        """This layer for the fused decode pass, or None when it needs Python between its kernels."""
        linears = (self.qkv.gemm, self.o_proj.gemm, self.gate.gemm, self.up.gemm, self.down.gemm)
        norms = (self.input_norm, self.post_norm)
        if self.ops is None or self.q_norm is not None or self.o_proj.all_reduce is not None:
            return None
        if self.down.all_reduce is not None or self.o_proj.bias is not None or self.down.bias is not None:
            return None
        if not all(isinstance(g, NativeLinear) for g in linears):
            return None
        if not all(isinstance(n, NativeRMSNorm) for n in norms):
            return None
        qkv, o, gate, up, down = (g.spec() for g in linears)  # type: ignore[union-attr]
        return LayerSpec(qkv, o, gate, up, down, norms[0].weight_address, norms[1].weight_address)  # type: ignore[union-attr]


class DecoderModel:
    def __init__(
        self,
        info: ModelInfo,
        reader: WeightReader,
        shard: Shard,
        all_reduce: AllReduce | None,
        kernels: Kernels | None = None,
        fuse_decode: bool = True,
    ) -> None:
        kernels = kernels or paddle_kernels("cpu", read_cpu())
        gemm = kernels.gemm
        names = info.spec.weights
        shard.split(info.num_heads, "num_attention_heads")
        shard.split(info.num_kv_heads, "num_key_value_heads")
        self.info = info
        self.embed = VocabParallelEmbedding(reader, names.embed, info.vocab_size, shard, all_reduce)
        tied = info.tie_word_embeddings or names.lm_head not in reader
        self.lm_head = ParallelLMHead(
            reader,
            names.embed if tied else names.lm_head,
            info.vocab_size,
            shard,
            all_reduce,
            self.embed.weight if tied else None,
            gemm,
        )
        self.layers = [
            DecoderLayer(info, reader, names.layer.format(i=i), shard, all_reduce, kernels)
            for i in range(info.num_layers)
        ]
        self.norm = kernels.norm(reader.get(names.final_norm), info.rms_norm_eps)
        self.qk_heads = self.layers[0].heads + self.layers[0].kv_heads  # rotated heads per rank
        self.v_heads = self.layers[0].kv_heads
        self.native_rope = kernels.ops is not None  # the layers want cos / sin as [T, d] rows
        self.fused = self._fused(info, kernels) if fuse_decode else None

    def _fused(self, info: ModelInfo, kernels: Kernels) -> FusedDecode | None:
        specs = [layer.fused_spec() for layer in self.layers]
        if kernels.native is None or not isinstance(self.norm, NativeRMSNorm):
            return None
        if any(s is None for s in specs):
            return None
        first = self.layers[0]
        shape = DecodeShape(
            info.hidden_size, first.heads, first.kv_heads, first.head_dim, info.rms_norm_eps,
            self.norm.weight_address,
        )
        return FusedDecode(kernels.native, kernels.team, specs, shape)  # type: ignore[arg-type]

    def forward(
        self,
        ids: paddle.Tensor,
        cos: paddle.Tensor,
        sin: paddle.Tensor,
        meta: AttentionMetadata,
        kv_caches: Sequence[paddle.Tensor],
    ) -> paddle.Tensor:
        """ids [T] -> final hidden states [T, hidden]; writes the step's K/V into the cache."""
        return self.forward_embeds(self.embed(ids), cos, sin, meta, kv_caches)

    def forward_embeds(
        self,
        x: paddle.Tensor,
        cos: paddle.Tensor,
        sin: paddle.Tensor,
        meta: AttentionMetadata,
        kv_caches: Sequence[paddle.Tensor],
    ) -> paddle.Tensor:
        """`forward` from input embeddings x [T, hidden] (token embeddings with a vision-language model's
        image embeddings in the placeholder rows, models/qwen2_5_vl.py)."""
        if self.fused is not None:
            slots, rows, lens, new = meta.slot_table, meta.token_rows, meta.token_lens, meta.new_slots
            assert slots is not None and rows is not None and lens is not None and new is not None
            return self.fused(x, cos, sin, new, slots, rows, lens, kv_caches)
        residual = None
        for layer, cache in zip(self.layers, kv_caches, strict=True):
            x, residual = layer(x, residual, cos, sin, meta, cache)
        return self.norm(x, residual)[0]

    def logits(self, hidden: paddle.Tensor) -> paddle.Tensor:
        return self.lm_head(hidden)

