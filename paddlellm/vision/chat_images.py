"""ChatImages: the image parts of OpenAI chat messages -> template-ready messages + preprocessed images.

Runs in the tokenizer model (off the engine's step loop). Per image part `messages[i].content[j]`, in prompt
order: count it against the per-request limit, parse its data URL (paddlellm/protocol/data_url.py), decode it
(image_decode: format and pixel bound checked from the header before any pixel is decoded), preprocess it
with the checkpoint's rules, and replace the part with `{"type": "image"}`, which Qwen2.5-VL-style templates
render as <|vision_start|><|image_pad|><|vision_end|>. After encoding, `expand` repeats each <|image_pad|>
once per image token, so the prompt length (and usage's prompt_tokens) counts the image tokens. Every
refusal is InvalidRequest naming the part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from paddlellm.errors import InvalidRequest
from paddlellm.protocol.data_url import is_remote, parse_image_data_url
from paddlellm.vision.image_config import ImageProcessorConfig
from paddlellm.vision.image_decode import DecodeLimits, decode_image
from paddlellm.vision.image_inputs import ImageInputs
from paddlellm.vision.placeholders import expand_image_placeholders
from paddlellm.vision.qwen2_vl_processor import ProcessedImage, preprocess_image

IMAGE_PART = "image_url"  # OpenAI's part type; "image" is the template's, never taken from a client
TEMPLATE_IMAGE_PART = {"type": "image"}


@dataclass(frozen=True)
class ChatImageConfig:
    processor: ImageProcessorConfig  # the checkpoint's preprocessor_config.json
    image_token_id: int  # <|image_pad|>
    max_images: int  # --limit-mm-per-prompt
    decode: DecodeLimits = DecodeLimits()


@dataclass(frozen=True)
class ChatImagesResult:
    messages: list[dict[str, Any]]  # image parts replaced by {"type": "image"}
    images: list[ProcessedImage]

    def inputs(self) -> ImageInputs:
        return ImageInputs.from_processed(self.images)


class ChatImages:
    """`config` None: this server takes no images (no --enable-mm); an image part is a 400 naming it."""

    def __init__(self, config: ChatImageConfig | None) -> None:
        self.config = config

    def extract(self, messages: list[dict[str, Any]]) -> ChatImagesResult:
        out: list[dict[str, Any]] = []
        images: list[ProcessedImage] = []
        for i, msg in enumerate(messages):
            content = msg.get("content")
            if not isinstance(content, list) or not any(_is_image(p) for p in content):
                out.append(msg)  # no image parts: untouched (validate_messages checks the rest)
                continue
            parts = []
            for j, part in enumerate(content):
                if _is_image(part):
                    images.append(self._image(part, f"messages[{i}].content[{j}]", len(images)))
                    parts.append(dict(TEMPLATE_IMAGE_PART))
                else:
                    parts.append(part)
            out.append({**msg, "content": parts})
        return ChatImagesResult(out, images)

    def expand(self, ids: Sequence[int], images: Sequence[ProcessedImage]) -> list[int]:
        """`ids` with each image's placeholder repeated once per image token (unchanged without images)."""
        if not images or self.config is None:
            return list(ids)
        counts = [im.num_tokens for im in images]
        return expand_image_placeholders(ids, self.config.image_token_id, counts, param="messages")

    def _image(self, part: Mapping[str, Any], param: str, seen: int) -> ProcessedImage:
        cfg = self.config
        if cfg is None:
            raise InvalidRequest(
                "image content parts are not enabled on this server (it needs --enable-mm and a "
                "vision-language model)",
                param,
            )
        if part.get("type") != IMAGE_PART:
            raise InvalidRequest(f"unsupported content part type {part.get('type')!r}", param)
        if seen >= cfg.max_images:
            raise InvalidRequest(
                f"too many images: at most {cfg.max_images} per request (--limit-mm-per-prompt)", param
            )
        url = _url(part, param)
        if is_remote(url):
            raise InvalidRequest("http(s) image URLs must be fetched by the gateway; send a data URL", param)
        image = parse_image_data_url(url, param, cfg.decode.max_bytes)
        return preprocess_image(decode_image(image.data, cfg.decode, param), cfg.processor, param)


def _is_image(part: Any) -> bool:
    return isinstance(part, Mapping) and part.get("type") in (IMAGE_PART, "image")


def _url(part: Mapping[str, Any], param: str) -> str:
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, Mapping) else None
    if not isinstance(url, str):
        raise InvalidRequest("an image_url part needs image_url.url (a string)", param)
    return url
