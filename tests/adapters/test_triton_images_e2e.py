"""Images inside a real tritonserver (issue #29 part 2a): the rendered repository with --enable-mm on the tiny
Qwen2.5-VL checkpoint, the real tokenizer model (decoding, preprocessing, placeholder expansion) and the real
engine model over the fake executor. The image tensors cross the ensemble (empty ones for text), the engine's
door (here a text-only fake engine) answers a request with images with its typed 400, text-only requests
stream as ever, and a bad image is a 400 naming its part."""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from launcher.render import render_model_repository
from paddlellm import protocol as p
from paddlellm.config import EngineConfig
from tests.adapters.conftest import MODEL_REPOSITORY
from tests.adapters.tritonserver import Stream, ensemble_inputs, running_tritonserver

pytestmark = pytest.mark.e2e

E2E_MODELS = Path(__file__).parent / "e2e_models"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, default_model_dir: str) -> Iterator[str]:
    pytest.importorskip("torch", exc_type=ModuleNotFoundError)
    from scripts.make_tiny_vl_model import make_tiny_vl_model

    tmp = tmp_path_factory.mktemp("triton_images")
    vl = make_tiny_vl_model(str(tmp / "tiny_vl"), default_model_dir)
    params = EngineConfig(model=vl, max_model_len=4096, block_size=16, enable_mm=True).to_params()
    repo = render_model_repository(MODEL_REPOSITORY, tmp / "repo", params)
    # The tokenizer is the real one; the engine runs the fake executor over the checkpoint's vocabulary.
    shutil.copy(E2E_MODELS / "llm_engine_vl.py", repo / "llm_engine" / "1" / "model.py")
    shutil.copy(E2E_MODELS / "detokenizer.py", repo / "detokenizer" / "1" / "model.py")
    with running_tritonserver(repo, tmp, ready_timeout_s=120.0) as url:
        yield url


def _png(h: int, w: int) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _chat(*parts: Any) -> list[dict[str, Any]]:
    content = [x if isinstance(x, dict) else {"type": "text", "text": x} for x in parts]
    return [{"role": "user", "content": content}]


def _send(url: str, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    async def go() -> tuple[list[dict[str, Any]], str | None]:
        s = Stream(url, p.ENSEMBLE.name, ensemble_inputs(messages=messages, max_tokens=3), uuid.uuid4().hex)
        try:
            return await s.drain()
        finally:
            await s.close()

    return asyncio.run(go())


def test_text_chat_streams_through_the_image_aware_ensemble(server: str) -> None:
    outs, err = _send(server, [{"role": "user", "content": "hello"}])
    assert err is None and outs
    assert sum(o[p.TOKEN_IDS].size for o in outs) == 3


def test_a_request_with_images_reaches_the_engine_door(server: str) -> None:
    image = {"type": "image_url", "image_url": {"url": _png(60, 90)}}
    outs, err = _send(server, _chat("what is", image, "and", image))
    assert outs == [] and err is not None
    parsed = p.parse_error(err)
    assert type(parsed).__name__ == "InvalidRequest" and parsed.param == "messages", err
    # the engine read non-empty image tensors; this fake engine has no vision tower (the real one serves them:
    # tests/e2e/test_vl_served.py)
    assert "does not accept images" in parsed.message


def test_a_bad_image_is_refused_naming_its_part(server: str) -> None:
    bad = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    outs, err = _send(server, _chat("look", bad))
    parsed = p.parse_error(err or "")
    assert outs == [] and parsed is not None and parsed.param == "messages[0].content[1]", err
    outs, err = _send(server, [{"role": "user", "content": "still serving"}])
    assert err is None and outs
