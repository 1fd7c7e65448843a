"""Structured output on the whole stack with the default model (issue #26, acceptance 1 and 2): one stack for
the module (launcher -> tritonserver + gateway).

- JSON schemas (nested objects, arrays with min/maxItems, enums, integer and number ranges, string patterns,
  anyOf with null, additionalProperties false): every answer that ends with `stop` validates with
  `jsonschema`, greedy and sampled, streamed and not, 16 at a time; `json_object` answers parse to an
  object; `choice` answers are one of the choices; `regex` answers full-match; the openai SDK's
  `chat.completions.parse(response_format=PydanticModel)` returns a parsed object.
- A schema with an unsupported keyword and a regex that does not parse are 400s naming the field and the
  problem, streamed or not, while another request keeps streaming; the server stays healthy.
Slow: the engine loads in ~30 s.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from pydantic import BaseModel, Field

from tests.metrics.stack import Stack, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]  # the first test starts the stack
CONCURRENCY = 16
MAX_TOKENS = 120


def _strict(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


SCHEMAS: dict[str, dict[str, Any]] = {
    "nested": _strict(
        {
            "name": {"type": "string", "maxLength": 24},
            "address": _strict(
                {
                    "city": {"type": "string", "maxLength": 24},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                }
            ),
        }
    ),
    "array": _strict(
        {
            "tags": {
                "type": "array",
                "items": {"type": "string", "maxLength": 12},
                "minItems": 2,
                "maxItems": 4,
            }
        }
    ),
    "enum": _strict(
        {"color": {"enum": ["red", "green", "blue"]}, "size": {"type": "string", "enum": ["S", "M"]}}
    ),
    "ranges": _strict(
        {
            "age": {"type": "integer", "minimum": 18, "maximum": 99},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
        }
    ),
    "pattern": _strict({"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"}}),
    "nullable": _strict(
        {
            "nickname": {"anyOf": [{"type": "string", "maxLength": 16}, {"type": "null"}]},
            "ok": {"type": "boolean"},
        }
    ),
}
PROMPT = [{"role": "user", "content": "Describe a person living in a small town. Answer in JSON."}]


@pytest.fixture(scope="module")
def stack(default_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("structured") / "run"
    flags = ("--max-model-len", "1024", "--block-size", "16", "--max-num-seqs", "32")
    with running_stack(default_model_dir, run_dir, extra=flags) as st:
        yield st


async def _ask(http: httpx.AsyncClient, gate: asyncio.Semaphore, path: str, body: dict) -> tuple[str, str]:
    """(text, finish_reason) of one choice, streamed or not."""
    async with gate:
        if not body.get("stream"):
            r = await http.post(path, json=body)
            assert r.status_code == 200, r.text
            choice = r.json()["choices"][0]
            return choice["message"]["content"] if "message" in choice else choice["text"], choice[
                "finish_reason"
            ]
        text, reason = "", None
        async with http.stream("POST", path, json=body) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: ") :])
                assert "error" not in chunk, chunk
                for choice in chunk["choices"]:
                    text += choice["delta"]["content"] if "delta" in choice else choice["text"]
                    reason = choice["finish_reason"] or reason
        return text, str(reason)


def _variants(fields: dict[str, Any], copies: int = 1) -> list[dict[str, Any]]:
    """Greedy and sampled (seeded), streamed and not."""
    out = []
    for stream in (False, True):
        out.append({**fields, "temperature": 0, "stream": stream})
        for seed in range(copies):
            out.append({**fields, "temperature": 1.0, "top_p": 0.95, "seed": 100 + seed, "stream": stream})
    return out


def _run_all(stack: Stack, path: str, bodies: list[dict[str, Any]]) -> list[tuple[str, str]]:
    async def main() -> list[tuple[str, str]]:
        gate = asyncio.Semaphore(CONCURRENCY)
        async with httpx.AsyncClient(base_url=stack.url, timeout=600) as http:
            return await asyncio.gather(*(_ask(http, gate, path, b) for b in bodies))

    return asyncio.run(main())


def test_json_schema_answers_validate(stack: Stack) -> None:
    cases = []
    for name, schema in SCHEMAS.items():
        fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
        for body in _variants({"response_format": fmt}, copies=2):
            cases.append((name, {"model": "default", "messages": PROMPT, "max_tokens": MAX_TOKENS, **body}))
    answers = _run_all(stack, "/v1/chat/completions", [b for _, b in cases])
    stopped = 0
    for (name, _), (text, reason) in zip(cases, answers, strict=True):
        if reason != "stop":
            assert reason == "length", (name, reason, text)
            continue
        stopped += 1
        jsonschema.validate(json.loads(text), SCHEMAS[name])  # raises naming the schema path
        outside_strings = re.sub(r'"(\\.|[^"\\])*"', '""', text)
        assert not re.search(r"\s", outside_strings), text  # compact JSON by default
    print(f"\njson_schema: {stopped} of {len(cases)} answers ended with stop; e.g. {answers[0][0]}")
    assert stopped >= len(cases) * 3 // 4, f"only {stopped} of {len(cases)} answers finished"


def test_json_object_answers_parse_to_an_object(stack: Stack) -> None:
    bodies = [
        {"model": "default", "messages": PROMPT, "max_tokens": MAX_TOKENS, **b}
        for b in _variants({"response_format": {"type": "json_object"}})
    ]
    bodies += [
        {"model": "default", "prompt": "A JSON object describing a dog:", "max_tokens": MAX_TOKENS, **b}
        for b in _variants({"structured_outputs": {"json_object": True, "whitespace_flexible": True}})
    ]
    chat = _run_all(stack, "/v1/chat/completions", bodies[:4])
    text = _run_all(stack, "/v1/completions", bodies[4:])
    finished = [t for t, reason in chat + text if reason == "stop"]
    assert finished, chat + text
    for answer in finished:
        assert isinstance(json.loads(answer), dict), answer


def test_choice_and_regex_answers(stack: Stack) -> None:
    choices = ["positive", "negative", "neutral"]
    question = [{"role": "user", "content": "Is 'I love this movie' positive, negative or neutral?"}]
    bodies = [
        {"model": "default", "messages": question, "max_tokens": 20, **b}
        for fields in ({"guided_choice": choices}, {"structured_outputs": {"choice": choices}})
        for b in _variants(fields)
    ]
    for text, reason in _run_all(stack, "/v1/chat/completions", bodies):
        assert reason == "stop" and text in choices, (text, reason)
    patterns = [r"[0-9]{3}-[0-9]{4}", r"(yes|no), because [a-z ]{1,40}\."]
    ask = [{"role": "user", "content": "Give me a phone number, or say yes or no with a reason."}]
    bodies = [
        {"model": "default", "messages": ask, "max_tokens": 60, **b}
        for p in patterns
        for fields in ({"guided_regex": p}, {"structured_outputs": {"regex": p}})
        for b in _variants(fields)
    ]
    answers = _run_all(stack, "/v1/chat/completions", bodies)
    done = 0
    for body, (text, reason) in zip(bodies, answers, strict=True):
        pattern = body.get("guided_regex") or body["structured_outputs"]["regex"]
        if reason == "stop":
            done += 1
            assert re.fullmatch(pattern, text), (pattern, text)
    assert done >= len(bodies) // 2


class Town(BaseModel):
    name: str = Field(max_length=30)
    population: int = Field(ge=0, le=10_000_000)
    has_river: bool


def test_the_openai_sdk_parse_returns_a_parsed_object(stack: Stack) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=stack.url + "/v1", api_key="null")
    done = client.chat.completions.parse(
        model="default",
        messages=[{"role": "user", "content": "Describe a town as JSON."}],
        response_format=Town,
        max_tokens=100,
        temperature=0,
    )
    parsed = done.choices[0].message.parsed
    assert isinstance(parsed, Town), done


def test_bad_schema_and_regex_are_400s_and_nothing_else_is_disturbed(stack: Stack) -> None:
    bad_schema = {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "bad", "schema": bad_schema}}
    bad = [
        ({"response_format": fmt}, "response_format.json_schema.schema", "'not'"),
        ({"guided_regex": "(unclosed"}, "guided_regex", ""),
        ({"structured_outputs": {"regex": "[z-a]"}}, "structured_outputs.regex", ""),
        ({"structured_outputs": {"grammar": "start: ???"}}, "structured_outputs.grammar", ""),
    ]
    long = {"model": "default", "prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": True}

    async def main() -> None:
        async with httpx.AsyncClient(base_url=stack.url, timeout=600) as http:
            gate = asyncio.Semaphore(CONCURRENCY)
            running = asyncio.ensure_future(_ask(http, gate, "/v1/completions", {**long, "stream": True}))
            await asyncio.sleep(1.0)
            for fields, param, word in bad:
                for stream in (False, True):
                    body = {
                        "model": "default",
                        "messages": PROMPT,
                        "max_tokens": 20,
                        "stream": stream,
                        **fields,
                    }
                    r = await http.post("/v1/chat/completions", json=body)
                    assert r.status_code == 400, r.text
                    error = r.json()["error"]
                    assert error["param"] == param and error["message"], error
                    assert word in error["message"], error
            text, reason = await running
            assert reason == "length" and text, (text, reason)

    asyncio.run(main())
    with httpx.Client(base_url=stack.url, timeout=120) as http:
        assert http.get("/health").status_code == 200
        ok = http.post("/v1/chat/completions", json={"model": "default", "messages": PROMPT, "max_tokens": 8})
        assert ok.status_code == 200, ok.text
