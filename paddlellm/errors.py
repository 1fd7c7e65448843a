"""Typed errors shared by the engine, the Triton adapters and the gateway.

Each error carries the Triton status code it maps to, so adapters never guess. The gateway maps a Triton
code (not these classes: it sees only what crosses gRPC) to the HTTP status and OpenAI's envelope in
`gateway/openai_errors.py`; `docs/api.md` "Errors" lists the mapping.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class: a failure the client may be told about (message only, never a traceback)."""

    triton_code: str = "INTERNAL"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(EngineError):
    """The request is malformed or violates a limit; `param` names the offending field."""

    triton_code = "INVALID_ARG"


class Overloaded(EngineError):
    """The queue is full (or the request waited longer than the scheduler TTL)."""

    triton_code = "UNAVAILABLE"


class Cancelled(EngineError):
    """The client went away; nobody is listening for this error."""

    triton_code = "CANCELLED"


class EngineDead(EngineError):
    """A worker process died or the engine loop crashed; the server is no longer healthy."""

    triton_code = "INTERNAL"


class ConfigError(ValueError):
    """A bad flag or config key, raised at start-up with the key's name."""


class CheckpointError(ValueError):
    """A malformed or unsupported checkpoint; the message names the file and the field."""

    def __init__(self, file: str, field: str, problem: str) -> None:
        super().__init__(f"{file}: field '{field}': {problem}")
        self.file = file
        self.field = field
