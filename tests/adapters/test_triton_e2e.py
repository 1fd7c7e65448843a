"""The adapters inside a real tritonserver: the rendered model repository (real config.pbtxt files) with the
test models in tests/adapters/e2e_models (real adapter classes, fake executor, toy text), over gRPC
streams."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from launcher.render import render_model_repository
from paddlellm import protocol as p
from paddlellm.config import EngineConfig
from paddlellm.protocol import ABORT_PARAMETER
from tests.adapters.conftest import MODEL_REPOSITORY
from tests.adapters.tritonserver import (
    Stream,
    engine_inputs,
    ensemble_inputs,
    running_tritonserver,
    wait_engine_free,
)

pytestmark = pytest.mark.e2e

E2E_MODELS = Path(__file__).parent / "e2e_models"
MAX_MODEL_LEN = 4096


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("triton")
    params = EngineConfig(max_model_len=MAX_MODEL_LEN, block_size=16).to_params()
    repo = render_model_repository(MODEL_REPOSITORY, tmp / "repo", params)
    for name in ("tokenizer", "llm_engine", "detokenizer"):
        shutil.copy(E2E_MODELS / f"{name}.py", repo / name / "1" / "model.py")
    with running_tritonserver(repo, tmp) as url:
        yield url


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_ensemble_streams_one_response_per_token(server: str) -> None:
    async def go() -> None:
        s = Stream(server, p.ENSEMBLE.name, ensemble_inputs("hello", max_tokens=6, ignore_eos=True), "s1")
        outs, err = await s.drain()
        await s.close()
        assert err is None
        assert len(outs) == 6  # the empty FINAL response is not counted
        ids = [int(o[p.TOKEN_IDS][0]) for o in outs]
        text = "".join(o[p.TEXT_OUTPUT][0].decode() for o in outs)
        assert text == "".join(f"<{t}>" for t in ids)
        assert [int(o[p.COMPLETION_TOKENS][0]) for o in outs] == [1, 2, 3, 4, 5, 6]
        assert {int(o[p.PROMPT_TOKENS][0]) for o in outs} == {5}
        assert [o[p.FINISH_REASON][0] for o in outs] == [b""] * 5 + [b"length"]
        assert set(json.loads(outs[-1][p.ENGINE_STATS][0])) >= {"ttft_s", "e2e_s"}

    run(go())


def test_concurrent_streams_pair_text_with_their_own_tokens(server: str) -> None:
    """Only text_output goes through the detokenizer; the other outputs come straight from the engine and
    Triton pairs them per engine response. Under concurrency every response must still carry the text of
    its own ids, in order."""

    async def one(k: int) -> list[dict[str, Any]]:
        sampling = {"max_tokens": 10, "temperature": 1.0, "seed": k, "ignore_eos": True}
        s = Stream(server, p.ENSEMBLE.name, ensemble_inputs(f"prompt {k}", **sampling), uuid.uuid4().hex)
        outs, err = await s.drain()
        await s.close()
        assert err is None
        return outs

    async def go() -> list[list[dict[str, Any]]]:
        return await asyncio.gather(*(one(k) for k in range(16)))

    streams = run(go())
    for outs in streams:
        # 16 streams of a toy engine: the automatic stream interval may put several ids in one response.
        n = 0
        for o in outs:
            assert o[p.TEXT_OUTPUT][0].decode() == "".join(f"<{t}>" for t in o[p.TOKEN_IDS])
            n += len(o[p.TOKEN_IDS])
            assert int(o[p.COMPLETION_TOKENS][0]) == n
        assert n == 10 and len(outs[0][p.TOKEN_IDS]) == 1  # the first token alone, at once
        assert [o[p.FINISH_REASON][0] for o in outs] == [b""] * (len(outs) - 1) + [b"length"]
    assert len({tuple(int(o[p.TOKEN_IDS][0]) for o in outs) for outs in streams}) > 1  # seeds differ


def test_ensemble_resumes_a_cut_stream_after_the_ids_already_sent(server: str) -> None:
    """resume_ids goes straight from the ensemble to the engine; an empty one (every other test) is a
    fresh request."""
    # stream_interval 1: one response per token (the toy engine is fast enough for auto to coalesce)
    sampling = {"max_tokens": 8, "temperature": 0.8, "seed": 11, "ignore_eos": True, "stream_interval": 1}

    async def go(resume: list[int]) -> list[dict[str, Any]]:
        inputs = ensemble_inputs("hello", resume_ids=resume, **sampling)
        s = Stream(server, p.ENSEMBLE.name, inputs, uuid.uuid4().hex)
        outs, err = await s.drain()
        await s.close()
        assert err is None
        return outs

    full = run(go([]))
    ids = [int(o[p.TOKEN_IDS][0]) for o in full]
    resumed = run(go(ids[:3]))
    assert [int(o[p.TOKEN_IDS][0]) for o in resumed] == ids[3:]
    assert [o[p.TEXT_OUTPUT][0] for o in resumed] == [o[p.TEXT_OUTPUT][0] for o in full[3:]]
    assert [int(o[p.COMPLETION_TOKENS][0]) for o in resumed] == [4, 5, 6, 7, 8]
    assert {int(o[p.PROMPT_TOKENS][0]) for o in resumed} == {5}
    [done] = run(go(ids))  # nothing left: one final "length" response without tokens
    assert done[p.FINISH_REASON][0] == b"length" and done[p.TOKEN_IDS].size == 0


@pytest.mark.parametrize(
    ("prompt", "sampling", "param"),
    [("x" * 100, {"max_tokens": MAX_MODEL_LEN}, "prompt"), ("hi", {"temperature": 9}, "temperature")],
)
def test_validation_errors_reach_the_client_typed(server: str, prompt: str, sampling: dict, param: str):
    async def go() -> None:
        s = Stream(server, p.ENSEMBLE.name, ensemble_inputs(prompt, **sampling), uuid.uuid4().hex)
        outs, err = await s.drain()
        await s.close()
        assert outs == [] and err is not None
        parsed = p.parse_error(err)
        assert type(parsed).__name__ == "InvalidRequest" and parsed.param == param, err
        assert "Traceback" not in err and "At:" not in err

    run(go())


def test_ensemble_cancel_reaches_the_engine(server: str) -> None:
    async def go() -> float:
        rid = uuid.uuid4().hex
        s = Stream(server, p.ENSEMBLE.name, ensemble_inputs("long", max_tokens=1000, ignore_eos=True), rid)
        for _ in range(3):
            out, err, _ = await s.next()
            assert err is None and out
        await s.close()  # as the gateway does when its client disconnects
        return await wait_engine_free(server, rid)

    freed = run(go())
    print(f"ensemble cancel freed the engine request in {freed:.3f}s")
    assert freed < 5.0  # 1000 steps would take 20 s


def test_direct_engine_cancel_is_polled(server: str) -> None:
    async def go() -> float:
        rid = uuid.uuid4().hex
        sampling = json.dumps({"max_tokens": 1000, "ignore_eos": True})
        s = Stream(server, p.LLM_ENGINE.name, engine_inputs([7, 8, 9], sampling), rid)
        for _ in range(2):
            out, err, _ = await s.next()
            assert err is None and out
        await s.close()
        return await wait_engine_free(server, rid)

    freed = run(go())
    print(f"direct cancel freed the engine request in {freed:.3f}s")
    assert freed < 5.0


def test_abort_request_ends_a_live_stream(server: str) -> None:
    async def go() -> None:
        rid = uuid.uuid4().hex
        s = Stream(server, p.ENSEMBLE.name, ensemble_inputs("abc", max_tokens=1000, ignore_eos=True), rid)
        out, err, _ = await s.next()
        assert err is None
        abort = Stream(server, p.LLM_ENGINE.name, engine_inputs([], ""), rid, **{ABORT_PARAMETER: True})
        assert await abort.drain() == ([], None)  # the abort request itself: FINAL only
        await abort.close()
        outs, err = await s.drain()
        await s.close()
        assert err is None and outs[-1][p.FINISH_REASON][0] == b"abort"

    run(go())


def test_vllm_backend_names_through_the_ensemble(server: str) -> None:
    """Only Triton's vLLM-backend inputs (every other ensemble input left out): streamed, then not streamed
    (one response), the prompt leading the text unless excluded."""
    import numpy as np
    from tritonclient.grpc import InferInput

    from tests.adapters.tritonserver import str_input

    def flag(name: str, value: bool) -> InferInput:
        t = InferInput(name, [1], "BOOL")
        t.set_data_from_numpy(np.array([value], np.bool_))
        return t

    params = str_input(p.SAMPLING_PARAMETERS, json.dumps({"max_tokens": "5", "ignore_eos": True}))

    async def go(*inputs: InferInput) -> list[dict[str, Any]]:
        s = Stream(
            server, p.ENSEMBLE.name, [str_input(p.TEXT_INPUT, "hello"), params, *inputs], uuid.uuid4().hex
        )
        outs, err = await s.drain()
        await s.close()
        assert err is None, err
        return outs

    streamed = run(go(flag(p.STREAM, True), flag(p.EXCLUDE_INPUT_IN_OUTPUT, True)))
    assert len(streamed) == 5
    text = "".join(o[p.TEXT_OUTPUT][0].decode() for o in streamed)
    assert text == "".join(f"<{int(t)}>" for o in streamed for t in o[p.TOKEN_IDS])
    [whole] = run(go())  # vLLM's defaults: no streaming, the prompt first
    ids = [int(t) for t in whole[p.TOKEN_IDS]]
    prompt_text = "".join(f"<{3 + ord(c) % 900}>" for c in "hello")
    assert len(ids) == 5 and whole[p.TEXT_OUTPUT][0].decode() == prompt_text + "".join(f"<{t}>" for t in ids)
    assert whole[p.FINISH_REASON][0] == b"length"


def test_logprobs_through_the_ensemble(server: str) -> None:
    """sampling_parameters {"logprobs": 2} (vLLM's name): the ensemble's `logprobs` output, straight from the
    engine, has one entry per token id with 2 alternatives; `return_logprobs` alone asks for the chosen
    tokens' logprobs only; a request that asks nothing gets ""."""
    import numpy as np
    from tritonclient.grpc import InferInput

    from tests.adapters.tritonserver import str_input

    flag = InferInput(p.RETURN_LOGPROBS, [1], "BOOL")
    flag.set_data_from_numpy(np.array([True], np.bool_))

    async def go(sampling_parameters: dict, *extra: InferInput) -> list[dict[str, Any]]:
        params = str_input(p.SAMPLING_PARAMETERS, json.dumps({"max_tokens": 5, **sampling_parameters}))
        inputs = [str_input(p.TEXT_INPUT, "hello"), params, *extra]
        s = Stream(server, p.ENSEMBLE.name, inputs, uuid.uuid4().hex)
        outs, err = await s.drain()
        await s.close()
        assert err is None, err
        return outs

    [whole] = run(go({"logprobs": 2}))
    entries = json.loads(whole[p.LOGPROBS][0])["content"]
    assert [e["id"] for e in entries] == whole[p.TOKEN_IDS].tolist() and len(entries) == 5
    assert all(len(e["top_logprobs"]) == 2 for e in entries)
    assert [e["token"] for e in entries] == [f"<{e['id']}>" for e in entries]  # the test model's vocabulary
    [flagged] = run(go({}, flag))
    assert all(e["top_logprobs"] == [] for e in json.loads(flagged[p.LOGPROBS][0])["content"])
    [plain] = run(go({}))
    assert plain[p.LOGPROBS][0] == b""
