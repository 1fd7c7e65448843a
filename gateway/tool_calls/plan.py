"""What a chat request's tool fields mean for its engine request and its answer: the `ToolPlan`.

Rules (docs/api.md, "Tool calling"):
- no tools: `tool_choice` may only be absent, "none" or "auto" (which then change nothing);
- "none": the tools are not shown to the model and nothing is parsed (a history with calls still renders);
  except with the `generic` parser, whose answers are JSON: there the tools are shown and the answer is
  constrained to `{"content": ..}` (a model that saw JSON calls in the history keeps writing JSON), unless
  the request has its own output constraint (`response_format`, ...), which then wins;
- "auto" (the default with tools): the tools go to the chat template; the answer is parsed with the server's
  `--tool-call-parser`; refused when the server runs with `--no-enable-auto-tool-choice`;
- "required" / a named function: as "auto", and decoding is constrained to calls
  (`gateway.tool_calls.grammar`), of any tool or of the named one; a name that is not in `tools` is a 400
  naming `tool_choice.function.name`.
A constraint on the output from tools cannot be combined with another one (`response_format`, ...): the
second is a 400 naming it. Tool schemas the grammar library cannot compile come back from the engine as a
400 naming `tools`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from gateway.tool_calls.grammar import content_grammar, tool_grammar
from gateway.tool_fields import NamedToolChoice, ToolFields
from paddlellm.errors import InvalidRequest
from paddlellm.sampling import StructuredSpec


@dataclass(frozen=True)
class ToolPlan:
    parser: str | None  # the answer's parser (gateway.tool_calls.make_parser); None: nothing parsed
    tools_json: str  # the `tools` ensemble input: JSON of the tools the template shows ("" none)
    spec: StructuredSpec | None  # the output constraint, None: unconstrained
    names: frozenset[str]  # functions a parsed call may name
    yields: bool = False  # dropped (NO_TOOLS) when the request has its own output constraint


NO_TOOLS = ToolPlan(None, "", None, frozenset())


def plan_tools(req: ToolFields, parser: str, enable_auto: bool) -> ToolPlan:
    """The plan for a request's `tools`, `tool_choice` and `parallel_tool_calls` under the server's parser."""
    tools = req.tools or []
    choice = req.tool_choice
    if not tools:
        if choice not in (None, "none", "auto"):
            raise InvalidRequest("'tool_choice' needs 'tools' to choose from", param="tool_choice")
        return NO_TOOLS
    names = [t.function.name for t in tools]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise InvalidRequest(f"two tools are named {name!r}", param=f"tools[{i}].function.name")
    for i, t in enumerate(tools):
        params = t.function.parameters
        if params is not None and params.get("type", "object") != "object":
            raise InvalidRequest(
                "a function's 'parameters' must be a JSON schema of an object",
                param=f"tools[{i}].function.parameters",
            )
    if choice is None:
        choice = "auto"
    tools_json = json.dumps([t.model_dump(exclude_none=True) for t in tools], ensure_ascii=False)
    if choice == "none":
        if parser != "generic":
            return NO_TOOLS
        spec = StructuredSpec.create("grammar", content_grammar(), param="tool_choice")
        return ToolPlan("generic", tools_json, spec, frozenset(), yields=True)
    if choice == "auto" and not enable_auto:
        raise InvalidRequest(
            "'tool_choice' \"auto\" is off on this server (started with --no-enable-auto-tool-choice); "
            'use "required", a named function or "none"',
            param="tool_choice",
        )
    chosen = [(t.function.name, t.function.parameters) for t in tools]
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if name not in names:
            raise InvalidRequest(
                f"'tool_choice' names function {name!r}, which is not in 'tools'",
                param="tool_choice.function.name",
            )
        chosen = [c for c in chosen if c[0] == name]
    forced = choice != "auto"
    parallel = req.parallel_tool_calls is not False and not isinstance(choice, NamedToolChoice)
    grammar = tool_grammar(parser, chosen, forced=forced, parallel=parallel)
    spec = StructuredSpec.create("grammar", grammar, param="tools") if grammar is not None else None
    return ToolPlan(parser, tools_json, spec, frozenset(names))
