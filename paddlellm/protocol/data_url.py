"""Image URLs of OpenAI content parts: which forms the server takes, parsed the same way on both sides.

The gateway checks a `data:` URL before anything is sent (a 400 naming the part), and the tokenizer model
parses it again to decode the image (a direct Triton client skips the gateway). Only base64 `data:` URLs of
PNG, JPEG and WebP reach the tokenizer; an http(s) URL is fetched by the gateway when allowed
(--allowed-media-domains) and sent on as a data URL. Stdlib only: the gateway imports it.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from paddlellm.errors import InvalidRequest

IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/webp")
_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}  # names clients send for JPEG
REMOTE_SCHEMES = ("http://", "https://")
MAX_IMAGE_BYTES = 20 * 2**20  # one encoded image: the data URL's payload, a fetched file, the decoder's input


@dataclass(frozen=True)
class ImageData:
    media_type: str  # one of IMAGE_MEDIA_TYPES
    data: bytes  # the encoded file, still undecoded


def image_media_type(name: str) -> str | None:
    """The canonical media type of `name` (a Content-Type or data URL header), None when not served."""
    base = name.split(";", 1)[0].strip().lower()
    base = _ALIASES.get(base, base)
    return base if base in IMAGE_MEDIA_TYPES else None


def is_remote(url: str) -> bool:
    return url[:8].lower().startswith(REMOTE_SCHEMES)


def parse_image_data_url(url: str, param: str, max_bytes: int | None = None) -> ImageData:
    """`data:image/png;base64,...` -> its media type and bytes; InvalidRequest(param=param) otherwise."""
    if not url.startswith("data:"):
        raise InvalidRequest("an image URL must be a base64 'data:' URL of a PNG, JPEG or WebP image", param)
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise InvalidRequest("malformed data URL: no ',' before the data", param)
    fields = [f.strip().lower() for f in header.split(";")]
    if "base64" not in fields[1:]:
        raise InvalidRequest("a data URL image must be base64-encoded (data:<type>;base64,...)", param)
    media_type = image_media_type(fields[0])
    if media_type is None:
        raise InvalidRequest(
            f"unsupported image media type {fields[0]!r} (supported: {', '.join(IMAGE_MEDIA_TYPES)})", param
        )
    # The decoded size is known before decoding: refuse an oversized image without allocating it.
    if max_bytes is not None and len(payload) // 4 * 3 > max_bytes + 2:
        raise InvalidRequest(f"image data exceeds the limit of {max_bytes} bytes", param)
    try:
        data = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidRequest(f"malformed base64 image data: {e}", param) from None
    if not data:
        raise InvalidRequest("the image data is empty", param)
    return ImageData(media_type, data)


def data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"
