"""logprobs, top_logprobs, echo, prompt_logprobs and n through the gateway, against the fake Triton client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

from gateway.app import create_app
from gateway.chunk_shaper import ChunkShaper
from gateway.limits import StreamSlots
from gateway.logprobs import EntryAligner
from gateway.openai_errors import ApiError
from gateway.openai_schema import ChatCompletion, ChatCompletionChunk, Completion
from gateway.settings import GatewaySettings
from gateway.translate import EnsembleResponse
from paddlellm.sampling import SamplingParams
from tests.fakes.triton_client import DEFAULT_REPLY, FakeTritonClient, token_text
from tests.gateway.test_gateway_api import CHAT, COMPLETION, REPLY_IDS, REPLY_TEXT, sse_events

EOS = 2


def validate(shape: Any, value: Any) -> Any:
    """Extra keys are forbidden by the TypedDicts' config: this is the exact OpenAI shape."""
    return TypeAdapter(shape).validate_python(value, strict=True)


def _client(fake: FakeTritonClient, **settings: Any) -> TestClient:
    return TestClient(
        create_app(GatewaySettings(served_model_name="smol", max_model_len=256, **settings), fake)
    )


@pytest.fixture
def fake() -> FakeTritonClient:
    return FakeTritonClient(max_model_len=256, eos_id=EOS)


@pytest.fixture
def client(fake: FakeTritonClient) -> Iterator[TestClient]:
    with _client(fake) as c:
        yield c


def _chat(client: TestClient, **kw: Any) -> dict[str, Any]:
    r = client.post("/v1/chat/completions", json={**CHAT, **kw})
    assert r.status_code == 200, r.text
    return validate(ChatCompletion, r.json())


def _chat_stream(client: TestClient, **kw: Any) -> list[dict[str, Any]]:
    r = client.post("/v1/chat/completions", json={**CHAT, **kw, "stream": True})
    assert r.status_code == 200, r.text
    return [validate(ChatCompletionChunk, c) for c in sse_events(r.text)]


def _completion(client: TestClient, stream: bool = False, **kw: Any) -> Any:
    r = client.post("/v1/completions", json={**COMPLETION, **kw, "stream": stream})
    assert r.status_code == 200, r.text
    if stream:
        return [validate(Completion, c) for c in sse_events(r.text)]
    return validate(Completion, r.json())


def _joined(entries: list[dict[str, Any]]) -> str:
    return b"".join(bytes(e["bytes"]) for e in entries).decode("utf-8")


# ---------------------------------------------------------------------------------------------- chat


def test_chat_logprobs_shape_values_and_bytes(client: TestClient, fake: FakeTritonClient) -> None:
    body = _chat(client, logprobs=True, top_logprobs=3)
    choice = body["choices"][0]
    content = choice["logprobs"]["content"]
    assert choice["message"]["content"] == REPLY_TEXT
    assert _joined(content) == REPLY_TEXT  # the emoji's halves join back; the EOS entry is left out
    assert len(content) == len(REPLY_IDS)  # one per generated token, not the EOS that ended it
    assert choice["token_ids"] == [*REPLY_IDS, EOS]
    assert [e["logprob"] for e in content] == pytest.approx([-0.1 * n for n in range(1, len(content) + 1)])
    for e in content:
        assert len(e["top_logprobs"]) == 3
        top1 = e["top_logprobs"][0]
        assert (top1["token"], top1["bytes"], top1["logprob"]) == (e["token"], e["bytes"], e["logprob"])
    assert content[9]["token"] == token_text(b" \xf0\x9f").replace("bytes:", "bytes:")  # not UTF-8 alone
    assert content[9]["token"].startswith("bytes:")  # OpenAI's form for bytes that are no text alone
    assert json.loads(fake.streams[-1].inputs["sampling"])["logprobs"] == 3


def test_chat_logprobs_true_alone_means_no_alternatives(client: TestClient, fake: FakeTritonClient) -> None:
    content = _chat(client, logprobs=True)["choices"][0]["logprobs"]["content"]
    assert all(e["top_logprobs"] == [] for e in content)
    assert json.loads(fake.streams[-1].inputs["sampling"])["logprobs"] == 0


def test_chat_without_logprobs_is_null_and_costs_nothing(client: TestClient, fake: FakeTritonClient) -> None:
    assert _chat(client)["choices"][0]["logprobs"] is None
    assert _chat(client, logprobs=False)["choices"][0]["logprobs"] is None
    assert json.loads(fake.streams[-1].inputs["sampling"])["logprobs"] is None
    assert all(c["choices"][0]["logprobs"] is None for c in _chat_stream(client) if c["choices"])


def test_chat_streamed_entries_equal_non_streamed(client: TestClient) -> None:
    plain = _chat(client, logprobs=True, top_logprobs=2)["choices"][0]["logprobs"]["content"]
    chunks = _chat_stream(client, logprobs=True, top_logprobs=2)
    streamed = [e for c in chunks for e in c["choices"][0]["logprobs"]["content"]]
    assert streamed == plain
    # Each chunk carries the entries of its own text: their bytes join to the chunk's content.
    for c in chunks:
        assert _joined(c["choices"][0]["logprobs"]["content"]) == c["choices"][0]["delta"]["content"]


@pytest.mark.parametrize(
    ("stop", "content"),
    [
        ("capital", "Paris is the "),  # at a token boundary
        ("apit", "Paris is the c"),  # inside a token: " capital" trimmed to " c"
        ("好", "Paris is the capital of France. 你"),
        ("\U0001f30d", "Paris is the capital of France. 你好 "),  # inside the emoji split over two tokens
    ],
)
def test_stop_string_trims_entries_with_the_text(client: TestClient, stop: str, content: str) -> None:
    for stream in (False, True):
        if stream:
            chunks = _chat_stream(client, logprobs=True, stop=[stop])
            text = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
            entries = [e for c in chunks for e in c["choices"][0]["logprobs"]["content"]]
        else:
            choice = _chat(client, logprobs=True, stop=stop)["choices"][0]
            text, entries = choice["message"]["content"], choice["logprobs"]["content"]
        assert text == content
        assert _joined(entries) == content
    if stop == "apit":
        assert entries[-1]["token"] == " c" and entries[-1]["bytes"] == list(b" c")


def test_entry_aligner_holds_entries_until_their_text_and_trims_at_a_cut() -> None:
    a = EntryAligner()
    a.add([{"bytes": list(b"ab")}, {"bytes": list(b"cd")}, {"bytes": list(b"ef")}])
    assert [off for _, off in a.release("a")] == []
    assert [(e["bytes"], off) for e, off in a.release("bc")] == [(list(b"ab"), 0)]
    assert [(e["token"], off) for e, off in a.cut()] == [("c", 2)]  # "cd" cut to "c"; "ef" dropped
    b = EntryAligner()
    b.add([{"bytes": list("é".encode())}, {"bytes": list(b"x")}])
    assert [off for _, off in b.release("éx")] == [0, 1]  # character offsets, not bytes


# --------------------------------------------------------------------------------------- completions


def test_completion_logprobs_shape_and_offsets(client: TestClient, fake: FakeTritonClient) -> None:
    body = _completion(client, logprobs=2)
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == REPLY_TEXT
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"])
    assert len(lp["tokens"]) == len(REPLY_IDS)
    assert lp["tokens"][0] == "Paris" and lp["top_logprobs"][0] == {
        "Paris": -0.1,
        "alt1": pytest.approx(-2.1),
    }
    # text_offset: each token's character offset in the text.
    pieces = [t for _, t in DEFAULT_REPLY]
    offsets, at = [], 0
    for i, p in enumerate(pieces):
        offsets.append(at if i != 10 else at - 1)  # token 111 starts inside the emoji (after its space)
        at += len(p)
    assert lp["text_offset"][:10] == offsets[:10]
    assert json.loads(fake.streams[-1].inputs["sampling"])["logprobs"] == 2


def test_completion_streamed_logprobs_equal_non_streamed(client: TestClient) -> None:
    plain = _completion(client, logprobs=1)["choices"][0]["logprobs"]
    chunks = _completion(client, stream=True, logprobs=1)
    merged: dict[str, list[Any]] = {k: [] for k in plain}
    for c in chunks:
        for k in merged:
            merged[k] += c["choices"][0]["logprobs"][k]
    assert merged == plain


def test_echo_with_logprobs_puts_the_prompt_first(client: TestClient, fake: FakeTritonClient) -> None:
    prompt = COMPLETION["prompt"]
    for stream in (False, True):
        got = _completion(client, stream=stream, echo=True, logprobs=1, max_tokens=3)
        if stream:
            assert got[0]["choices"][0]["text"].startswith(prompt)  # the prompt is the first chunk's text
            text = "".join(c["choices"][0]["text"] for c in got)
            lp: dict[str, list[Any]] = {
                "tokens": [],
                "token_logprobs": [],
                "top_logprobs": [],
                "text_offset": [],
            }
            for c in got:
                for k in lp:
                    lp[k] += c["choices"][0]["logprobs"][k]
        else:
            text, lp = got["choices"][0]["text"], got["choices"][0]["logprobs"]
            assert got["choices"][0]["token_ids"] == REPLY_IDS[:3]  # generated ids only
        assert text == prompt + "Paris is the"
        words = prompt.split()
        assert lp["tokens"] == [words[0]] + [" " + w for w in words[1:]] + ["Paris", " is", " the"]
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None  # as OpenAI
        assert lp["token_logprobs"][1] == pytest.approx(-1.01)
        starts = [
            text.index(t, 0 if i == 0 else lp["text_offset"][i - 1] + 1) for i, t in enumerate(lp["tokens"])
        ]
        assert lp["text_offset"] == starts
    sampling = json.loads(fake.streams[-1].inputs["sampling"])
    assert (sampling["prompt_logprobs"], sampling["logprobs"], sampling["echo"]) == (1, 1, False)


def test_echo_without_logprobs_and_stop_strings_skip_the_prompt(client: TestClient) -> None:
    body = _completion(client, echo=True, stop=["capital"], max_tokens=8)  # "capital" is in the prompt too
    assert body["choices"][0]["text"] == COMPLETION["prompt"] + "Paris is the "
    assert body["choices"][0]["logprobs"] is None


def test_vllm_prompt_logprobs(client: TestClient, fake: FakeTritonClient) -> None:
    choice = _completion(client, prompt_logprobs=2, max_tokens=2)["choices"][0]
    plp = choice["prompt_logprobs"]
    assert plp[0] is None and len(plp) == len(COMPLETION["prompt"].split())
    assert plp[1]["1001"] == {"logprob": pytest.approx(-1.01), "rank": 1, "decoded_token": " capital"}
    assert plp[1]["901"]["rank"] == 2
    assert choice["logprobs"] is None
    chat = _chat(client, prompt_logprobs=0, max_tokens=2)
    assert chat["prompt_logprobs"][0] is None and list(chat["prompt_logprobs"][1]) == ["1001"]
    first = _chat_stream(client, prompt_logprobs=0, max_tokens=2)[0]
    assert first["prompt_logprobs"] == chat["prompt_logprobs"]


def test_top_k_and_min_p_reach_the_engine(client: TestClient, fake: FakeTritonClient) -> None:
    _chat(client, top_k=5, min_p=0.1)
    sampling = SamplingParams.from_json(fake.streams[-1].inputs["sampling"])
    assert (sampling.top_k, sampling.min_p) == (5, 0.1)


# -------------------------------------------------------------------------------------------------- n


def _seeded(prompt: str, messages: list[dict[str, Any]], sp: SamplingParams) -> tuple[tuple[int, str], ...]:
    """A reply that depends on the seed (greedy: always the same)."""
    k = 0 if sp.temperature == 0 or sp.seed is None else sp.seed % 5
    return tuple((200 + k * 10 + i, f" s{k}t{i}") for i in range(4))


def test_n_choices_usage_indices_and_prefill_once() -> None:
    fake = FakeTritonClient(max_model_len=256, script=_seeded, prefix_cache=True)
    with _client(fake) as client:
        body = _chat(client, n=3, seed=7, max_tokens=4, temperature=0.8)
        assert [c["index"] for c in body["choices"]] == [0, 1, 2]
        texts = [c["message"]["content"] for c in body["choices"]]
        assert texts == [" s2t0 s2t1 s2t2 s2t3", " s3t0 s3t1 s3t2 s3t3", " s4t0 s4t1 s4t2 s4t3"]  # seed + i
        streams = fake.streams[-3:]
        assert [s.request_id for s in streams] == [f"{body['id']}-{i}" for i in range(3)]
        assert [json.loads(s.inputs["sampling"])["seed"] for s in streams] == [7, 8, 9]
        # The first alone until its first response; the others then find the prompt in the prefix cache.
        assert all(s.opened_at > streams[0].first_sent_at for s in streams[1:])
        assert [s.prefilled for s in streams] == [True, False, False]
        usage = body["usage"]
        prompt_tokens = usage["prompt_tokens"]
        assert (usage["completion_tokens"], usage["total_tokens"]) == (12, prompt_tokens + 12)
        assert usage["prompt_tokens_details"]["cached_tokens"] == 0  # the first choice's
        again = _chat(client, n=3, seed=7, max_tokens=4, temperature=0.8)
        assert [c["message"]["content"] for c in again["choices"]] == texts  # reproducible with a seed
        greedy = _chat(client, n=2, max_tokens=4, temperature=0)
        assert len({c["message"]["content"] for c in greedy["choices"]}) == 1


def test_n_streamed_chunks_carry_indices_and_equal_non_streamed(client: TestClient) -> None:
    plain = _chat(client, n=2, logprobs=True, max_tokens=5)
    chunks = _chat_stream(client, n=2, logprobs=True, max_tokens=5, stream_options={"include_usage": True})
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10
    for i in range(2):
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == i]
        assert mine[0]["delta"]["role"] == "assistant"
        assert "".join(ch["delta"]["content"] for ch in mine) == plain["choices"][i]["message"]["content"]
        entries = [e for ch in mine for e in ch["logprobs"]["content"]]
        assert entries == plain["choices"][i]["logprobs"]["content"]
        assert [ch["finish_reason"] for ch in mine][-1] == "length"
    completions = _completion(client, stream=True, n=2, max_tokens=3, best_of=2)
    assert sorted({c["choices"][0]["index"] for c in completions}) == [0, 1]


def test_n_stop_strings_are_per_choice(client: TestClient, fake: FakeTritonClient) -> None:
    body = _completion(client, n=2, stop=["France"])
    assert [c["text"] for c in body["choices"]] == ["Paris is the capital of "] * 2
    assert [c["finish_reason"] for c in body["choices"]] == ["stop", "stop"]
    assert all(s.ended_early for s in [s for s in fake.streams if s.model == "ensemble"][-2:])


def test_n_slots_each_choice_and_429(fake: FakeTritonClient) -> None:
    with _client(fake, max_concurrent_streams=2) as client:
        r = client.post("/v1/chat/completions", json={**CHAT, "n": 3})
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        assert len(fake.streams) == 0
        assert client.post("/v1/chat/completions", json={**CHAT, "n": 2}).status_code == 200
        assert client.post("/v1/chat/completions", json={**CHAT, "n": 2}).status_code == 200  # slots freed


def test_stream_slots_count_each_choice() -> None:
    slots = StreamSlots(3)
    held = slots.acquire()
    held.grow(1)
    assert slots.active == 2
    other = slots.acquire()
    with pytest.raises(ApiError) as e:
        other.grow(1)  # all or none
    assert e.value.status == 429 and slots.active == 3
    held.release()
    held.release()  # idempotent
    other.release()
    assert slots.active == 0


def test_n_error_in_one_choice_aborts_all(fake: FakeTritonClient) -> None:
    from paddlellm.errors import EngineError

    fake.token_delay = 0.01
    fake.reply = tuple((300 + i, f" w{i}") for i in range(40))
    fake.fail_after, fake.fail_suffix = (3, EngineError("boom")), "-1"
    with _client(fake) as client:
        r = client.post("/v1/chat/completions", json={**CHAT, "n": 2, "stream": True})
        assert '"error"' in r.text and r.text.endswith("data: [DONE]\n\n")
        deadline = time.monotonic() + 5
        while fake.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake.active == 0
        first = [s for s in fake.streams if s.model == "ensemble"][0]
        assert first.ended_early and first.sent_tokens < 40 and first.request_id in fake.aborted
        fake.fail_after = None
        assert client.post("/v1/chat/completions", json={**CHAT, "n": 2}).status_code == 200


def test_global_scheduler_chunks_carry_logprobs() -> None:
    from gateway.global_scheduler.work_items import Chunk

    chunk = Chunk("a", (1,), "", 3, 1, "", "inst", 0, '{"content": []}')
    assert Chunk.from_json(chunk.to_json()) == chunk
    assert '"l"' not in Chunk("a", (1,)).to_json()  # nothing added when not asked


def _responses(coalesce: int) -> list[EnsembleResponse]:
    """DEFAULT_REPLY as the engine would send it with `coalesce` tokens per response, logprobs included."""
    fake = FakeTritonClient()
    out = []
    for at in range(0, len(DEFAULT_REPLY), coalesce):
        part = DEFAULT_REPLY[at : at + coalesce]
        entries = [
            {
                "id": t,
                "token": token_text(fake._bytes(t, x)),
                "bytes": list(fake._bytes(t, x)),
                "logprob": -1.0,
            }
            for t, x in part
        ]
        last = at + coalesce >= len(DEFAULT_REPLY)
        out.append(
            EnsembleResponse(
                text="".join(x for _, x in part),
                token_ids=tuple(t for t, _ in part),
                finish_reason="stop" if last else "",
                logprobs=json.dumps({"content": entries}),
            )
        )
    return out


@pytest.mark.parametrize("coalesce", [1, 2, 5])
def test_bytes_join_to_the_content_for_every_stop_string(coalesce: int) -> None:
    stops = {REPLY_TEXT[i : i + k] for k in (1, 2, 4) for i in range(len(REPLY_TEXT) - k + 1)}
    for stop in sorted(stops):
        shaper = ChunkShaper(kind="chat", request_id="r", model="m", created=0, stops=(stop,), top_logprobs=0)
        chunks = []
        for resp in _responses(coalesce):
            chunks += shaper.feed(resp, 0.0)
            if shaper.finished:
                break
        content = REPLY_TEXT[: REPLY_TEXT.index(stop)]
        text, entries = "", []
        for c in chunks:  # an entry goes out with the chunk whose text completes its token's
            text += c["choices"][0]["delta"]["content"]
            entries += c["choices"][0]["logprobs"]["content"]
            assert text.encode().startswith(b"".join(bytes(e["bytes"]) for e in entries)), stop
        assert text == content and _joined(entries) == content, stop


def test_n_error_before_the_answer_began_is_a_plain_error(fake: FakeTritonClient) -> None:
    from paddlellm.errors import Overloaded

    fake.token_delay = 0.01
    fake.reply = tuple((300 + i, f" w{i}") for i in range(40))
    fake.fail_with, fake.fail_suffix = Overloaded("the request queue is full"), "-1"
    with _client(fake) as client:
        r = client.post("/v1/chat/completions", json={**CHAT, "n": 2, "stream": True})
        assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
        first = [s for s in fake.streams if s.model == "ensemble"][0]
        deadline = time.monotonic() + 5
        while not first.ended_early and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.ended_early and first.request_id in fake.aborted


def test_the_openai_client_reads_logprobs_and_choices(client: TestClient) -> None:
    from openai import OpenAI

    api = OpenAI(base_url="http://testserver/v1", api_key="-", http_client=client)
    chat = api.chat.completions.create(
        model="default", messages=CHAT["messages"], max_tokens=3, logprobs=True, top_logprobs=2, n=2, seed=1
    )
    assert [c.index for c in chat.choices] == [0, 1]
    first = chat.choices[0].logprobs.content[0]
    assert (first.token, first.logprob, len(first.top_logprobs)) == ("Paris", pytest.approx(-0.1), 2)
    text = api.completions.create(model="default", prompt="Hi there", max_tokens=2, logprobs=1, echo=True)
    assert text.choices[0].logprobs.tokens == ["Hi", " there", "Paris", " is"]
    assert text.choices[0].logprobs.text_offset == [0, 2, 8, 13]
    streamed = api.chat.completions.create(
        model="default", messages=CHAT["messages"], max_tokens=3, logprobs=True, stream=True
    )
    assert [e.token for ch in streamed for e in ch.choices[0].logprobs.content] == ["Paris", " is", " the"]
