"""Typed values that cross Redis: the work item a scheduler queues and the chunks that flow back.

`EnsembleInputs` are exactly the ensemble's input tensors (strings), so any instance can run a request that
another instance's gateway validated and translated. `Chunk` mirrors the ensemble's outputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from paddlellm.errors import EngineDead, EngineError, InvalidRequest, Overloaded


@dataclass(frozen=True)
class EnsembleInputs:
    prompt: str = ""  # completion prompt, or "" for chat
    messages: str = ""  # JSON array of chat messages, or "" for completions
    sampling: str = ""  # SamplingParams JSON, "" = defaults
    tools: str = ""  # JSON array of the chat request's tools for the template, or "" (none)


@dataclass(frozen=True)
class WorkRequest:
    request_id: str
    origin: str  # instance id whose client waits for the result
    inputs: EnsembleInputs
    enqueue_time: float  # unix seconds at the origin
    # Filled by the scheduler when the request resumes on a new executor: ids already streamed to the client.
    resume_token_ids: tuple[int, ...] = ()
    attempt: int = 0  # 0 on the first run, +1 each time a lease is taken over

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.request_id,
                "origin": self.origin,
                "t": self.enqueue_time,
                "prompt": self.inputs.prompt,
                "messages": self.inputs.messages,
                "sampling": self.inputs.sampling,
                **({"tools": self.inputs.tools} if self.inputs.tools else {}),
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes, resume: tuple[int, ...] = (), attempt: int = 0) -> WorkRequest:
        d = json.loads(text)
        return cls(
            d["id"],
            d["origin"],
            EnsembleInputs(d["prompt"], d["messages"], d["sampling"], d.get("tools", "")),
            d["t"],
            resume,
            attempt,
        )


@dataclass(frozen=True)
class Chunk:
    text: str = ""  # text delta
    token_ids: tuple[int, ...] = ()  # ids produced by this step
    finish_reason: str = ""  # "" while running; "stop" | "length" | "abort" on the last chunk
    prompt_tokens: int = 0
    completion_tokens: int = 0  # cumulative, including resumed ids
    engine_stats: str = ""
    # Where it ran, for metrics and tests: the executing instance id.
    executor: str = field(default="", compare=False)
    cached_tokens: int = 0  # prompt tokens the executing engine found in its prefix cache
    logprobs: str = ""  # the engine's logprobs JSON (gateway.logprobs), "" when not asked

    def to_json(self) -> str:
        extra = {"l": self.logprobs} if self.logprobs else {}
        return json.dumps(
            {
                "x": self.text,
                "ids": list(self.token_ids),
                "f": self.finish_reason,
                "p": self.prompt_tokens,
                "c": self.completion_tokens,
                "s": self.engine_stats,
                "e": self.executor,
                "k": self.cached_tokens,
                **extra,
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Chunk:
        d = json.loads(text)
        return cls(
            d["x"], tuple(d["ids"]), d["f"], d["p"], d["c"], d["s"], d["e"], d.get("k", 0), d.get("l", "")
        )


_ERRORS: dict[str, type[EngineError]] = {
    c.__name__: c for c in (EngineError, InvalidRequest, Overloaded, EngineDead)
}


def error_to_json(exc: EngineError) -> str:
    # Subclasses defined elsewhere travel as their nearest shared base so the origin can rebuild them.
    kind = next(c.__name__ for c in type(exc).__mro__ if c.__name__ in _ERRORS)
    return json.dumps({"kind": kind, "message": exc.message, "param": exc.param})


def error_from_json(text: str | bytes) -> EngineError:
    d = json.loads(text)
    return _ERRORS.get(d["kind"], EngineError)(d["message"], param=d["param"])
