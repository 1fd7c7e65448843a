"""The tokenizer model with images (issue #29 part 2a) on the tiny Qwen2.5-VL checkpoint, through the real
factory (`create_tokenizer_model` with the parameters the launcher renders) and the fake pb_utils: its image
tensors equal paddlellm.vision's direct results, its input_ids transformers' Qwen2_5_VLProcessor's (1 and 2
images of different sizes, PNG, JPEG and WebP), and every bad image is a 400 naming its part, decided from
the header where the format allows (a decompression bomb never reaches the decoder)."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from paddlellm import protocol as p
from paddlellm.triton import adapter
from paddlellm.triton.text_models import TokenizerModel, create_tokenizer_model
from paddlellm.vision.image_config import ImageProcessorConfig
from paddlellm.vision.image_decode import decode_image
from paddlellm.vision.image_inputs import content_hash
from paddlellm.vision.qwen2_vl_processor import preprocess_image
from tests.adapters.test_text_models import error_of, str_tensor, tok_request

SIZES = ((60, 90), (100, 40), (33, 57))  # (height, width): grids (1, 4, 6), (1, 8, 2), ...


@pytest.fixture(scope="module")
def vl_path(tmp_path_factory, default_model_dir) -> str:
    pytest.importorskip("torch", exc_type=ModuleNotFoundError)
    from scripts.make_tiny_vl_model import make_tiny_vl_model

    return make_tiny_vl_model(str(tmp_path_factory.mktemp("tiny_vl") / "qwen2_5_vl"), default_model_dir)


def _params(vl_path: str, **extra: str) -> dict[str, str]:
    return {
        "model": vl_path,
        "max_model_len": "4096",
        "enable_mm": "1",
        "limit_mm_per_prompt": "image=2",
    } | extra


@pytest.fixture
def model(pb: ModuleType, vl_path: str) -> TokenizerModel:
    return create_tokenizer_model(pb, _params(vl_path))


def _image(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _encode(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


def _url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def _part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def _chat(*parts: Any) -> list[dict[str, Any]]:
    content = [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts]
    return [{"role": "user", "content": content}]


def _processor(vl_path: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """transformers' Qwen2_5_VLProcessor with the slow (PIL) image processor. Its constructor insists on a
    video processor class, which needs torchvision (not installed): the class check is skipped."""
    transformers = pytest.importorskip("transformers", exc_type=ModuleNotFoundError)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: None)
    tok = transformers.AutoTokenizer.from_pretrained(vl_path)
    return transformers.Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(vl_path),
        tokenizer=tok,
        video_processor=None,
        chat_template=tok.chat_template,
    )


CASES = {
    "one": [("PNG", "image/png", 0)],
    "two": [("PNG", "image/png", 0), ("JPEG", "image/jpeg", 1)],
    "webp_and_png": [("WEBP", "image/webp", 2), ("PNG", "image/png", 1)],
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_images_match_paddlellm_vision_and_transformers(
    pb: ModuleType, model: TokenizerModel, vl_path: str, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    files = [_encode(_image(*SIZES[i], seed=i), fmt) for fmt, _, i in CASES[case]]
    parts: list[Any] = ["Compare "]
    for data, (_, media_type, _) in zip(files, CASES[case], strict=True):
        parts += [_part(_url(data, media_type)), " and "]
    [resp] = model.execute([tok_request(pb, messages=_chat(*parts))])
    assert not resp.has_error(), resp.error().message()
    out = resp.outputs()
    assert set(out) == {s.name for s in p.TOKENIZER.outputs}

    # The tensors: paddlellm.vision called directly on the same bytes.
    cfg = ImageProcessorConfig.from_dir(vl_path)
    direct = [preprocess_image(decode_image(data), cfg) for data in files]
    assert out[p.PIXEL_VALUES].dtype == np.float32
    np.testing.assert_array_equal(out[p.PIXEL_VALUES], np.concatenate([d.pixel_values for d in direct]))
    assert out[p.IMAGE_GRID_THW].dtype == np.int64
    assert out[p.IMAGE_GRID_THW].tolist() == [list(d.grid_thw) for d in direct]
    assert [h.decode() for h in out[p.IMAGE_HASHES]] == [
        content_hash(d.pixel_values, d.grid_thw) for d in direct
    ]

    # input_ids: transformers' processor on the same messages and images (its placeholders expanded).
    processor = _processor(vl_path, monkeypatch)
    hf_messages = _chat(*[{"type": "image"} if isinstance(x, dict) else x for x in parts])
    text = processor.tokenizer.apply_chat_template(hf_messages, tokenize=False, add_generation_prompt=True)
    pil = [Image.open(io.BytesIO(data)).convert("RGB") for data in files]
    ref = processor(text=[text], images=pil, return_tensors="np")
    assert out[p.INPUT_IDS].tolist() == ref["input_ids"][0].tolist()
    np.testing.assert_array_equal(out[p.IMAGE_GRID_THW], ref["image_grid_thw"])
    np.testing.assert_array_equal(out[p.PIXEL_VALUES], ref["pixel_values"])
    image_tokens = sum(int(np.prod(g)) // 4 for g in ref["image_grid_thw"])
    assert (out[p.INPUT_IDS] == processor.image_token_id).sum() == image_tokens  # prompt_tokens counts them


def test_text_only_chat_sends_empty_image_tensors(pb: ModuleType, model: TokenizerModel) -> None:
    [resp] = model.execute([tok_request(pb, messages=[{"role": "user", "content": "hi"}])])
    out = resp.outputs()
    assert out[p.PIXEL_VALUES].shape == (0, 0) and out[p.IMAGE_GRID_THW].shape == (0, 3)
    assert out[p.IMAGE_HASHES].shape == (0,)


def test_same_pixels_same_hash_different_pixels_different_hash(pb: ModuleType, model: TokenizerModel) -> None:
    im = _image(60, 90)
    png, webp, other = _encode(im), _encode(im, "WEBP"), _encode(_image(60, 90, seed=9))
    [resp] = model.execute(
        [tok_request(pb, messages=_chat(_part(_url(png)), _part(_url(webp, "image/webp"))))]
    )
    a, b = resp.outputs()[p.IMAGE_HASHES].tolist()
    assert a == b  # lossless WebP of the same pixels: equal embeddings, equal hash
    [resp] = model.execute([tok_request(pb, messages=_chat(_part(_url(other))))])
    assert resp.outputs()[p.IMAGE_HASHES].tolist() != [a]


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose IHDR claims width x height, followed by a little compressed data and IEND."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 100_000)  # zeros compress ~1000x: what a bomb is made of
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(
    pb: ModuleType, model: TokenizerModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = _png_claiming(100_000, 100_000)  # 10 G pixels in ~300 bytes
    assert len(bomb) < 1000

    def never(self: Any) -> Any:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never)
    [resp] = model.execute([tok_request(pb, messages=_chat("look", _part(_url(bomb))))])
    code, err = error_of(resp)
    assert code == pb.TritonError.INVALID_ARG
    assert err.param == "messages[0].content[1]" and "pixels" in err.message and "limit" in err.message


BAD = [
    ("data:image/png;base64,@@@@", "malformed base64"),
    ("data:image/gif;base64,R0lGODlhAQABAAAAACw=", "unsupported image media type"),
    ("data:image/png,abcd", "base64-encoded"),
    ("data:image/png;base64", "no ','"),
    ("http://example.com/cat.png", "fetched by the gateway"),
    ("file:///etc/passwd", "data:' URL"),
    (_url(b"GIF89a" + b"\0" * 20), "unsupported or undecodable image"),
    (_url(_encode(_image(20, 20))[:60]), "undecodable"),  # truncated
    (_url(_encode(_image(10, 2100))), "aspect ratio"),
]


@pytest.mark.parametrize(("url", "needle"), BAD, ids=[n for _, n in BAD])
def test_bad_images_are_refused_naming_the_part(
    pb: ModuleType, model: TokenizerModel, url: str, needle: str
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, *_chat("one", _part(url))]
    [resp] = model.execute([tok_request(pb, messages=messages)])
    code, err = error_of(resp)
    assert code == pb.TritonError.INVALID_ARG
    assert err.param == "messages[1].content[1]" and needle in err.message, err.message


def test_limit_and_disabled_images_are_refused_naming_the_part(pb: ModuleType, vl_path: str) -> None:
    url = _url(_encode(_image(30, 30)))
    limited = create_tokenizer_model(pb, _params(vl_path))  # image=2
    [resp] = limited.execute([tok_request(pb, messages=_chat(_part(url), _part(url), "x", _part(url)))])
    err = error_of(resp)[1]
    assert err.param == "messages[0].content[3]" and "at most 2" in err.message
    off = create_tokenizer_model(pb, _params(vl_path, enable_mm="0"))
    [resp] = off.execute([tok_request(pb, messages=_chat("x", _part(url)))])
    err = error_of(resp)[1]
    assert err.param == "messages[0].content[1]" and "--enable-mm" in err.message
    [resp] = off.execute([tok_request(pb, messages=[{"role": "user", "content": "text only"}])])
    assert not resp.has_error()  # a VL checkpoint serves text without --enable-mm


def test_prompt_length_counts_image_tokens(pb: ModuleType, vl_path: str) -> None:
    url = _url(_encode(_image(200, 200)))  # 7 x 7 merged tokens... bounded by the checkpoint's max_pixels
    fits = create_tokenizer_model(pb, _params(vl_path, max_model_len="256"))
    [resp] = fits.execute([tok_request(pb, messages=_chat("x", _part(url)), sampling={"max_tokens": 8})])
    n = len(resp.outputs()[p.INPUT_IDS])
    assert n > 49
    tight = create_tokenizer_model(pb, _params(vl_path, max_model_len=str(n + 7)))
    [resp] = tight.execute([tok_request(pb, messages=_chat("x", _part(url)), sampling={"max_tokens": 8})])
    err = error_of(resp)[1]
    assert err.param == "messages" and f"prompt has {n} tokens" in err.message


def test_enable_mm_with_a_text_checkpoint_fails_at_load(pb: ModuleType, default_model_dir: str) -> None:
    from paddlellm.errors import ConfigError

    with pytest.raises(ConfigError, match="enable_mm: .* is not a vision-language checkpoint"):
        create_tokenizer_model(pb, {"model": default_model_dir, "max_model_len": "64", "enable_mm": "1"})
    # Without the parameters (a repository from before them): text as ever, images refused naming the part.
    text = create_tokenizer_model(pb, {"model": default_model_dir, "max_model_len": "64"})
    [resp] = text.execute([tok_request(pb, messages=_chat(_part("data:image/png;base64,AAAA")))])
    assert error_of(resp)[1].param == "messages[0].content[0]"


# ------------------------------------------------------------------------------------- engine's door


def _engine_request(pb: ModuleType, tokenizer_out: dict[str, np.ndarray] | None, **drop: bool) -> Any:
    inputs = [pb.Tensor(p.INPUT_IDS, np.array([1, 2, 3], np.int32)), str_tensor(pb, p.SAMPLING, "{}")]
    for name, arr in (tokenizer_out or {}).items():
        if name in (p.PIXEL_VALUES, p.IMAGE_GRID_THW, p.IMAGE_HASHES) and not drop.get(name):
            inputs.append(pb.Tensor(name, arr))
    return pb.InferenceRequest(inputs=inputs, request_id="e")


def test_engine_input_reads_the_image_tensors(pb: ModuleType, model: TokenizerModel) -> None:
    url = _url(_encode(_image(60, 90)))
    [resp] = model.execute([tok_request(pb, messages=_chat(_part(url), _part(url)))])
    out = resp.outputs()
    inp = adapter.read_engine_input(pb, _engine_request(pb, out))
    assert inp.images is not None and inp.images.num_images == 2
    np.testing.assert_array_equal(inp.images.pixel_values, out[p.PIXEL_VALUES])
    assert [len(x) for x in inp.images.split()] == [24, 24] and inp.images.tokens_per_image(2) == [6, 6]
    assert inp.images.hashes == tuple(h.decode() for h in out[p.IMAGE_HASHES])
    # Text only: empty tensors (the tokenizer's) or none at all (a direct client) are no images.
    [text] = model.execute([tok_request(pb, messages=[{"role": "user", "content": "hi"}])])
    assert adapter.read_engine_input(pb, _engine_request(pb, text.outputs())).images is None
    assert adapter.read_engine_input(pb, _engine_request(pb, None)).images is None


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"drop": p.IMAGE_HASHES}, "or none"),
        ({p.IMAGE_GRID_THW: np.array([[1, 4, 4]], np.int64)}, "patches"),
        ({p.IMAGE_HASHES: np.array([b"a", b"b"], np.object_)}, "hashes"),
        ({p.IMAGE_GRID_THW: np.array([[1, 0, 24]], np.int64)}, "positive"),
    ],
)
def test_engine_input_refuses_inconsistent_image_tensors(
    pb: ModuleType, model: TokenizerModel, change: dict[str, Any], needle: str
) -> None:
    [resp] = model.execute([tok_request(pb, messages=_chat(_part(_url(_encode(_image(60, 90))))))])
    out = dict(resp.outputs())
    drop = change.pop("drop", None)
    out.update(change)
    from paddlellm.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match=needle) as e:
        adapter.read_engine_input(pb, _engine_request(pb, out, **({drop: True} if drop else {})))
    assert e.value.param == p.PIXEL_VALUES


def test_engine_model_hands_images_to_the_loop(pb: ModuleType, model: TokenizerModel) -> None:
    """Part 2b: the engine model passes the checked ImageInputs on (the engine checks them against the
    placeholders); text-only requests pass None."""
    from paddlellm.triton.engine_model import EngineModel
    from tests.adapters.test_engine_model import ScriptedLoop

    added: list[tuple[int, ...]] = []
    images: list[Any] = []

    class Loop(ScriptedLoop):
        def add(self, request_id, prompt_ids, params, sink, resume_ids=(), **kw):
            added.append(tuple(prompt_ids))
            images.append(kw.get("images"))
            return super().add(request_id, prompt_ids, params, sink, resume_ids)

    engine = EngineModel(pb, lambda before_step: Loop([7]))
    try:
        [resp] = model.execute([tok_request(pb, messages=_chat(_part(_url(_encode(_image(60, 90))))))])
        req = _engine_request(pb, resp.outputs())
        engine.execute([req])
        assert len(added) == 1 and images[0] is not None and images[0].num_images == 1
        assert len(images[0].hashes[0]) == 64 and images[0].grid_thw.shape == (1, 3)
        [text] = model.execute([tok_request(pb, messages=[{"role": "user", "content": "hi"}])])
        engine.execute([_engine_request(pb, text.outputs())])
        assert added[1] == (1, 2, 3) and images[1] is None  # text-only requests (empty image tensors)
    finally:
        engine.finalize()


def test_chat_template_receives_image_parts_in_order(pb: ModuleType, vl_path: str) -> None:
    """What the template sees: text parts and {"type": "image"} in the client's order (no data URLs)."""
    seen: list[Any] = []

    def encoder(prompt: str, messages: Any, tools: Any = None) -> list[int]:
        seen.append(json.loads(json.dumps(messages)))
        return [1, 2]

    real = create_tokenizer_model(pb, _params(vl_path))
    spy = TokenizerModel(pb, encoder, 64, real.images)
    url = _url(_encode(_image(30, 30)))
    [resp] = spy.execute([tok_request(pb, messages=_chat("a", _part(url), "b"))])
    assert seen == [_chat("a", {"type": "image"}, "b")]
    assert "the prompt places 0" in error_of(resp)[1].message  # the encoder placed none: refused
