"""Chat template rendering (sandboxed jinja2, HF's environment) and message validation."""

from __future__ import annotations

import pytest

from paddlellm.errors import InvalidRequest
from paddlellm.text.chat_template import ChatTemplate, validate_messages

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Exercises what real templates use: blocks with indentation (trim/lstrip), namespace, loop.last,
# tojson, raise_exception, strftime_now, break, bos_token.
RICH = """{{ bos_token }}
{%- set ns = namespace(system='') %}
{%- for m in messages %}
    {%- if m['role'] == 'system' %}
        {%- set ns.system = m['content'] %}
    {%- endif %}
{%- endfor %}
{% if ns.system %}
<<SYS>>{{ ns.system }}<</SYS>>
{% endif %}
{% for m in messages if m['role'] != 'system' %}
    {% if (m['role'] == 'user') != loop.index0 is even %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    [{{ m['role'] }}] {{ m['content'] }}{% if loop.last %} (last){% endif %}

{% endfor %}
{% if tools %}TOOLS {{ tools | tojson }}{% endif %}
{% for x in [1, 2, 3] %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %}
{% if add_generation_prompt %}[assistant]{% endif %}"""

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi <b>there</b> 你好"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]},
]


def test_chatml_render() -> None:
    t = ChatTemplate.compile(CHATML)
    out = t.render([{"role": "user", "content": "hi"}])
    assert out == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert t.render([{"role": "user", "content": "hi"}], add_generation_prompt=False).endswith("<|im_end|>\n")


def test_text_parts_are_joined_with_newlines() -> None:
    (msg,) = validate_messages(
        [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    )
    assert msg["content"] == "a\nb"


def test_rich_template_matches_transformers_rendering() -> None:
    pytest.importorskip("transformers", exc_type=ModuleNotFoundError)
    from transformers.utils.chat_template_utils import render_jinja_template

    tools = [{"type": "function", "function": {"name": "f", "description": "<é>"}}]
    ours = ChatTemplate.compile(RICH, {"bos_token": "<s>"}).render(MESSAGES, tools=tools)
    flat = validate_messages(MESSAGES)  # transformers would hand the list content to the template as is
    theirs, _ = render_jinja_template(
        conversations=[flat], chat_template=RICH, tools=tools, add_generation_prompt=True, bos_token="<s>"
    )
    assert ours == theirs[0]
    assert '"description": "<é>"' in ours  # tojson neither escapes HTML nor non-ASCII
    assert ours.startswith("<s><<SYS>>Be brief.<</SYS>>\n")  # trim_blocks ate the newlines after tags
    assert ours.endswith("1[assistant]")  # {% break %} stopped the loop at 2


def test_template_raise_exception_is_an_invalid_request() -> None:
    t = ChatTemplate.compile(RICH, {"bos_token": "<s>"})
    with pytest.raises(InvalidRequest, match="roles must alternate") as err:
        t.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert err.value.param == "messages"


def test_strftime_now_is_available() -> None:
    out = ChatTemplate.compile("{{ strftime_now('%Y') }}").render([{"role": "user", "content": "x"}])
    assert out.isdigit() and len(out) == 4


def test_sandbox_blocks_python_internals() -> None:
    t = ChatTemplate.compile("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(InvalidRequest, match="'__class__' of 'list' object is unsafe"):
        t.render([{"role": "user", "content": "x"}])
    t = ChatTemplate.compile("{% set _ = messages.append(1) %}")
    with pytest.raises(InvalidRequest, match="'append' of 'list' object is unsafe"):
        t.render([{"role": "user", "content": "x"}])


def test_template_that_cannot_handle_null_content() -> None:
    t = ChatTemplate.compile(CHATML)
    msgs = [{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]
    with pytest.raises(InvalidRequest, match="cannot render"):
        t.render(msgs)


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ("hello", "must be a list"),
        ([], "must not be empty"),
        (["hi"], r"messages\[0\] must be an object"),
        ([{"content": "hi"}], r"messages\[0\]\.role"),
        ([{"role": "wizard", "content": "hi"}], r"messages\[0\]\.role"),
        ([{"role": "user", "content": 3}], r"messages\[0\]\.content must be a string"),
        ([{"role": "user"}], r"messages\[0\]\.content is required"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": None}], r"messages\[1\]\.content"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "only text parts",
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": 5}]}],
            r"content\[0\]\.text must be a string",
        ),
        ([{"role": "user", "content": ["plain string part"]}], "only text parts"),
    ],
)
def test_invalid_messages(messages: object, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match) as err:
        validate_messages(messages)
    assert err.value.param == "messages"


def test_valid_messages_are_copied_not_mutated() -> None:
    msgs = [{"role": "user", "content": [{"type": "text", "text": "x"}], "name": "bob"}]
    out = validate_messages(msgs)
    assert out == [{"role": "user", "content": "x", "name": "bob"}]
    assert msgs[0]["content"] == [{"type": "text", "text": "x"}]
    tool_call = [{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]
    assert validate_messages(tool_call)[0]["content"] is None
