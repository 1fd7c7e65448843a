"""M-RoPE positions (Qwen2-VL / Qwen2.5-VL): 3-D (t, h, w) rotary positions for a prompt with images.

Algorithm (transformers' get_rope_index for images): walk the prompt with a running position `cur`.
- A text token (vision start/end markers included) gets (cur, cur, cur); cur += 1.
- An image's run of placeholder tokens, with grid (t, H, W) in patches and merge size m, covers the merged
  grid (t, H/m, W/m) in row-major order: the token at (i, j, k) gets (cur + i, cur + j, cur + k); afterwards
  cur += max(H/m, W/m). Runs are taken image by image in prompt order, each exactly t*H*W/m^2 tokens long, so
  two images with no text between them still get their own grids.
- `delta` = max position + 1 - prompt length (<= 0: an image advances positions by its side, not its area).
  Every later token (decode, or a prompt suffix without images) at index i has position i + delta on all
  three axes, which M-RoPE turns into plain 1-D RoPE at that position: decode needs no 3-D state, only delta.
A prompt without images gets positions (i, i, i) and delta 0: exactly the 1-D path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from paddlellm.errors import InvalidRequest


@dataclass(frozen=True)
class MRopePositions:
    positions: np.ndarray  # [3, T] int64: the t, h, w position of each prompt token
    delta: int  # position of token index i >= T is i + delta on every axis

    def decode_positions(self, start: int, count: int) -> np.ndarray:
        """[3, count] positions of tokens start .. start + count - 1 past the prompt's images."""
        return np.broadcast_to(np.arange(start, start + count, dtype=np.int64) + self.delta, (3, count))


def mrope_positions(
    token_ids: Sequence[int] | np.ndarray,
    image_grids: Sequence[tuple[int, int, int]],
    image_token_id: int,
    merge_size: int,
    param: str = "messages",
) -> MRopePositions:
    ids = np.asarray(token_ids, dtype=np.int64)
    n = len(ids)
    out = np.empty((3, n), dtype=np.int64)
    is_image = ids == image_token_id
    grids = iter(image_grids)
    used = 0
    cur = 0
    i = 0
    while i < n:
        if not is_image[i]:
            # the whole text run up to the next placeholder in one go
            nxt = i + int(np.argmax(is_image[i:])) if is_image[i:].any() else n
            out[:, i:nxt] = np.arange(cur, cur + nxt - i)
            cur += nxt - i
            i = nxt
            continue
        grid = next(grids, None)
        if grid is None:
            raise InvalidRequest(
                f"the prompt has more image placeholders than the {used} images given", param
            )
        used += 1
        t, gh, gw = (int(v) for v in grid)
        if gh % merge_size or gw % merge_size:
            raise InvalidRequest(f"image grid {grid} is not a multiple of the merge size {merge_size}", param)
        h, w = gh // merge_size, gw // merge_size
        count = t * h * w
        if i + count > n or not is_image[i : i + count].all():
            raise InvalidRequest(f"image {used} needs {count} consecutive placeholder tokens", param)
        tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
        out[:, i : i + count] = np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + cur
        cur += max(h, w)
        i += count
    if next(grids, None) is not None:
        raise InvalidRequest(
            f"{len(image_grids)} images given but the prompt has placeholders for {used}", param
        )
    delta = int(out.max()) + 1 - n if n else 0
    return MRopePositions(out, delta)
