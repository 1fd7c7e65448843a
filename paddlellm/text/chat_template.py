"""Render HF chat templates (jinja2, sandboxed) and validate OpenAI-style chat messages.

The environment matches what transformers gives a template: an immutable sandbox with trim_blocks and
lstrip_blocks, the loop-controls extension, `raise_exception`, `strftime_now`, and a `tojson` that does not
HTML-escape. Templates come from checkpoints, so they are untrusted code: the sandbox keeps them away from
Python internals. A template's own `raise_exception` (e.g. "roles must alternate") is the client's fault and
becomes InvalidRequest(param="messages").
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from paddlellm.errors import InvalidRequest
from paddlellm.text.tool_prompt import ToolFormat, detect_tool_format, template_supports_tools

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
PARAM = "messages"


class _TemplateRaised(Exception):
    """raise_exception() inside a template: the message is for the client."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(str(message))


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Check OpenAI chat messages and return template-ready copies (text parts joined into one string).

    Each message is an object with a known `role` and `content` that is a string, a list of text parts
    ({"type": "text", "text": str}), or null (only for an assistant message that carries tool calls).
    A list that also holds image parts stays a list of parts: `{"type": "image"}` is what the tokenizer
    model leaves of an image it decoded (paddlellm/vision/chat_images.py), for the template to place.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        raise InvalidRequest("'messages' must be a list of message objects", param=PARAM)
    if not messages:
        raise InvalidRequest("'messages' must not be empty", param=PARAM)
    out = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise InvalidRequest(f"{where} must be an object, got {type(msg).__name__}", param=PARAM)
        role = msg.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequest(f"{where}.role must be one of {sorted(ROLES)}, got {role!r}", param=PARAM)
        copy = dict(msg)
        copy["content"] = _content_text(msg.get("content"), role, bool(msg.get("tool_calls")), where)
        out.append(copy)
    return out


def _content_text(
    content: Any, role: str, has_tool_calls: bool, where: str
) -> str | list[dict[str, str]] | None:
    if isinstance(content, str):
        return content
    if content is None:
        if role == "assistant" and has_tool_calls:
            return None
        raise InvalidRequest(f"{where}.content is required", param=PARAM)
    if isinstance(content, Sequence) and not isinstance(content, bytes):
        texts: list[str | None] = []  # None: an image's place
        for j, part in enumerate(content):
            if isinstance(part, Mapping) and part.get("type") == "image" and len(part) == 1:
                texts.append(None)
                continue
            if not isinstance(part, Mapping) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise InvalidRequest(
                    f"{where}.content[{j}]: only text parts are supported, got {kind!r}", param=PARAM
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidRequest(f"{where}.content[{j}].text must be a string", param=PARAM)
            texts.append(text)
        if None in texts:
            return [{"type": "image"} if t is None else {"type": "text", "text": t} for t in texts]
        return "\n".join(t for t in texts if t is not None)
    raise InvalidRequest(
        f"{where}.content must be a string or a list of text parts, got {type(content).__name__}", param=PARAM
    )


@dataclass(frozen=True, eq=False)
class ChatTemplate:
    """A compiled chat template plus the special-token strings templates may reference."""

    source: str
    template: jinja2.Template
    special_tokens: Mapping[str, str]  # bos_token, eos_token, ... as strings

    @classmethod
    def compile(cls, source: str, special_tokens: Mapping[str, str] | None = None) -> ChatTemplate:
        """Compile once; a syntax error raises jinja2.TemplateSyntaxError (the caller names the file)."""
        return cls(source, _environment().from_string(source), dict(special_tokens or {}))

    @functools.cached_property
    def supports_tools(self) -> bool:
        """The template renders `tools` and tool histories itself (paddlellm.text.tool_prompt)."""
        return template_supports_tools(self.source)

    @functools.cached_property
    def tool_format(self) -> ToolFormat:
        """The tool-call format the template teaches its model (detect_tool_format)."""
        return detect_tool_format(self.source)

    def render(self, messages: Any, add_generation_prompt: bool = True, **extra: Any) -> str:
        """The prompt for `messages` (validated first); extra variables (tools, ...) reach the template."""
        checked = validate_messages(messages)
        context = {
            **self.special_tokens,
            **extra,
            "messages": checked,
            "add_generation_prompt": add_generation_prompt,
        }
        try:
            return self.template.render(**context)
        except _TemplateRaised as e:
            raise InvalidRequest(f"chat template rejected the messages: {e}", param=PARAM) from None
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as e:
            # e.g. a template concatenating None content: the messages do not fit this model's format.
            raise InvalidRequest(
                f"cannot render the chat template for these messages: {e}", param=PARAM
            ) from None
