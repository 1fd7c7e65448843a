"""paddlellm/vision against transformers' Qwen2-VL PIL image processor, and the refusals of image_decode.

Parity: the same encoded bytes (PNG, JPEG, WebP; RGB, RGBA, grayscale, palette with transparency; sizes that
are upscaled, downscaled and extreme in aspect) give identical `pixel_values` (max abs diff 0) and
`image_grid_thw`, and the placeholder count t*h*w/merge^2 matches the grid.
"""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from paddlellm.errors import InvalidRequest
from paddlellm.vision.image_config import ImageProcessorConfig
from paddlellm.vision.image_decode import DecodeLimits, decode_image
from paddlellm.vision.qwen2_vl_processor import num_image_tokens, preprocess_image

transformers = pytest.importorskip("transformers", exc_type=ModuleNotFoundError)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: E402

pytestmark = pytest.mark.parity


def synthetic(mode: str, width: int, height: int, seed: int) -> Image.Image:
    """Smooth gradients plus noise: resampling filters see both edges and flat areas."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / max(1, width - 1), yy * 255 / max(1, height - 1), (xx + yy) % 256], -1)
    rgba = np.concatenate([base, rng.integers(0, 256, (height, width, 1))], -1)
    rgba = np.clip(rgba + rng.normal(0, 20, rgba.shape), 0, 255).astype(np.uint8)
    if mode == "L":
        return Image.fromarray(rgba[..., 0], "L")
    if mode == "P":  # palette with a transparent index
        im = Image.fromarray(rgba[..., :3], "RGB").quantize(16)
        im.info["transparency"] = 3
        return im
    return Image.fromarray(rgba[..., : len(mode)], mode)


def encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    kwargs = {"quality": 90} if fmt == "JPEG" else {}
    if fmt == "PNG" and "transparency" in im.info:
        kwargs["transparency"] = im.info["transparency"]
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


CASES = [  # mode, width, height, format
    ("RGB", 100, 80, "PNG"),
    ("RGBA", 333, 517, "PNG"),
    ("L", 60, 41, "PNG"),
    ("P", 90, 150, "PNG"),
    ("RGB", 1024, 700, "JPEG"),
    ("L", 77, 300, "JPEG"),
    ("RGBA", 640, 480, "WEBP"),
    ("RGB", 29, 29, "WEBP"),  # upscaled to min_pixels
    ("RGB", 2000, 20, "PNG"),  # extreme aspect ratio
]
PROCESSOR_CONFIGS = [
    {"min_pixels": 3136, "max_pixels": 12845056},  # Qwen2.5-VL's published bounds
    {"size": {"shortest_edge": 3136, "longest_edge": 28 * 28 * 64}},  # small max: downscaling
]


@pytest.mark.parametrize("proc", PROCESSOR_CONFIGS, ids=["published", "small-max"])
@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_matches_transformers(tmp_path, case, proc) -> None:
    mode, width, height, fmt = case
    data = encode(synthetic(mode, width, height, seed=width * height), fmt)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(proc))
    ref = Qwen2VLImageProcessorPil.from_pretrained(str(tmp_path))
    expected = ref(images=[Image.open(io.BytesIO(data))], return_tensors="np")
    cfg = ImageProcessorConfig.from_dir(str(tmp_path))
    got = preprocess_image(decode_image(data), cfg)
    assert list(got.grid_thw) == expected["image_grid_thw"][0].tolist()
    assert got.pixel_values.shape == expected["pixel_values"].shape
    assert got.pixel_values.dtype == np.float32
    assert np.abs(got.pixel_values - expected["pixel_values"]).max() == 0.0
    t, h, w = got.grid_thw
    assert got.num_tokens == t * h * w // 4 == num_image_tokens(height, width, cfg)


def test_two_images_concatenate_like_transformers(tmp_path) -> None:
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(PROCESSOR_CONFIGS[0]))
    blobs = [encode(synthetic("RGB", 120, 90, 1), "PNG"), encode(synthetic("RGB", 64, 200, 2), "JPEG")]
    ref = Qwen2VLImageProcessorPil.from_pretrained(str(tmp_path))
    expected = ref(images=[Image.open(io.BytesIO(b)) for b in blobs], return_tensors="np")
    cfg = ImageProcessorConfig.from_dir(str(tmp_path))
    got = [preprocess_image(decode_image(b), cfg) for b in blobs]
    assert np.array_equal(np.concatenate([g.pixel_values for g in got]), expected["pixel_values"])
    assert [list(g.grid_thw) for g in got] == expected["image_grid_thw"].tolist()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height and which holds no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + end


def test_decompression_bomb_refused_from_the_header() -> None:
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(InvalidRequest, match="exceeds the limit") as e:
        decode_image(_png_header_only(8000, 8000), DecodeLimits(max_pixels=10_000_000))
    assert e.value.param == "messages"
    with pytest.raises(InvalidRequest, match="exceeds the limit"):  # Pillow's own check, beyond 2x its limit
        decode_image(_png_header_only(100_000, 100_000))
    assert Image.MAX_IMAGE_PIXELS == before  # no global state changed


@pytest.mark.parametrize(
    "data",
    [
        b"not an image",
        encode(synthetic("RGB", 16, 16, 0), "GIF"),
        encode(synthetic("RGB", 16, 16, 0), "BMP"),
        encode(synthetic("RGB", 64, 64, 0), "PNG")[:120],  # truncated
        _png_header_only(64, 64),  # header but no pixels
        b"\x89PNG\r\n\x1a\n" + b"garbage" * 20,  # the signature, then no valid chunk (Pillow: OSError)
    ],
    ids=["garbage", "gif", "bmp", "truncated", "no-data", "bad-header"],
)
def test_bad_images_refused(data: bytes) -> None:
    with pytest.raises(InvalidRequest) as e:
        decode_image(data, param="messages[0].content[1]")
    assert e.value.param == "messages[0].content[1]"


def test_extreme_aspect_refused() -> None:
    with pytest.raises(InvalidRequest, match="aspect ratio"):
        preprocess_image(decode_image(encode(synthetic("RGB", 2010, 10, 0), "PNG")), ImageProcessorConfig())
