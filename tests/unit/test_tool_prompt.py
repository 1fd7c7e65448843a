"""Tools and tool-call histories rendered into prompts (paddlellm.text.tool_prompt through TextTokenizer)."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import pytest

from paddlellm.errors import InvalidRequest
from paddlellm.model_info import CheckpointText
from paddlellm.text.chat_template import ChatTemplate
from paddlellm.text.tokenizer import TextTokenizer
from paddlellm.text.tool_prompt import detect_tool_format, prepare_chat, template_supports_tools

# A Qwen2.5-style template (written for this test): the tools in the system turn, calls as <tool_call> blocks
# whose arguments it `tojson`s, results as <tool_response> in a user turn.
QWEN_STYLE = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
{{- '# Tools\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' + tool | tojson }}{%- endfor %}
{{- '\\n</tools>\\nCall one as <tool_call>{"name": ..., "arguments": ...}</tool_call><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'assistant' %}
{{- '<|im_start|>assistant\\n' + (message.content or '') }}
{%- for tc in message.tool_calls or [] %}
{{- '\\n<tool_call>\\n{"name": "' + tc.function.name + '", "arguments": ' + tc.function.arguments | tojson }}
{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}
{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
{%- elif message.role != 'system' %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""

# A Llama-3.1-style template (written for this test): JSON calls with "parameters", results as ipython.
LLAMA31_STYLE = """\
{%- if not tools is defined %}{%- set tools = none %}{%- endif %}
{{- bos_token }}
{%- if tools is not none %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\nRespond as {"name": name, "parameters": args}.\\n' }}
{%- for t in tools %}{{- t | tojson(indent=4) + '\\n' }}{%- endfor %}
{{- '<|eot_id|>' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role in ['ipython', 'tool'] %}
{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + message.content + '<|eot_id|>' }}
{%- elif message.tool_calls %}
{%- set tc = message.tool_calls[0].function %}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n<|python_tag|>' }}
{{- '{"name": "' + tc.name + '", "parameters": ' + tc.arguments | tojson + '}<|eom_id|>' }}
{%- else %}
{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + message.content + '<|eot_id|>' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}
"""

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# An agent loop, one group of messages per request: question, call, result, answer, question, two calls...
TURNS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Weather in Paris?"}],
    [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call("c1", "get_weather", '{"city": "Paris"}')],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "21 C, sunny"},
    ],
    [
        {"role": "assistant", "content": "It is 21 C and sunny."},
        {"role": "user", "content": "And Rome, and the time?"},
    ],
    [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [call("c2", "get_weather", '{"city":"Rome"}'), call("c3", "get_time", "{}")],
        },
        {"role": "tool", "tool_call_id": "c2", "content": "25 C"},
        {"role": "tool", "tool_call_id": "c3", "content": "12:00"},
    ],
]
HISTORY = [m for turn in TURNS for m in turn]


@pytest.fixture(scope="module")
def make_tokenizer(default_model_dir: str, tmp_path_factory: pytest.TempPathFactory):
    """TextTokenizer with the default model's tokenizer.json and the given chat template (None: its own)."""

    def make(template: str | None = None) -> TextTokenizer:
        if template is None:
            return TextTokenizer.from_dir(default_model_dir)
        out = str(tmp_path_factory.mktemp("tok"))
        shutil.copy(os.path.join(default_model_dir, "tokenizer.json"), out)
        with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump({"chat_template": template, "bos_token": "<|begin_of_text|>"}, f)
        return TextTokenizer.from_dir(out)

    return make


# ------------------------------------------------------------------------------------------ detection


def test_detects_formats_and_tool_support_from_template_sources(default_model_dir: str) -> None:
    smollm = CheckpointText.from_dir(default_model_dir).chat_template
    assert detect_tool_format(QWEN_STYLE) == "hermes" and template_supports_tools(QWEN_STYLE)
    assert detect_tool_format(LLAMA31_STYLE) == "llama3_json" and template_supports_tools(LLAMA31_STYLE)
    assert detect_tool_format(smollm) == "generic" and not template_supports_tools(smollm)
    assert CheckpointText.from_dir(default_model_dir).tool_format() == "generic"
    assert detect_tool_format(None) == "generic" and not template_supports_tools(None)
    # `tools` read as a variable counts; in text, in a string literal, as an attribute or inside a name not.
    assert template_supports_tools("{% if tools is defined %}x{% endif %}")
    assert template_supports_tools("{%- for t in tools -%}{{ t }}{% endfor %}")
    for source in (
        "You have no tools. {{ messages[0].content }}",
        "{{ 'use the tools' }}",
        "{{ message.tools }}",
        "{% if custom_tools %}x{% endif %}{{ tools_in_user_message }}",
        "{# tools #}",
    ):
        assert not template_supports_tools(source), source


def test_checkpoint_tool_format_reads_its_template(tmp_path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": QWEN_STYLE}))
    assert CheckpointText.from_dir(str(tmp_path)).tool_format() == "hermes"
    (tmp_path / "chat_template.jinja").write_text(LLAMA31_STYLE)  # wins over tokenizer_config.json's
    assert CheckpointText.from_dir(str(tmp_path)).tool_format() == "llama3_json"


# ------------------------------------------------------------------------------- templates with tools


def test_hermes_template_gets_tools_and_parsed_arguments(make_tokenizer) -> None:
    tok = make_tokenizer(QWEN_STYLE)
    prompt = tok.apply_chat_template(HISTORY, tools=[WEATHER, TIME])
    assert '\n{"type": "function", "function": {"name": "get_weather", "description": "Current' in prompt
    # Objects, tojson'ed by the template: a string would come out quoted ("{\"city\": ...}").
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert (
        '<|im_start|>assistant\nChecking.\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Rome"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n'
        "</tool_call><|im_end|>"
    ) in prompt
    assert "<|im_start|>user\n<tool_response>\n21 C, sunny\n</tool_response><|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    # Without tools the template gets tools=None (as transformers passes): no tools section.
    plain = tok.apply_chat_template(HISTORY)
    assert "# Tools" not in plain and '"arguments": {"city": "Paris"}' in plain


def test_llama3_template_gets_tools(make_tokenizer) -> None:
    tok = make_tokenizer(LLAMA31_STYLE)
    prompt = tok.apply_chat_template(HISTORY[:3], tools=[WEATHER])
    assert '    "type": "function",\n    "function": {\n        "name": "get_weather"' in prompt
    assert '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}<|eom_id|>' in prompt
    assert "<|start_header_id|>ipython<|end_header_id|>\n\n21 C, sunny<|eot_id|>" in prompt
    assert "Respond as" not in tok.apply_chat_template(HISTORY[:1])  # tools undefined -> none


def test_matches_transformers_with_tools(make_tokenizer) -> None:
    """The same prompt as transformers' apply_chat_template given the arguments as objects."""
    transformers = pytest.importorskip("transformers", exc_type=ModuleNotFoundError)
    tok = make_tokenizer(QWEN_STYLE)
    ref = transformers.AutoTokenizer.from_pretrained(tok.path)
    objects = json.loads(json.dumps(HISTORY))
    for m in objects:
        for c in m.get("tool_calls") or []:
            c["function"]["arguments"] = json.loads(c["function"]["arguments"])
    for tools in ([WEATHER, TIME], None):
        expected = ref.apply_chat_template(objects, tools=tools, add_generation_prompt=True, tokenize=False)
        assert tok.apply_chat_template(HISTORY, tools=tools) == expected


# ---------------------------------------------------------------------------- templates without tools


def test_generic_tools_in_a_system_message_on_the_default_model(make_tokenizer) -> None:
    tok = make_tokenizer()
    question = [{"role": "user", "content": "Weather in Paris?"}]
    prompt = tok.apply_chat_template(question, tools=[WEATHER, TIME])
    tools_text = (
        "You can call these tools (each with its name, what it does and the JSON schema of its arguments):\n"
        '{"name": "get_weather", "description": "Current weather of a city", "parameters": '
        '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}\n'
        '{"name": "get_time", "parameters": {"type": "object"}}\n\n'
        "Answer with exactly one JSON object and nothing else. To call tools:\n"
        '{"tool_calls": [{"name": "<tool name>", "arguments": {<the arguments>}}]}\n'
        "To answer the user directly, or with the results of your tool calls once they are given:\n"
        '{"content": "<your answer>"}'
    )
    assert prompt == (
        f"<|im_start|>system\n{tools_text}<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"
    )
    # The conversation's own system message takes the tools text: still one system turn.
    with_system = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, *question], tools=[WEATHER]
    )
    assert with_system.count("<|im_start|>system") == 1
    assert with_system.startswith("<|im_start|>system\nBe brief.\n\nYou can call these tools")
    # No tools: the template's own default system message, untouched.
    assert tok.apply_chat_template(question) == tok.chat_template.render(question)


def test_generic_history_as_text(make_tokenizer) -> None:
    tok = make_tokenizer()
    prompt = tok.apply_chat_template(HISTORY, tools=[WEATHER, TIME])
    assert (
        '<|im_start|>assistant\n{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'
        "<|im_end|>\n"
        '<|im_start|>user\n{"tool_response": {"name": "get_weather", "content": "21 C, sunny"}}<|im_end|>\n'
    ) in prompt
    # Text beside calls is kept; the results of parallel calls make one user turn (roles alternate).
    assert (
        '<|im_start|>assistant\n{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Rome"}}, '
        '{"name": "get_time", "arguments": {}}], "content": "Checking."}<|im_end|>\n<|im_start|>user\n'
        '{"tool_response": {"name": "get_weather", "content": "25 C"}}\n'
        '{"tool_response": {"name": "get_time", "content": "12:00"}}<|im_end|>\n<|im_start|>assistant\n'
    ) in prompt
    assert "<|im_start|>tool" not in prompt
    # A follow-up without tools (tool_choice none) still renders the history; no tools text, SmolLM's default.
    follow_up = tok.apply_chat_template(HISTORY)
    assert "You can call" not in follow_up and "named SmolLM" in follow_up
    assert '{"tool_response": {"name": "get_time", "content": "12:00"}}' in follow_up


@pytest.mark.parametrize(
    ("fmt", "system_has", "call_text"),
    [
        (
            "hermes",
            '<tools>\n{"name": "get_weather"',
            'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call><|im_end|>',
        ),
        (
            "llama3_json",
            '{"name": "<tool name>", "parameters": {<the arguments>}}',
            'Checking.\n{"name": "get_weather", "parameters": {"city": "Rome"}}; '
            '{"name": "get_time", "parameters": {}}<|im_end|>',
        ),
    ],
)
def test_other_formats_on_a_template_without_tools(make_tokenizer, fmt, system_has, call_text) -> None:
    prompt = make_tokenizer().apply_chat_template(HISTORY, tools=[WEATHER, TIME], tool_format=fmt)
    system = prompt.split("<|im_end|>")[0]
    assert system_has in system
    assert call_text in prompt


@pytest.mark.parametrize(
    ("template", "tools"), [(None, [WEATHER, TIME]), (None, None), (QWEN_STYLE, [WEATHER])]
)
def test_earlier_turns_render_the_same_when_a_turn_is_appended(make_tokenizer, template, tools) -> None:
    """The prompt of turn k is a prefix of turn k+1's, so the prefix cache hits across an agent loop."""
    tok = make_tokenizer(template)
    prompts = [
        tok.apply_chat_template([m for turn in TURNS[: k + 1] for m in turn], tools=tools)
        for k in range(len(TURNS))
    ]
    for k in range(len(prompts) - 1):
        assert prompts[k + 1].startswith(prompts[k]), k
    assert tok.apply_chat_template(HISTORY, tools=tools) == prompts[-1]  # and the same input, the same text


# ------------------------------------------------------------------------------------------ bad input


def replaced(index: int, **fields: Any) -> list[dict[str, Any]]:
    msgs = json.loads(json.dumps(HISTORY[:3]))
    msgs[index] = {k: v for k, v in {**msgs[index], **fields}.items() if v != "DROP"}
    return msgs


BAD_MESSAGES = [
    (replaced(2, tool_call_id="DROP"), "messages[2].tool_call_id"),
    (replaced(2, tool_call_id="c9"), "messages[2].tool_call_id"),
    ([HISTORY[0], HISTORY[2], HISTORY[1]], "messages[1].tool_call_id"),  # answered before it was called
    (
        replaced(1, tool_calls=[call("c1", "get_weather", "{city: Paris}")]),
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        replaced(1, tool_calls=[call("c1", "get_weather", "[1]")]),
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        replaced(
            1, tool_calls=[{"id": "c1", "type": "function", "function": {"name": "f", "arguments": {}}}]
        ),
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        replaced(1, tool_calls=[{"id": "c1", "function": {"name": "f", "arguments": "{}"}}]),
        "messages[1].tool_calls[0].type",
    ),
    (
        replaced(1, tool_calls=[{"id": "c1", "type": "function", "function": {"arguments": "{}"}}]),
        "messages[1].tool_calls[0].function.name",
    ),
    (
        replaced(1, tool_calls=[{"id": 7, "type": "function", "function": {"name": "f", "arguments": "{}"}}]),
        "messages[1].tool_calls[0].id",
    ),
    (replaced(1, tool_calls="get_weather"), "messages[1].tool_calls"),
    (replaced(0, tool_calls=[call("c0", "f", "{}")]), "messages[0].tool_calls"),
]


@pytest.mark.parametrize("template", [None, QWEN_STYLE])
@pytest.mark.parametrize(("messages", "param"), BAD_MESSAGES)
def test_malformed_tool_messages_name_the_field(make_tokenizer, template, messages, param) -> None:
    with pytest.raises(InvalidRequest) as e:
        make_tokenizer(template).apply_chat_template(messages, tools=[WEATHER])
    assert e.value.param == param
    assert param in e.value.message


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        ({"type": "function"}, "tools"),
        (["get_weather"], "tools[0]"),
        ([{"function": WEATHER["function"]}], "tools[0].type"),
        ([{"type": "function"}], "tools[0].function"),
        ([{"type": "function", "function": {"name": ""}}], "tools[0].function.name"),
        ([WEATHER, WEATHER], "tools[1].function.name"),
        (
            [{"type": "function", "function": {"name": "f", "description": 3}}],
            "tools[0].function.description",
        ),
        (
            [{"type": "function", "function": {"name": "f", "parameters": "object"}}],
            "tools[0].function.parameters",
        ),
    ],
)
def test_malformed_tools_name_the_field(make_tokenizer, tools, param) -> None:
    with pytest.raises(InvalidRequest) as e:
        make_tokenizer().apply_chat_template(HISTORY[:1], tools=tools)
    assert e.value.param == param


def test_null_fields_of_tools_are_left_out() -> None:
    """Pydantic dumps absent fields as null: a template must not see `"description": null`."""
    tool = {
        "type": "function",
        "function": {"name": "f", "description": None, "parameters": None, "strict": None},
    }
    template = ChatTemplate.compile(QWEN_STYLE)
    msgs, variables = prepare_chat(HISTORY[:1], [tool], "hermes", template.supports_tools)
    assert variables == {"tools": [{"type": "function", "function": {"name": "f"}}]}
    assert msgs == HISTORY[:1]
