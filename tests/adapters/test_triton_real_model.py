"""The real model repository (model.py files and all) in a real tritonserver with the default model: what the
ensemble streams equals the offline engine's greedy output, limits come back typed, cancellation frees the
engine. Slow: the engine loads SmolLM2-135M in the stub (about 30 s here)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import pytest

from launcher.render import render_model_repository
from paddlellm import protocol as p
from paddlellm.config import EngineConfig
from tests.adapters.conftest import MODEL_REPOSITORY
from tests.adapters.tritonserver import (
    Stream,
    ensemble_inputs,
    running_tritonserver,
    str_input,
    wait_engine_free,
)

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


def test_logprobs_by_the_vllm_convention(server: str) -> None:
    """sampling_parameters {"logprobs": 2} (vLLM's name): the ensemble's `logprobs` output has one entry per
    token id with two alternatives, the greedy token its own top-1, and the entries' bytes are the text. A
    request that does not ask gets ""."""
    prompt = "The capital of France is"
    params = json.dumps({"max_tokens": 6, "temperature": 0, "logprobs": 2})

    async def go(inputs) -> list[dict]:
        s = Stream(server, p.ENSEMBLE.name, inputs, uuid.uuid4().hex)
        outs, err = await s.drain(timeout=120)
        await s.close()
        assert err is None, err
        return outs

    [out] = asyncio.run(go([str_input(p.TEXT_INPUT, prompt), str_input(p.SAMPLING_PARAMETERS, params)]))
    entries = json.loads(out[p.LOGPROBS][0])["content"]
    assert [e["id"] for e in entries] == out[p.TOKEN_IDS].tolist() and len(entries) == 6
    for e in entries:
        assert len(e["top_logprobs"]) == 2 and e["top_logprobs"][0]["id"] == e["id"] and e["rank"] == 1
        assert (
            e["logprob"] == e["top_logprobs"][0]["logprob"] <= 0
            and e["top_logprobs"][1]["logprob"] <= e["logprob"]
        )
    text = out[p.TEXT_OUTPUT][0].decode()  # the vLLM backend's default: the prompt, then the output
    assert (
        text.startswith(prompt)
        and text[len(prompt) :] == bytes(b for e in entries for b in e["bytes"]).decode()
    )
    plain = asyncio.run(go(ensemble_inputs(prompt, max_tokens=2, temperature=0.0)))
    assert {o[p.LOGPROBS][0] for o in plain} == {b""}
