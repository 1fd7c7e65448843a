"""A request's images as the engine runs them: ImageInputs (the tokenizer's tensors) -> MultiModalPrompt.

Algorithm: `mrope_positions` walks the prompt once, checking that image k's placeholders are exactly one run
of t*h*w / merge^2 consecutive `image_token_id` tokens, in image order, and giving the 3-D positions and the
rope delta. Image k's run then starts at the (sum of the earlier images' token counts)-th placeholder of the
prompt, since the runs hold every placeholder in order. Everything here is a pure function of the prompt and
the images, computed once at add time (any thread).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from paddlellm.errors import InvalidRequest
from paddlellm.step_types import ImageInput, MultiModalPrompt
from paddlellm.vision.image_inputs import ImageInputs
from paddlellm.vision.mrope_positions import mrope_positions


def build_mm_prompt(
    prompt_ids: Sequence[int],
    images: ImageInputs,
    image_token_id: int,
    merge_size: int,
    param: str = "messages",
) -> MultiModalPrompt:
    ids = np.asarray(prompt_ids, dtype=np.int64)
    grids = [tuple(int(v) for v in g) for g in images.grid_thw]
    mrope = mrope_positions(ids, grids, image_token_id, merge_size, param)
    placeholders = np.flatnonzero(ids == image_token_id)
    counts = images.tokens_per_image(merge_size)
    if sum(counts) != len(placeholders):  # mrope_positions checked the runs; stray placeholders remain
        raise InvalidRequest(
            f"the prompt has {len(placeholders)} image placeholder tokens, its images need {sum(counts)}",
            param,
        )
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    items = tuple(
        ImageInput(
            pixel_values=np.ascontiguousarray(pixels, dtype=np.float32),
            grid_thw=grid,  # type: ignore[arg-type]  # three ints, checked by mrope_positions
            content_hash=digest,
            offset=int(placeholders[start]),
            num_tokens=count,
        )
        for pixels, grid, digest, start, count in zip(
            images.split(), grids, images.hashes, starts, counts, strict=True
        )
    )
    return MultiModalPrompt(items, mrope.positions, mrope.delta)
