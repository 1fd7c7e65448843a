"""Every failure -> OpenAI's error envelope {"error": {"message", "type", "param", "code"}} + HTTP status.

Before a stream starts, errors are JSON responses with their status; after it started they are one SSE
`data:` chunk with the same envelope followed by `data: [DONE]`. Internal errors tell the client the request
id only; details go to the log.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.openai_schema import ErrorBody, ErrorResponse
from paddlellm.errors import Cancelled, EngineDead, EngineError, InvalidRequest, Overloaded

log = logging.getLogger("gateway")

# Parts of a pydantic error location that name a union member rather than a field.
_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "function-after", "function-before"}


RETRY_AFTER_S = 1  # seconds a client should wait before retrying a 503 of a busy or restarting engine


class ApiError(Exception):
    """An error with everything the envelope needs."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}  # e.g. Retry-After on a 429

    def body(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code)
        )

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers | (headers or {}))

    def sse(self) -> str:
        return f"data: {json.dumps(self.body(), ensure_ascii=False)}\n\ndata: [DONE]\n\n"


def param_from_loc(loc: tuple[Any, ...]) -> str | None:
    """('messages', 0, 'content', 'list[TextPart]', 1, 'type') -> 'messages[0].content[1].type'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part not in _UNION_TAGS and "[" not in part and "-" not in part:
            out += f".{part}" if out else part
    return out or None


def from_validation(exc: ValidationError) -> ApiError:
    errors = exc.errors(include_url=False)
    first = errors[0] if errors else {"type": "", "loc": (), "msg": "invalid request"}
    if first["type"] == "json_invalid":
        return ApiError(400, f"request body is not valid JSON: {first['msg']}", code="invalid_json")
    if first["type"] == "model_type" and not first["loc"]:
        return ApiError(400, "request body must be a JSON object", code="invalid_json")
    # In a union (e.g. content: str | list[part]) the first member's error is rarely the useful one: report
    # the deepest location under the same top-level field.
    top = first["loc"][:1]
    best = max((e for e in errors if e["loc"][:1] == top), key=lambda e: len(param_from_loc(e["loc"]) or ""))
    param = param_from_loc(best["loc"])
    msg = best["msg"].removeprefix("Value error, ")
    return ApiError(400, f"{param}: {msg}" if param else msg, param=param, code="invalid_value")


def from_engine(exc: EngineError, request_id: str) -> ApiError:
    if isinstance(exc, InvalidRequest):
        return ApiError(400, exc.message, param=exc.param, code="invalid_value")
    if isinstance(exc, Overloaded):  # a full queue, or the inference server away (e.g. being restarted)
        return ApiError(
            503,
            f"{exc.message} (request {request_id})",
            type="server_error",
            code="overloaded",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    if isinstance(exc, Cancelled):
        return ApiError(499, "request cancelled", type="server_error", code="cancelled")
    if isinstance(exc, EngineDead):
        log.error("request %s: engine dead: %s", request_id, exc.message)
        return ApiError(
            500, f"the engine is not running (request {request_id})", type="server_error", code="engine_dead"
        )
    log.error("request %s: internal error: %s", request_id, exc.message)
    return internal(request_id)


def internal(request_id: str) -> ApiError:
    return ApiError(
        500, f"internal server error (request {request_id})", type="server_error", code="internal_error"
    )


def model_not_found(name: str) -> ApiError:
    # vLLM answers an unknown model with type `model_not_found`; OpenAI puts it in `code`: set both
    # (docs/api.md "Errors").
    return ApiError(
        404,
        f"The model '{name}' does not exist",
        type="model_not_found",
        param="model",
        code="model_not_found",
    )


def install_handlers(app: FastAPI) -> None:
    """Framework-raised errors (unknown route, wrong method, anything unexpected) get the same envelope."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        request_id = getattr(request.state, "request_id", None)
        return exc.response(headers={"X-Request-Id": request_id} if request_id else None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        err = ApiError(exc.status_code, str(exc.detail), code=code)
        return err.response(headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = tuple(first.get("loc", ()))
        param = param_from_loc(loc[1:] if loc[:1] in (("body",), ("query",)) else loc)
        return ApiError(400, str(first.get("msg")), param=param, code="invalid_value").response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "-")
        log.exception("request %s: unhandled error", request_id)
        return internal(request_id).response()
