"""The real model repository (model.py files and all) in a real tritonserver with the default model: what the
ensemble streams equals the offline engine's greedy output, limits come back typed, cancellation frees the
engine. Slow: the engine loads SmolLM2-135M in the stub (about 30 s here)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from launcher.render import render_model_repository
from paddlellm import protocol as p
from paddlellm.config import EngineConfig
from tests.adapters.conftest import MODEL_REPOSITORY
from tests.adapters.tritonserver import Stream, ensemble_inputs, running_tritonserver, wait_engine_free

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_MODEL_LEN = 512
CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def config(default_model_dir: str) -> EngineConfig:
    return EngineConfig(
        model=default_model_dir, max_model_len=MAX_MODEL_LEN, block_size=16, max_num_seqs=4, num_threads=2
    )


@pytest.fixture(scope="module")
def server(config: EngineConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("triton_real")
    repo = render_model_repository(MODEL_REPOSITORY, tmp / "repo", config.to_params())
    with running_tritonserver(repo, tmp, ready_timeout_s=300) as url:
        yield url


def test_chat_stream_matches_the_offline_engine(server: str, config: EngineConfig) -> None:
    from paddlellm.llm import LLM
    from paddlellm.sampling import SamplingParams

    async def go() -> tuple[list[int], str, list[bytes]]:
        s = Stream(
            server, p.ENSEMBLE.name, ensemble_inputs(messages=CHAT, max_tokens=24, temperature=0.0), "c1"
        )
        outs, err = await s.drain(timeout=120)
        await s.close()
        assert err is None, err
        ids = [int(t) for o in outs for t in o[p.TOKEN_IDS]]
        return ids, "".join(o[p.TEXT_OUTPUT][0].decode() for o in outs), [o[p.FINISH_REASON][0] for o in outs]

    ids, text, reasons = asyncio.run(go())
    assert reasons[-1] in (b"stop", b"length") and set(reasons[:-1]) <= {b""}
    with LLM(config.model, max_model_len=MAX_MODEL_LEN, block_size=16, num_threads=2) as llm:
        [offline] = llm.chat([CHAT], SamplingParams(max_tokens=24, temperature=0.0))
    assert ids == list(offline.token_ids)
    assert text == offline.text
    assert "Paris" in text


def test_too_long_prompt_names_the_limit(server: str) -> None:
    async def go() -> str | None:
        s = Stream(server, p.ENSEMBLE.name, ensemble_inputs("word " * 600, max_tokens=16), uuid.uuid4().hex)
        outs, err = await s.drain(timeout=60)
        await s.close()
        assert outs == []
        return err

    err = asyncio.run(go())
    parsed = p.parse_error(err or "")
    assert type(parsed).__name__ == "InvalidRequest" and parsed.param == "prompt", err
    assert f"max_model_len={MAX_MODEL_LEN}" in parsed.message


def test_cancel_frees_the_engine(server: str) -> None:
    async def go() -> float:
        rid = uuid.uuid4().hex
        sampling = {"max_tokens": 400, "temperature": 0.8, "ignore_eos": True}
        s = Stream(server, p.ENSEMBLE.name, ensemble_inputs("Once upon a time", **sampling), rid)
        for _ in range(2):
            out, err, _ = await s.next()
            assert err is None and out
        await s.close()
        return await wait_engine_free(server, rid, timeout=30)

    assert asyncio.run(go()) < 10.0  # 400 tokens would take over a minute here


def test_sampling_json_passes_through_unchanged(server: str) -> None:
    """Seeded sampling gives the same tokens twice (the same SamplingParams reach the engine each time)."""

    async def once() -> list[int]:
        sampling = {"max_tokens": 8, "temperature": 1.0, "top_p": 0.9, "seed": 1234}
        s = Stream(server, p.ENSEMBLE.name, ensemble_inputs("The sky is", **sampling), uuid.uuid4().hex)
        outs, err = await s.drain(timeout=120)
        await s.close()
        assert err is None, err
        return [int(t) for o in outs for t in o[p.TOKEN_IDS]]

    first, second = asyncio.run(once()), asyncio.run(once())
    assert first == second and len(first) == 8
