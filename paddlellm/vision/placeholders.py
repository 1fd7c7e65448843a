"""Image placeholders in token ids: the chat template writes one <|image_pad|> per image; the model wants one
per image token (t*h*w / merge^2). Tokenizer-side and pure, as Qwen2.5-VL's processor does it on the text."""

from __future__ import annotations

from collections.abc import Sequence

from paddlellm.errors import InvalidRequest


def expand_image_placeholders(
    token_ids: Sequence[int], image_token_id: int, tokens_per_image: Sequence[int], param: str = "messages"
) -> list[int]:
    """Each occurrence of image_token_id, in order, repeated tokens_per_image[k] times."""
    out: list[int] = []
    k = 0
    for tok in token_ids:
        if tok != image_token_id:
            out.append(tok)
            continue
        if k == len(tokens_per_image):
            raise InvalidRequest(f"the prompt has more image placeholders than the {k} images given", param)
        out.extend([image_token_id] * tokens_per_image[k])
        k += 1
    if k != len(tokens_per_image):
        raise InvalidRequest(f"{len(tokens_per_image)} images given but the prompt places {k}", param)
    return out
