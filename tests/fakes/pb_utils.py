"""A behavioural fake of `triton_python_backend_utils` (Triton 2.51's python backend), for adapter tests.

It models what docs/triton-notes.md measured on the real backend, not just the names:
- `TritonError` is *not* an exception (raising it is a TypeError in the real stub); it travels inside
  `InferenceResponse(error=...)`.
- A response sender refuses anything after a FINAL flag, as the real one does ("Response sender has been
  closed"), and records every send so tests can check order, flags and tensors.
- `InferenceRequest` is both the server-side request handed to `execute()` (inputs, id, parameters JSON,
  cancellation) and a BLS request (`exec(decoupled=True)`), routed to handlers registered in `bls_models`.
- Tensors keep numpy arrays; string tensors are object arrays of bytes, as Triton hands them over.

Install it as `sys.modules["triton_python_backend_utils"]` (tests use monkeypatch.setitem) before loading
a `model.py`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1

# BLS routing: model name -> handler(request) -> the InferenceResponses a decoupled model sends.
bls_models: dict[str, Callable[[InferenceRequest], list[InferenceResponse]]] = {}


class TritonModelException(Exception):
    pass


class TritonError:
    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, code={self._code})"


class Tensor:
    def __init__(self, name: str, array: Any) -> None:
        if not isinstance(name, str):
            raise TritonModelException("tensor name must be a string")
        arr = np.asarray(array)
        if arr.dtype.kind in ("U", "S"):  # the real backend keeps strings as bytes objects
            arr = np.array([x.encode() if isinstance(x, str) else x for x in arr.reshape(-1)], np.object_)
            arr = arr.reshape(np.asarray(array).shape)
        self._name = name
        self._array = arr

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def is_cpu(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, {self._array!r})"


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None) -> None:
        if error is not None and not isinstance(error, TritonError):
            raise TritonModelException("error must be a TritonError")
        self._tensors = list(output_tensors or [])
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return list(self._tensors)

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def outputs(self) -> dict[str, np.ndarray]:
        """Test helper: name -> array."""
        return {t.name(): t.as_numpy() for t in self._tensors}


@dataclass
class Sent:
    response: InferenceResponse | None
    flags: int


@dataclass
class InferenceResponseSender:
    """Records sends; a send after FINAL raises, like the real sender."""

    request: InferenceRequest
    sent: list[Sent] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        with self._lock:
            if self.closed.is_set():
                raise TritonModelException("Unable to send response. Response sender has been closed.")
            if response is None and flags != TRITONSERVER_RESPONSE_COMPLETE_FINAL:
                raise TritonModelException("a response without data must carry the FINAL flag")
            if response is not None and not isinstance(response, InferenceResponse):
                raise TritonModelException("send() takes an InferenceResponse")
            self.sent.append(Sent(response, flags))
            if flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
                self.closed.set()

    def is_cancelled(self) -> bool:
        return self.request.is_cancelled()

    # --- test helpers
    @property
    def responses(self) -> list[InferenceResponse]:
        return [s.response for s in self.sent if s.response is not None]

    @property
    def finished(self) -> bool:
        return self.closed.is_set()


class InferenceRequest:
    def __init__(
        self,
        inputs: list[Tensor] | None = None,
        request_id: str = "",
        parameters: dict[str, Any] | str | None = None,
        model_name: str = "",
        requested_output_names: list[str] | None = None,
        **_: Any,
    ) -> None:
        self._inputs = {t.name(): t for t in inputs or []}
        self._id = request_id
        self._parameters = parameters if isinstance(parameters, str) else json.dumps(parameters or {})
        self.model_name = model_name
        self.requested_output_names = list(requested_output_names or [])
        self._cancelled = threading.Event()
        self._sender: InferenceResponseSender | None = None

    # --- server-side request API
    def inputs(self) -> list[Tensor]:
        return list(self._inputs.values())

    def request_id(self) -> str:
        return self._id

    def parameters(self) -> str:
        return self._parameters

    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()

    def get_response_sender(self) -> InferenceResponseSender:
        if self._sender is None:
            self._sender = InferenceResponseSender(self)
        return self._sender

    # --- BLS API
    def exec(self, decoupled: bool = False) -> Any:
        handler = bls_models.get(self.model_name)
        if handler is None:
            raise TritonModelException(f"Request for unknown model: '{self.model_name}' is not found")
        responses = handler(self)
        if decoupled:
            return iter(responses)
        if len(responses) != 1:
            raise TritonModelException("a non-decoupled BLS call needs exactly one response")
        return responses[0]

    # --- test helpers
    def cancel(self) -> None:
        self._cancelled.set()


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return {t.name(): t for t in request.inputs()}.get(name)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return {t.name(): t for t in response.output_tensors()}.get(name)


def iter_sent(sender: InferenceResponseSender) -> Iterator[Sent]:
    return iter(list(sender.sent))
