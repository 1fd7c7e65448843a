"""decode_image: untrusted image bytes -> an RGB PIL image, refusing what we will not decode.

Algorithm: `Image.open` parses only the header (format, size), with the decoders limited to PNG, JPEG and
WebP; the claimed pixel count is checked against `max_pixels` before `load()` decodes anything, so a small
file that claims gigapixels costs a header parse. Pillow's own bomb check (`Image.MAX_IMAGE_PIXELS`, a
process global) is left as it is: it fires only above its own larger limit, and its DecompressionBombError is
refused like ours. Transparency is composited onto white and EXIF orientation applied, as transformers'
`load_image` + `convert_to_rgb` do, so the pixels equal what its processor sees for the same bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from paddlellm.errors import InvalidRequest
from paddlellm.protocol.data_url import MAX_IMAGE_BYTES

FORMATS = ("PNG", "JPEG", "WEBP")
# Below Pillow's warning threshold (89.5 M), so an accepted image never trips its process-wide check.
DEFAULT_MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int = DEFAULT_MAX_PIXELS  # width * height as the header claims it
    max_bytes: int = MAX_IMAGE_BYTES  # the encoded file


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits(), param: str = "messages") -> Image.Image:
    """An RGB image, or InvalidRequest(param=param) for an unsupported, undecodable or oversized image."""
    if len(data) > limits.max_bytes:
        raise InvalidRequest(
            f"image of {len(data)} bytes exceeds the limit of {limits.max_bytes}", param=param
        )
    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)  # header only
    except UnidentifiedImageError:
        raise InvalidRequest(
            f"unsupported or undecodable image (supported formats: {', '.join(FORMATS)})", param=param
        ) from None
    except Image.DecompressionBombError:
        raise InvalidRequest(
            f"image size exceeds the limit of {limits.max_pixels} pixels", param=param
        ) from None
    except (OSError, ValueError, SyntaxError) as e:  # a known signature, then a header cut short or corrupt
        raise InvalidRequest(f"undecodable image header: {e}", param=param) from None
    width, height = im.size
    if width <= 0 or height <= 0:
        raise InvalidRequest(f"image has an empty size {width}x{height}", param=param)
    if width * height > limits.max_pixels:
        raise InvalidRequest(
            f"image of {width}x{height} pixels exceeds the limit of {limits.max_pixels} pixels", param=param
        )
    try:
        im.load()
        im = ImageOps.exif_transpose(im)
        return to_rgb(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # truncated, corrupt
        raise InvalidRequest(f"undecodable {im.format} image: {e}", param=param) from None


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB, with any transparency (alpha band or a palette's transparent index) composited onto white."""
    if "A" in im.getbands() or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")
