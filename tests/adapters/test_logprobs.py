"""llm_engine's `logprobs` output: the JSON of paddlellm/triton/logprobs_json.py, and what EngineModel puts in
it per response (aligned with token_ids, coalesced responses, prompt entries once, "" when not asked)."""

from __future__ import annotations

import json
import math
import time
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from paddlellm import protocol as p
from paddlellm.engine.outputs import RequestOutput
from paddlellm.step_types import TokenLogprobs
from paddlellm.triton.engine_model import EngineModel
from paddlellm.triton.logprobs_json import LogprobsJson, checkpoint_token_bytes, token_text
from paddlellm.triton.stream_pacer import StreamPacer
from tests.adapters.test_engine_model import engine_request, outputs, wait_done


def toy_bytes(token_id: int) -> bytes:
    return b"" if token_id == 0 else f"<{token_id}>".encode()


def lp(token_id: int, top: int = 2) -> TokenLogprobs:
    """A deterministic entry: logprob -token_id/100, the top `top` alternatives token_id, token_id+1, ..."""
    alts = tuple((token_id + k, -(token_id + k) / 100) for k in range(top))
    return TokenLogprobs(token_id, -token_id / 100, 1, alts)


# ------------------------------------------------------------------------------------------ the JSON


def test_token_text_is_utf8_or_the_bytes_convention() -> None:
    assert token_text(b"Hello") == "Hello"
    assert token_text("’".encode()) == "’"
    assert token_text(b"\xe2\x80") == "bytes:\\xe2\\x80"
    assert token_text(b"") == ""


def test_not_asked_is_the_empty_string() -> None:
    assert LogprobsJson(lambda: toy_bytes).build(None, None) == ""


def test_entries_carry_id_token_bytes_logprob_rank_and_top() -> None:
    text = LogprobsJson(lambda: toy_bytes).build([lp(7), TokenLogprobs(0, -math.inf, 5, ((9, -0.5),))])
    data = json.loads(text)
    assert set(data) == {"content"}
    first, second = data["content"]
    assert first == {
        "id": 7,
        "token": "<7>",
        "bytes": list(b"<7>"),
        "logprob": -0.07,
        "rank": 1,
        "top_logprobs": [
            {"id": 7, "token": "<7>", "bytes": list(b"<7>"), "logprob": -0.07},
            {"id": 8, "token": "<8>", "bytes": list(b"<8>"), "logprob": -0.08},
        ],
    }
    # A special token (no bytes) and a logprob that is not finite (vLLM writes -9999.0).
    assert second["token"] == "" and second["bytes"] == [] and second["logprob"] == -9999.0
    assert second["rank"] == 5 and second["top_logprobs"][0]["id"] == 9


def test_prompt_entries_start_with_null() -> None:
    data = json.loads(LogprobsJson(lambda: toy_bytes).build(None, (None, lp(3), lp(4))))
    assert set(data) == {"prompt"}
    assert data["prompt"][0] is None and [e["id"] for e in data["prompt"][1:]] == [3, 4]
    both = json.loads(LogprobsJson(lambda: toy_bytes).build([lp(5)], (None, lp(3))))
    assert [e["id"] for e in both["content"]] == [5] and len(both["prompt"]) == 2


def test_without_a_vocabulary_tokens_are_empty() -> None:
    [entry] = json.loads(LogprobsJson().build([lp(7, top=0)]))["content"]
    assert entry["token"] == "" and entry["bytes"] == [] and entry["top_logprobs"] == []


def test_the_vocabulary_loads_once_at_first_use() -> None:
    loads: list[int] = []

    def load():
        loads.append(1)
        return toy_bytes

    table = LogprobsJson(load)
    assert loads == []  # nothing at construction: requests without logprobs never load it
    table.build([lp(1)])
    table.build([lp(2)])
    assert loads == [1]


def test_checkpoint_vocabulary_bytes_and_tokens(default_model_dir: str) -> None:
    """SmolLM2's byte-level BPE: a whole word, an emoji split across two tokens (neither valid UTF-8 alone),
    a 3-byte character in one token, a special token; the bytes join to the text."""
    from paddlellm.text.tokenizer import TextTokenizer

    tok = TextTokenizer.from_dir(default_model_dir)
    ids = tok.encode("Hello 😀 ’", add_special_tokens=False)
    [eos] = tok.encode("<|im_end|>", add_special_tokens=False)
    assert eos in tok.special_ids
    data = json.loads(
        LogprobsJson(checkpoint_token_bytes(default_model_dir)).build(
            [TokenLogprobs(i, -1.0, 1, ((i, -1.0),)) for i in [*ids, eos]]
        )
    )
    entries = data["content"]
    assert [e["id"] for e in entries] == [*ids, eos]
    assert entries[0]["token"] == "Hello" and entries[0]["bytes"] == list(b"Hello")
    split = [e for e in entries if e["token"].startswith("bytes:")]
    assert len(split) == 2  # " \xf0\x9f\x98" and "\x80": the emoji's two halves
    for e in split:
        assert e["token"] == "bytes:" + "".join(f"\\x{b:02x}" for b in e["bytes"])
    assert entries[-1]["token"] == "" and entries[-1]["bytes"] == []  # skipped by detokenization
    assert bytes(b for e in entries for b in e["bytes"]).decode() == "Hello 😀 ’"
    assert all(e["top_logprobs"][0]["token"] == e["token"] for e in entries)


# ------------------------------------------------------------------------------------------ per response


class ScriptedLoop:
    """Answers every add with the given outputs, in order, from the calling thread."""

    def __init__(self, script: list[RequestOutput]) -> None:
        self.script = script

    def add(self, request_id, prompt_ids, sampling_params, sink, resume_ids=(), images=None):
        for out in self.script:
            sink(out)
        return sampling_params

    def abort(self, request_id: str) -> None: ...

    def healthy(self) -> bool:
        return True

    def stop(self, timeout: float | None = 30.0) -> None: ...


def run_script(
    pb: ModuleType, script: list[RequestOutput], sampling: dict[str, Any]
) -> list[dict[str, np.ndarray]]:
    m = EngineModel(
        pb,
        lambda before_step: ScriptedLoop(script),
        cancel_poll_s=0.0,
        pacer=StreamPacer(budget_per_s=math.inf),
        logprobs=LogprobsJson(lambda: toy_bytes),
    )
    try:
        req = engine_request(pb, "lp", [1, 2, 3, 4], sampling)
        m.execute([req])
        wait_done(req.get_response_sender())
    finally:
        m.finalize()
    return outputs(req.get_response_sender())


def script(
    steps: list[list[int]], with_logprobs: bool = True, prompt: tuple | None = None
) -> list[RequestOutput]:
    """One output per step's ids (the last finished); the first also carries `prompt` entries."""
    outs, n = [], 0
    for k, ids in enumerate(steps):
        n += len(ids)
        last = k == len(steps) - 1
        outs.append(
            RequestOutput(
                "lp",
                tuple(ids),
                4,
                n,
                finished=last,
                finish_reason="length" if last else None,
                logprobs=tuple(lp(i) for i in ids) if with_logprobs else None,
                prompt_logprobs=prompt if k == 0 else None,
            )
        )
    return outs


def logprobs_of(out: dict[str, np.ndarray]) -> dict[str, Any] | None:
    text = out[p.LOGPROBS][0].decode()
    return json.loads(text) if text else None


def test_each_response_carries_the_entries_of_its_tokens(pb: ModuleType) -> None:
    outs = run_script(pb, script([[11], [12], [13]]), {"logprobs": 2, "stream_interval": 1})
    assert len(outs) == 3
    for o in outs:
        data = logprobs_of(o)
        assert data is not None and set(data) == {"content"}
        assert [e["id"] for e in data["content"]] == o[p.TOKEN_IDS].tolist()
        assert all(len(e["top_logprobs"]) == 2 for e in data["content"])
    assert outs[0][p.LOGPROBS].dtype == np.object_


@pytest.mark.parametrize("sampling", [{"stream_interval": 3}, {"stream": False}])
def test_coalesced_responses_carry_every_held_entry_in_order(pb: ModuleType, sampling: dict) -> None:
    steps = [[11], [12], [13], [14, 15], [16], [17]]
    outs = run_script(pb, script(steps), {"logprobs": 2, **sampling})
    assert len(outs) < len(steps)  # coalesced
    ids = []
    for o in outs:
        entries = logprobs_of(o)["content"]
        assert [e["id"] for e in entries] == o[p.TOKEN_IDS].tolist()
        assert [e["logprob"] for e in entries] == [-i / 100 for i in o[p.TOKEN_IDS].tolist()]
        ids += o[p.TOKEN_IDS].tolist()
    assert ids == [i for s in steps for i in s]


def test_prompt_entries_come_on_the_first_response_only(pb: ModuleType) -> None:
    prompt = (None, lp(2), lp(3), lp(4))
    outs = run_script(pb, script([[11], [12]], prompt=prompt), {"logprobs": 1, "prompt_logprobs": 2})
    first, second = (logprobs_of(o) for o in outs)
    assert first["prompt"][0] is None and [e["id"] for e in first["prompt"][1:]] == [2, 3, 4]
    assert "prompt" not in second and [e["id"] for e in second["content"]] == [12]


def test_prompt_entries_of_a_tokenless_first_output_wait_for_the_first_response(pb: ModuleType) -> None:
    """The engine may report the prompt's entries on an output without tokens (the end of a chunked
    prefill): they ride on the next response sent."""
    prompt = (None, lp(2))
    steps = [
        RequestOutput("lp", (), 4, 0, prompt_logprobs=prompt),
        *script([[11], [12]], with_logprobs=False),
    ]
    outs = run_script(pb, steps, {"prompt_logprobs": 0})
    assert [logprobs_of(o) for o in outs] == [
        {"prompt": [None, json.loads(LogprobsJson(lambda: toy_bytes).entry(lp(2)))]},
        None,
    ]


def test_requests_that_did_not_ask_get_the_empty_string(pb: ModuleType) -> None:
    outs = run_script(pb, script([[11], [12]], with_logprobs=False), {"stream_interval": 1})
    assert [o[p.LOGPROBS][0] for o in outs] == [b"", b""]


def test_a_failing_build_is_the_request_s_error_not_a_hang(
    pb: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    def broken():
        raise RuntimeError("no tokenizer here")

    m = EngineModel(
        pb, lambda before_step: ScriptedLoop(script([[11]])), cancel_poll_s=0.0, logprobs=LogprobsJson(broken)
    )
    try:
        req = engine_request(pb, "lp", [1, 2], {"logprobs": 0})
        m.execute([req])
        sender = req.get_response_sender()
        assert sender.closed.wait(10)
        time.sleep(0.01)
    finally:
        m.finalize()
    [sent] = sender.sent
    assert sent.flags == pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL and sent.response.has_error()
    assert "internal error" in sent.response.error().message()
    assert "could not build a response" in caplog.text
    caplog.clear()  # logged on purpose (no_failed_sends checks the rest)
