"""Images through the served stack (issue #29 part 2b): the launcher with --enable-mm on the tiny
random-weight Qwen2.5-VL checkpoint, the openai SDK with data-URL image parts, streamed and not. Greedy
tokens equal transformers' Qwen2_5_VLForConditionalGeneration on its own processor's inputs (1 and 2
images of different sizes); the prefix cache reuses an image's blocks for the same image only; bad images
get 400 and the server stays healthy."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from launcher.tritonenv import TritonNotFound, locate
from tests.procs import served_stack

torch = pytest.importorskip("torch", exc_type=ModuleNotFoundError)
transformers = pytest.importorskip("transformers", exc_type=ModuleNotFoundError)
openai = pytest.importorskip("openai", exc_type=ModuleNotFoundError)

pytestmark = [pytest.mark.e2e, pytest.mark.parity]
MAX_NEW = 12
SIZES = {"a": (80, 100, 0), "b": (200, 64, 1), "a2": (80, 100, 5)}  # a2: a's size, other pixels


def _png(key: str) -> bytes:
    h, w, seed = SIZES[key]
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def _messages(*parts: str) -> list[dict[str, Any]]:
    """Parts are text, or an image key of SIZES."""
    content: list[dict[str, Any]] = []
    for x in parts:
        if x in SIZES:
            url = "data:image/png;base64," + base64.b64encode(_png(x)).decode()
            content.append({"type": "image_url", "image_url": {"url": url}})
        else:
            content.append({"type": "text", "text": x})
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def vl_path(tmp_path_factory, default_model_dir) -> str:
    from scripts.make_tiny_vl_model import make_tiny_vl_model

    return make_tiny_vl_model(str(tmp_path_factory.mktemp("tiny_vl") / "qwen2_5_vl"), default_model_dir)


@pytest.fixture(scope="module")
def reference(vl_path):
    """parts -> (transformers' prompt ids, its greedy tokens): Qwen2_5_VLProcessor (the slow PIL image
    processor) and Qwen2_5_VLForConditionalGeneration.generate."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    mp = pytest.MonkeyPatch()  # the processor insists on a video processor class (needs torchvision)
    mp.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: None)
    tok = transformers.AutoTokenizer.from_pretrained(vl_path)
    processor = transformers.Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(vl_path),
        tokenizer=tok,
        video_processor=None,
        chat_template=tok.chat_template,
    )
    mp.undo()
    vl = transformers.Qwen2_5_VLForConditionalGeneration
    model = vl.from_pretrained(vl_path, dtype=torch.float32).eval()

    def run(*parts: str) -> tuple[list[int], list[int]]:
        content = [{"type": "image"} if x in SIZES else {"type": "text", "text": x} for x in parts]
        msgs = [{"role": "user", "content": content}]
        text = processor.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        pil = [Image.open(io.BytesIO(_png(x))).convert("RGB") for x in parts if x in SIZES]
        inputs = processor(text=[text], images=pil, return_tensors="pt")
        ids = inputs["input_ids"]
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                pixel_values=inputs["pixel_values"],
                image_grid_thw=inputs["image_grid_thw"],
                mm_token_type_ids=(ids == processor.image_token_id).int(),
                max_new_tokens=MAX_NEW,
                min_new_tokens=MAX_NEW,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
        return ids[0].tolist(), out[0, ids.shape[1] :].tolist()

    return run


@pytest.fixture(scope="module")
def server(vl_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        locate()
    except TritonNotFound as e:
        pytest.skip(f"tritonserver not set up: {e}")
    run_dir = tmp_path_factory.mktemp("vl_stack") / "run"
    flags = ("--enable-mm", "--max-model-len", "1024", "--block-size", "16")
    with served_stack(vl_path, run_dir, *flags) as url:
        yield url


def _client(url: str):  # noqa: ANN202 - openai.OpenAI
    return openai.OpenAI(base_url=url + "/v1", api_key="null", max_retries=0, timeout=120)


def _ask(url: str, messages: list[dict[str, Any]], stream: bool) -> tuple[list[int], Any]:
    """(the served token ids, usage) for a greedy request of MAX_NEW tokens."""
    kw: dict[str, Any] = dict(
        model="default", messages=messages, max_tokens=MAX_NEW, temperature=0,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    client = _client(url)
    if not stream:
        chat = client.chat.completions.create(**kw)
        return list(chat.choices[0].model_extra["token_ids"]), chat.usage
    ids: list[int] = []
    usage = None
    for chunk in client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            ids.extend((chunk.choices[0].delta.model_extra or {}).get("token_ids") or [])
        if chunk.usage is not None:
            usage = chunk.usage
    return ids, usage


CASES = {
    "one-image": ("a", "What is in the picture?"),
    "two-images": ("Compare ", "b", " with", "a", "please."),
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("case", list(CASES))
def test_greedy_tokens_match_transformers(server: str, reference, case: str, stream: bool) -> None:
    prompt_ids, ref = reference(*CASES[case])
    got, usage = _ask(server, _messages(*CASES[case]), stream)
    assert got == ref
    assert usage.prompt_tokens == len(prompt_ids)  # image tokens counted


def test_prefix_cache_reuses_the_same_image_only(server: str, reference) -> None:
    parts = ("Describe ", "a", " in one word, then another.")
    prompt_ids, ref = reference(*parts)
    first = _ask(server, _messages(*parts), False)
    again = _ask(server, _messages(*parts), False)
    assert again[0] == first[0] == ref
    cached = again[1].prompt_tokens_details.cached_tokens
    assert cached == (len(prompt_ids) - 1) // 16 * 16 > 0
    other = ("Describe ", "a2", " in one word, then another.")
    other_ids, other_ref = reference(*other)
    assert len(other_ids) == len(prompt_ids) and other_ref != ref  # same size, other pixels, other answer
    got, usage = _ask(server, _messages(*other), False)
    assert got == other_ref
    assert usage.prompt_tokens_details.cached_tokens < cached  # only the text blocks before the image


def test_bad_images_get_400_and_the_server_stays_healthy(server: str) -> None:
    client = _client(server)
    bad = [
        "data:image/png;base64,iVBORw0KGgo=",  # a PNG signature and nothing else
        "data:image/png;base64,not-base64!",
        "data:image/gif;base64,R0lGODlhAQABAAAAACw=",  # unsupported type
        "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20).decode(),
    ]
    for url in bad:
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="default", messages=messages, max_tokens=2)
        assert e.value.body["param"].startswith("messages[0].content[0]"), e.value.body
    assert httpx.get(server + "/health", timeout=10).status_code == 200
    got, _ = _ask(server, _messages("a", "still there?"), False)
    assert len(got) == MAX_NEW
