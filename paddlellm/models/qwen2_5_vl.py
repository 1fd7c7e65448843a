"""Qwen2_5_VLModel: a Qwen2.5-VL checkpoint run eagerly, outside the engine (parity tests, and the pieces the
engine's prefill will call: docs/multimodal.md).

Algorithm of a prompt with images:
1. the vision tower (models/qwen2_5_vl_vision.py) turns all images' pixel_values into embeddings, one row per
   placeholder token, images in prompt order;
2. the text decoder (models/decoder.py, the Qwen2 decoder it is) embeds the token ids and the image rows
   replace the placeholder rows (`embed_prompt`);
3. positions are M-RoPE's (vision/mrope_positions.py), turned into per-token cos / sin rows from the 1-D
   tables (layers/mrope.py), so attention, the KV cache and the kernels are the text model's unchanged;
4. decoding: the token at index i >= prompt length has position i + delta on all three axes, i.e. plain
   1-D rotary rows at a shifted position.
The KV cache here is a private one sized for one sequence; the engine will use its paged cache instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import paddle

from paddlellm.layers.attention import AttentionMetadata, SeqSpan
from paddlellm.layers.host_tensor import host_tensor
from paddlellm.layers.kernels import Kernels
from paddlellm.layers.linear import Shard
from paddlellm.layers.mrope import MRotaryRows
from paddlellm.layers.rotary import RotaryTables
from paddlellm.models.decoder import DecoderModel
from paddlellm.models.qwen2_5_vl_vision import Grid, Qwen2_5_VisionTower
from paddlellm.vision.mrope_positions import MRopePositions, mrope_positions
from paddlellm.vision.vl_config import VLConfig
from paddlellm.weight_reader import WeightReader

BLOCK = 16  # block size of the private cache


class Qwen2_5_VLModel:
    def __init__(self, path: str, kernels: Kernels | None = None, max_positions: int = 4096) -> None:
        self.config = VLConfig.from_dir(path)
        self.info = self.config.text_model_info()
        reader = WeightReader(path)
        with paddle.no_grad():
            self.text = DecoderModel(self.info, reader, Shard(), None, kernels)
            self.vision = Qwen2_5_VisionTower(self.config.vision, reader)
        self.kernels = kernels
        self.rotary = RotaryTables(self.info.head_dim, self.info.rope_theta, None, max_positions)
        self.mrope = MRotaryRows(self.rotary, self.config.mrope_section)

    def positions(self, ids: Sequence[int], grids: Sequence[Grid]) -> MRopePositions:
        return mrope_positions(ids, grids, self.config.image_token_id, self.config.vision.spatial_merge_size)

    def embed_prompt(self, ids: Sequence[int], image_embeds: paddle.Tensor | None) -> paddle.Tensor:
        """Token embeddings [T, hidden] with the image rows (in prompt order) at the placeholder tokens."""
        arr = np.asarray(ids, dtype=np.int64)
        x = self.text.embed(host_tensor(arr))
        rows = np.flatnonzero(arr == self.config.image_token_id).astype(np.int64)
        if image_embeds is None or not len(rows):
            return x
        if image_embeds.shape[0] != len(rows):
            raise ValueError(f"{image_embeds.shape[0]} image embeddings for {len(rows)} placeholder tokens")
        return paddle.scatter(x, host_tensor(rows), image_embeds, overwrite=True)

    def generate_greedy(
        self,
        ids: Sequence[int],
        pixel_values: np.ndarray | None,
        grids: Sequence[Grid],
        max_new: int,
        chunk: int | None = None,
    ) -> tuple[np.ndarray, list[int]]:
        """(prompt logits [T, vocab], max_new greedy tokens): the prompt prefilled in chunks of `chunk` tokens
        (all at once by default; a chunk takes its rows of the embedded prompt and of the M-RoPE positions,
        as chunked prefill in the engine will), then one decode step per token."""
        n = len(ids)
        pos = self.positions(ids, grids)
        blocks = list(range(-(-(n + max_new) // BLOCK)))
        layer = self.text.layers[0]
        slots = len(blocks) * BLOCK
        cache = [paddle.zeros([2 * layer.kv_heads * slots, layer.head_dim]) for _ in self.text.layers]
        with paddle.no_grad():
            embeds = self.vision(pixel_values, grids) if pixel_values is not None and len(grids) else None
            x = self.embed_prompt(ids, embeds)
            step = chunk or n
            parts = []
            for lo in range(0, n, step):
                hi = min(n, lo + step)
                rows = x[lo:hi] if hi - lo < n else x
                span = SeqSpan(lo, hi - lo, blocks)
                hidden = self._step(rows, pos.positions[:, lo:hi], span, int(hi - lo == 1), slots, cache)
                parts.append(self.text.logits(hidden).numpy())
            prompt_logits = np.concatenate(parts)
            out = [int(prompt_logits[-1].argmax())]
            for i in range(n, n + max_new - 1):
                x = self.text.embed(host_tensor(np.array([out[-1]], dtype=np.int64)))
                hidden = self._step(x, pos.decode_positions(i, 1), SeqSpan(i, 1, blocks), 1, slots, cache)
                out.append(int(self.text.logits(hidden).numpy()[-1].argmax()))
        return prompt_logits, out

    def _step(
        self,
        x: paddle.Tensor,
        positions: np.ndarray,
        span: SeqSpan,
        num_decode: int,
        slots: int,
        cache: list[paddle.Tensor],
    ) -> paddle.Tensor:
        layer = self.text.layers[0]
        decode_kernel = self.kernels.decode_attention if self.kernels is not None else None
        meta = AttentionMetadata.build(
            [span], num_decode, BLOCK, slots, layer.kv_heads, layer.group, decode_kernel
        )
        if self.text.native_rope:
            cos, sin = self.mrope.rows(positions)
        else:
            cos, sin = self.mrope.expand(positions, self.text.qk_heads, self.text.v_heads)
        return self.text.forward_embeds(x, host_tensor(cos), host_tensor(sin), meta, cache)
