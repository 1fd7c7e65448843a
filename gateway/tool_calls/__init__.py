"""Streaming tool-call parsers: turn a model's output text into content and tool calls (pure, stdlib only).

Pick one with make_parser(name, tool_names); the gateway feeds it the visible output as it streams.
"""

from __future__ import annotations

from gateway.tool_calls.generic import GenericParser
from gateway.tool_calls.hermes import HermesParser
from gateway.tool_calls.llama3_json import Llama3JsonParser
from gateway.tool_calls.parser_types import ParsedDelta, ToolCall, ToolCallParser

__all__ = ["PARSERS", "ParsedDelta", "ToolCall", "ToolCallParser", "make_parser"]

PARSERS = ("hermes", "llama3_json", "generic")


def make_parser(name: str, tool_names: frozenset[str]) -> ToolCallParser:
    """A fresh parser (one per request) for the format `name`; ValueError for an unknown name."""
    if name == "hermes":
        return HermesParser(tool_names)
    if name == "llama3_json":
        return Llama3JsonParser(tool_names)
    if name == "generic":
        return GenericParser(tool_names)
    raise ValueError(f"unknown tool-call parser {name!r}; choose one of {', '.join(PARSERS)}")
