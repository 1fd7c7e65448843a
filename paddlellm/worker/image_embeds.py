"""ImageEmbeds: the runner's image side: vision tower runs, embeddings held per request, an LRU by hash.

Algorithm (`step_rows`, once per step that has prefill chunks of requests with images):
1. For each chunk [start, end) and each image whose placeholder run [offset, offset + num_tokens) it overlaps,
   the request must hold that image's embeddings. Missing ones come from the LRU (same content hash = same
   embeddings) or, for the rest, from ONE vision-tower call over all of them (attention never crosses images,
   so one call equals one per image; an image appearing twice in the step runs once).
2. The chunk's placeholder rows take their slice of the image's rows (a chunk may cut a run: chunked prefill
   takes exactly its rows). Result: the batch rows and the matching embedding rows, for one scatter.
3. An image whose run ends within the chunk is done: the request lets go of it (the LRU may keep it).
Images wholly inside a prefix-cache hit are never scheduled, so they never run. After a preemption the runner
drops the request's state; its recompute takes the embeddings from the LRU or runs the tower again.
Every TP rank runs the same tower on the same inputs (replicated), so all ranks place the same values.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import paddle

from paddlellm.models.qwen2_5_vl_vision import Qwen2_5_VisionTower
from paddlellm.step_types import ImageInput, MultiModalPrompt

# Embedding rows the LRU keeps across requests: a follow-up turn or a preempted request whose image was
# computed recently skips the tower. 4096 rows of a 3584-wide model are 59 MB of float32.
LRU_TOKENS = 4096


@dataclass(frozen=True)
class ImageChunk:
    """A request's chunk this step: its first batch row and token range [start, end)."""

    request_id: str
    mm: MultiModalPrompt
    first_row: int
    start: int
    end: int


class ImageEmbeds:
    def __init__(self, tower: Qwen2_5_VisionTower, lru_tokens: int = LRU_TOKENS) -> None:
        self.tower = tower
        self.lru_tokens = lru_tokens
        self._lru: OrderedDict[str, paddle.Tensor] = OrderedDict()
        self._lru_size = 0
        self._held: dict[str, dict[int, paddle.Tensor]] = {}  # request id -> image index -> embeddings
        self.tower_images = 0  # images the tower encoded (tests, metrics)

    def drop(self, request_id: str) -> None:
        self._held.pop(request_id, None)

    def step_rows(
        self, chunks: list[ImageChunk], tensor: Callable[[Any], paddle.Tensor]
    ) -> tuple[np.ndarray, paddle.Tensor] | None:
        """(batch rows [R] int64, embeddings [R, hidden]) for the step's placeholder rows; None if none."""
        todo: dict[str, ImageInput] = {}  # content hash -> an image to encode
        for c in chunks:
            held = self._held.setdefault(c.request_id, {})
            for k, im in enumerate(c.mm.images):
                if k in held or im.end <= c.start or im.offset >= c.end:
                    continue
                cached = self._lru.get(im.content_hash)
                if cached is not None:
                    self._lru.move_to_end(im.content_hash)
                    held[k] = cached
                else:
                    todo.setdefault(im.content_hash, im)
        encoded = self._encode(list(todo.values()), tensor)
        rows: list[np.ndarray] = []
        parts: list[paddle.Tensor] = []
        for c in chunks:
            held = self._held[c.request_id]
            for k, im in enumerate(c.mm.images):
                lo, hi = max(c.start, im.offset), min(c.end, im.end)
                if lo >= hi:
                    continue
                if k not in held:
                    held[k] = encoded[im.content_hash]
                emb = held[k]
                rows.append(np.arange(c.first_row + lo - c.start, c.first_row + hi - c.start, dtype=np.int64))
                parts.append(emb if hi - lo == im.num_tokens else emb[lo - im.offset : hi - im.offset])
                if im.end <= c.end:
                    del held[k]
        if not rows:
            return None
        return np.concatenate(rows), parts[0] if len(parts) == 1 else paddle.concat(parts, axis=0)

    def _encode(
        self, images: list[ImageInput], tensor: Callable[[Any], paddle.Tensor]
    ) -> dict[str, paddle.Tensor]:
        if not images:
            return {}
        grids = [im.grid_thw for im in images]
        pixels = np.concatenate([im.pixel_values for im in images])
        out = self.tower(pixels, grids, tensor)
        pieces = [out] if len(images) == 1 else self.tower.split(out, grids)
        self.tower_images += len(images)
        encoded = {}
        for im, emb in zip(images, pieces, strict=True):
            encoded[im.content_hash] = emb
            self._remember(im.content_hash, emb)
        return encoded

    def _remember(self, key: str, emb: paddle.Tensor) -> None:
        size = int(emb.shape[0])
        if size > self.lru_tokens:
            return
        self._lru[key] = emb
        self._lru_size += size
        while self._lru_size > self.lru_tokens:
            _, old = self._lru.popitem(last=False)
            self._lru_size -= int(old.shape[0])
