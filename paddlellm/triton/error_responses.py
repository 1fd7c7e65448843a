"""Errors -> Triton error responses: the right TritonError code, the protocol's message text, no traceback.

On a gRPC stream Triton transmits only the message (the status code is lost, see docs/triton-notes.md),
so the message carries the error class and `param` in `protocol.format_error`'s form; the code still
matters for HTTP and non-streaming clients.
"""

from __future__ import annotations

import logging
from typing import Any

from paddlellm import protocol
from paddlellm.errors import EngineError

log = logging.getLogger(__name__)


def as_engine_error(exc: BaseException) -> EngineError:
    """Typed errors pass through; anything else becomes an INTERNAL error that names only its type."""
    if isinstance(exc, EngineError):
        return exc
    log.error("internal error", exc_info=exc)  # the traceback goes to the server log, never to clients
    return EngineError(f"internal error ({type(exc).__name__})")


def triton_error(pb: Any, exc: BaseException) -> Any:
    err = as_engine_error(exc)
    code = getattr(pb.TritonError, err.triton_code, pb.TritonError.INTERNAL)
    return pb.TritonError(protocol.format_error(err), code)


def error_response(pb: Any, exc: BaseException) -> Any:
    return pb.InferenceResponse(error=triton_error(pb, exc))


def send_error(pb: Any, sender: Any, exc: BaseException) -> None:
    """Send an error as the request's last response (decoupled models)."""
    sender.send(error_response(pb, exc), flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
