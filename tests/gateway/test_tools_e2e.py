"""Tool calling on the whole stack (issue #27, acceptance 1-3): the default model (SmolLM2, a template without
tool support: the `generic` parser) through the openai SDK, and a random-weight Qwen2 checkpoint with a
Qwen2.5-style template (detected as `hermes`) whose output is forced to a call.

- `required` and a named function give calls whose arguments validate against the tool's schema, greedy and
  sampled, streamed and not; the streamed deltas fold into exactly the non-streamed calls (greedy);
- a follow-up with the tool's result and tool_choice "none" answers with content;
- `auto` never leaks call markup into content;
- examples/agent_loop.py runs (call, tool result, final answer).
Slow: each stack loads its engine.
"""

# ruff: noqa: E501  (a chat template, verbatim)
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.metrics.stack import ROOT, Stack, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER_PARAMS},
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "Local time in a city", "parameters": TIME_PARAMS},
    },
]
SCHEMAS = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}
QUESTION = [{"role": "user", "content": "What is the weather in Paris today?"}]


@pytest.fixture(scope="module")
def stack(default_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("tools") / "run"
    with running_stack(default_model_dir, run_dir, extra=("--max-model-len", "2048")) as st:
        yield st


def _client(stack: Stack) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=stack.url + "/v1", api_key="unused", timeout=600)


def _fold(stream: Any) -> tuple[str | None, list[tuple[str, str]], str | None]:
    """(content, [(name, arguments)], finish_reason) folded from streamed deltas as the SDK's users do."""
    content, calls, finish = "", {}, None
    for chunk in stream:
        for ch in chunk.choices:
            d = ch.delta
            content += d.content or ""
            for tc in d.tool_calls or []:
                if tc.id:
                    calls[tc.index] = [tc.function.name, ""]
                calls[tc.index][1] += tc.function.arguments or ""
            finish = ch.finish_reason or finish
    return content or None, [tuple(calls[i]) for i in sorted(calls)], finish  # type: ignore[misc]


def _check_calls(calls: list[tuple[str, str]], names: set[str]) -> None:
    assert calls
    for name, arguments in calls:
        assert name in names
        jsonschema.validate(json.loads(arguments), SCHEMAS[name])


CHOICES = [
    ("required", {"get_weather", "get_time"}),
    ({"type": "function", "function": {"name": "get_time"}}, {"get_time"}),
]


@pytest.mark.parametrize(("tool_choice", "names"), CHOICES, ids=["required", "named"])
def test_forced_calls_validate_streamed_equals_whole(stack: Stack, tool_choice: Any, names: set[str]) -> None:
    client = _client(stack)
    for temperature, seed in ((0.0, None), (1.0, 7), (1.0, 8)):
        kw = {
            "model": "default",
            "messages": QUESTION,
            "tools": TOOLS,
            "tool_choice": tool_choice,
            "max_tokens": 200,
            "temperature": temperature,
            "seed": seed,
        }
        whole = client.chat.completions.create(**kw)
        msg = whole.choices[0].message
        assert whole.choices[0].finish_reason == "tool_calls", whole
        assert msg.content is None
        calls = [(c.function.name, c.function.arguments) for c in msg.tool_calls]
        _check_calls(calls, names)
        assert len({c.id for c in msg.tool_calls}) == len(calls)
        content, streamed, finish = _fold(client.chat.completions.create(**kw, stream=True))
        _check_calls(streamed, names)
        assert content is None and finish == "tool_calls"
        if temperature == 0 or seed is not None:  # the same answer: exactly the same calls
            assert streamed == calls


def test_follow_up_with_the_result_answers_with_content(stack: Stack) -> None:
    client = _client(stack)
    first = client.chat.completions.create(
        model="default", messages=QUESTION, tools=TOOLS, tool_choice="required", max_tokens=120, temperature=0
    )
    call = first.choices[0].message.tool_calls[0]
    history = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "sunny"})},
    ]
    for stream in (False, True):
        kw = {
            "model": "default",
            "messages": history,
            "tools": TOOLS,
            "tool_choice": "none",
            "max_tokens": 60,
            "temperature": 0,
        }
        if stream:
            content, calls, finish = _fold(client.chat.completions.create(**kw, stream=True))
        else:
            r = client.chat.completions.create(**kw)
            content, calls, finish = (
                r.choices[0].message.content,
                r.choices[0].message.tool_calls or [],
                r.choices[0].finish_reason,
            )
        assert content and content.strip() and not calls and finish in ("stop", "length")


def test_auto_never_leaks_call_markup_into_content(stack: Stack) -> None:
    client = _client(stack)
    questions = [
        "What is the weather in Paris today?",
        "Hi! How are you?",
        "What time is it in Tokyo?",
        "Tell me a joke.",
        "Weather in Rome in fahrenheit for 3 days?",
    ]
    outcomes = set()
    for q in questions:
        for seed in (1, 2):
            kw = {
                "model": "default",
                "messages": [{"role": "user", "content": q}],
                "tools": TOOLS,
                "max_tokens": 120,
                "temperature": 1.0,
                "seed": seed,
            }
            r = client.chat.completions.create(**kw)
            msg = r.choices[0].message
            if msg.tool_calls:
                outcomes.add("calls")
                _check_calls([(c.function.name, c.function.arguments) for c in msg.tool_calls], set(SCHEMAS))
            for text in (
                msg.content or "",
                _fold(client.chat.completions.create(**kw, stream=True))[0] or "",
            ):
                assert '"tool_calls"' not in text and not text.lstrip().startswith('{"content"'), text
            if msg.content:
                outcomes.add("content")
    assert outcomes  # (which of the two a 135M model picks is its business)


def test_the_agent_loop_example_runs(stack: Stack) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "agent_loop.py"), "--base-url", stack.url + "/v1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "tool call: get_" in out.stdout and "assistant: " in out.stdout


QWEN25_TEMPLATE = """{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}
{{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- for message in messages %}
{%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
{%- elif message.role == "assistant" %}
{{- '<|im_start|>' + message.role }}
{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\\n<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == "tool" %}
{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}
{%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""


@pytest.fixture(scope="module")
def qwen_tools_checkpoint(tiny_checkpoint: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random-weight Qwen2 checkpoint whose chat template is Qwen2.5's tool format (hermes)."""
    src = Path(tiny_checkpoint(arch="qwen2"))
    dst = tmp_path_factory.mktemp("qwen_tools") / "qwen2-tools"
    shutil.copytree(src, dst)
    config = json.loads((dst / "tokenizer_config.json").read_text())
    config["chat_template"] = QWEN25_TEMPLATE
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return str(dst)


def test_hermes_on_a_random_qwen2_forced_to_a_call(qwen_tools_checkpoint: str, tmp_path: Path) -> None:
    with running_stack(qwen_tools_checkpoint, tmp_path / "run", extra=("--max-model-len", "1024")) as st:
        client = _client(st)
        for tool_choice, names in CHOICES:
            # One call: random weights would otherwise chain calls until max_tokens cuts one.
            kw = {
                "model": "default",
                "messages": QUESTION,
                "tools": TOOLS,
                "tool_choice": tool_choice,
                "max_tokens": 200,
                "temperature": 0,
                "parallel_tool_calls": False,
            }
            whole = client.chat.completions.create(**kw)
            msg = whole.choices[0].message
            assert msg.tool_calls and whole.choices[0].finish_reason == "tool_calls", whole
            calls = [(c.function.name, c.function.arguments) for c in msg.tool_calls]
            _check_calls(calls, names)
            assert not (msg.content or "").strip() or "<tool_call>" not in msg.content
            content, streamed, _ = _fold(client.chat.completions.create(**kw, stream=True))
            assert streamed == calls and (content or "") == (msg.content or "")
