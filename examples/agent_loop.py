"""A tool-using agent loop with the openai SDK against this server (docs/tools.md).

    python -m gateway.api_server --port 8000 &          # the default model
    python examples/agent_loop.py --base-url http://127.0.0.1:8000/v1

The loop: ask with the tools offered; run every call the model makes; send the results back as `tool`
messages; repeat until the model answers with content (or `--max-turns` is reached, when tools are turned off
with tool_choice "none" so it must answer). The first turn forces a call (`--first-tool-choice required`): a
135M-parameter model rarely decides to call a tool on its own, and agent frameworks force the first step the
same way. Prints the transcript; exits 1 if no tool ran or no answer came.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from openai import OpenAI

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "the city, e.g. Paris"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The local time in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
]


def get_weather(city: str, unit: str) -> dict[str, Any]:
    celsius = 8 + len(city) % 17  # a stand-in for a weather API
    return {"city": city, "temperature": celsius if unit == "celsius" else celsius * 9 / 5 + 32, "unit": unit}


def get_time(city: str) -> dict[str, Any]:
    return {"city": city, "time": "14:05"}


FUNCTIONS: dict[str, Callable[..., dict[str, Any]]] = {"get_weather": get_weather, "get_time": get_time}


def run(client: OpenAI, model: str, question: str, max_turns: int, first_choice: str) -> tuple[int, str]:
    """(tool calls run, the final answer)."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a helpful assistant. Use the tools to answer."},
        {"role": "user", "content": question},
    ]
    ran = 0
    for turn in range(max_turns + 1):
        choice = first_choice if turn == 0 else ("auto" if turn < max_turns else "none")
        reply = client.chat.completions.create(
            model=model,
            messages=messages,
            tools=TOOLS,
            tool_choice=choice,
            max_tokens=200,
            temperature=0,  # type: ignore[arg-type]
        )
        msg = reply.choices[0].message
        if not msg.tool_calls:
            print(f"assistant: {msg.content}")
            return ran, msg.content or ""
        messages.append(msg.model_dump(exclude_none=True))  # the assistant turn, with its calls
        for call in msg.tool_calls:
            args = json.loads(call.function.arguments)
            result = FUNCTIONS[call.function.name](**args)
            ran += 1
            print(f"tool call: {call.function.name}({call.function.arguments}) -> {json.dumps(result)}")
            messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    return ran, ""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--model", default="default")
    p.add_argument("--question", default="What is the weather in Paris right now, in celsius?")
    p.add_argument("--max-turns", type=int, default=3)
    p.add_argument("--first-tool-choice", default="required", choices=["required", "auto"])
    args = p.parse_args()
    client = OpenAI(base_url=args.base_url, api_key="unused")
    print(f"user: {args.question}")
    ran, answer = run(client, args.model, args.question, args.max_turns, args.first_tool_choice)
    return 0 if ran and answer.strip() else 1


if __name__ == "__main__":
    sys.exit(main())
