"""The gateway's OpenAPI document (`/openapi.json`): what each route takes and every answer it can give.

FastAPI cannot see most of it: the generation routes read their raw body (to enforce the size limit before
parsing and to validate strictly with field-named errors), and every error is OpenAI's envelope rather than
FastAPI's 422 shape. So the document is FastAPI's list of routes with, per operation, the request body
(required), the 200 (JSON, or `text/event-stream` when the body says `stream: true`) and each error status
the route can return under these settings, all from the models and TypedDicts of `gateway/openai_schema.py`.
Values that depend on the settings (the served model name, `max_model_len`, the limits, whether an API key
is required) are filled in, so the document describes this server, not OpenAI's in general.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter

from gateway import openai_schema as shapes
from gateway.limits import RETRY_AFTER_S
from gateway.settings import GatewaySettings
from paddlellm.protocol.data_url import IMAGE_MEDIA_TYPES

_REF = "#/components/schemas/{model}"
_REQUESTS = (shapes.ChatCompletionRequest, shapes.CompletionRequest)
_RESPONSES = (
    shapes.ChatCompletion,
    shapes.ChatCompletionChunk,
    shapes.Completion,
    shapes.ErrorResponse,
    shapes.ModelCard,
    shapes.ModelList,
    shapes.HealthStatus,
)
_BEARER = "bearerAuth"

_ERRORS = {
    400: "Invalid request: the body is not a JSON object, a field has a wrong type or value (`param` names "
    "it), too many messages, or the prompt with `max_tokens` does not fit the model's context.",
    401: "Missing or wrong API key (`code`: `invalid_api_key`).",
    404: "Unknown model (`code`: `model_not_found`).",
    413: "The request body is larger than the server's limit (`code`: `request_too_large`).",
    429: "The server already serves its limit of concurrent requests (`code`: `rate_limit_exceeded`); "
    "retry after `Retry-After` seconds.",
    500: "The engine failed; the message names only the request id (`X-Request-Id`), details are logged.",
    503: "The engine's queue is full, the inference server is unreachable, or the gateway is starting.",
    504: "The request did not finish within the server's deadline and was stopped (`code`: "
    "`request_timeout`).",
}


@dataclass(frozen=True)
class _Operation:
    ok: str  # the 200's component (JSON)
    stream_chunk: str | None = None  # the component each SSE event carries, for routes that stream
    body: str | None = None  # the request body's component
    errors: tuple[int, ...] = ()


_EXAMPLES: dict[str, dict[str, Any]] = {
    "ChatCompletionRequest": {"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8},
    "CompletionRequest": {"prompt": "The capital of France is", "max_tokens": 8},
}
_GENERATION_ERRORS = (400, 404, 413, 500, 503)
_OPERATIONS = {
    ("post", "/v1/chat/completions"): _Operation(
        "ChatCompletion", "ChatCompletionChunk", "ChatCompletionRequest", _GENERATION_ERRORS
    ),
    ("post", "/v1/completions"): _Operation(
        "Completion", "Completion", "CompletionRequest", _GENERATION_ERRORS
    ),
    ("get", "/v1/models"): _Operation("ModelList"),
    ("get", "/v1/models/{name}"): _Operation("ModelCard", errors=(404,)),
    ("get", "/health"): _Operation("HealthStatus", errors=(503,)),
    ("get", "/ready"): _Operation("HealthStatus", errors=(503,)),
}


def install_openapi(app: FastAPI, settings: GatewaySettings) -> None:
    """Serve `openapi_document` at /openapi.json (built once, on first use)."""

    def cached() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_document(app, settings)
        return app.openapi_schema

    app.openapi = cached  # type: ignore[method-assign]  # FastAPI's documented way to customise it


def openapi_document(app: FastAPI, settings: GatewaySettings) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes, description=_description())
    doc["components"] = {"schemas": components(settings)}
    if settings.api_key is not None:
        doc["components"]["securitySchemes"] = {_BEARER: {"type": "http", "scheme": "bearer"}}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            spec = _OPERATIONS.get((method, path))
            if spec is None:
                raise RuntimeError(f"{method.upper()} {path} has no entry in gateway/openapi_doc.py")
            _describe(op, path, spec, settings)
    return doc


def components(settings: GatewaySettings) -> dict[str, Any]:
    """Every request and response schema, with the bounds these settings put on the requests."""
    inputs = [(t.__name__, "validation", TypeAdapter(t)) for t in _REQUESTS]
    inputs += [(t.__name__, "serialization", TypeAdapter(t)) for t in _RESPONSES]
    _, defs = TypeAdapter.json_schemas(inputs, ref_template=_REF)
    schemas: dict[str, Any] = defs["$defs"]
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        props = schemas[name]["properties"]
        props["model"]["enum"] = sorted({settings.served_model_name, "default"})
        for field in ("max_tokens", "max_completion_tokens"):
            for branch in props.get(field, {}).get("anyOf", []):
                if branch.get("type") == "integer":
                    branch["maximum"] = settings.max_model_len - 1  # gateway.translate.sampling_params
        props["n"]["maximum"] = settings.max_n  # gateway.translate._check_choices
    schemas["ChatCompletionRequest"]["properties"]["messages"]["maxItems"] = settings.max_messages
    schemas["ContentPart"] = _content_part(settings)
    return schemas


def _content_part(settings: GatewaySettings) -> dict[str, Any]:
    """Text parts; image_url parts only with --enable-mm, their URL a data: URL of a served media type
    (or an http(s) URL when some hosts are allowed): gateway/image_parts.py. The image count limit and the
    base64 payload cannot be stated here; they are 400s naming the part."""
    text = copy.deepcopy(shapes.TEXT_PART_SCHEMA)
    if not settings.enable_mm or settings.limit_mm_per_prompt == 0:
        return text
    image = copy.deepcopy(shapes.IMAGE_PART_SCHEMA)
    types = "|".join(t.removeprefix("image/") for t in IMAGE_MEDIA_TYPES)
    b64 = "[A-Za-z0-9+/]"  # non-empty, padded base64 (binascii's validate=True alphabet)
    pattern = f"^data:image/({types});base64,({b64}{{4}})*({b64}{{2}}==|{b64}{{3}}=|{b64}{{4}})$"
    if settings.allowed_media_domains:
        pattern = f"({pattern})|(^https?://)"
    image["properties"]["image_url"]["properties"]["url"]["pattern"] = pattern
    return {"anyOf": [text, image]}


def _describe(op: dict[str, Any], path: str, spec: _Operation, settings: GatewaySettings) -> None:
    errors = set(spec.errors)
    protected = settings.api_key is not None and path not in settings.api_key_exempt_paths
    if protected:
        errors.add(401)
    if spec.body is not None:
        if settings.max_concurrent_streams:
            errors.add(429)
        if settings.request_timeout_s is not None:
            errors.add(504)
        example = _EXAMPLES[spec.body] | {"model": settings.served_model_name}
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": _REF.format(model=spec.body)}, "example": example}
            },
        }
    op["responses"] = {"200": _ok(spec)} | {str(s): _error(s) for s in sorted(errors)}
    for param in op.get("parameters", []):
        if param["name"] == "name":  # /v1/models/{name}: the one name that exists
            param["example"] = settings.served_model_name
    if settings.api_key is not None:
        op["security"] = [{_BEARER: []}] if protected else []


def _ok(spec: _Operation) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": _REF.format(model=spec.ok)}}}
    if spec.stream_chunk is None:
        return {"description": "Successful response", "content": content}
    # OpenAPI 3.1 has no `itemSchema` (3.2 does): for event streams, tools read `schema` as one event's.
    data = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {
            "anyOf": [{"$ref": _REF.format(model=m)} for m in (spec.stream_chunk, "ErrorResponse")]
        },
    }
    content["text/event-stream"] = {
        "schema": {
            "description": f"One server-sent event: `data: <{spec.stream_chunk} JSON>` per chunk, then "
            "`data: [DONE]`; a failure after the stream began is one `data: <ErrorResponse JSON>` before "
            "`[DONE]`.",
            "type": "object",
            "required": ["data"],
            "properties": {"data": {"anyOf": [{"const": "[DONE]"}, data]}},
        }
    }
    return {
        "description": f"`{spec.ok}` (JSON), or with `stream: true` a stream of `{spec.stream_chunk}` events",
        "headers": {
            "X-Request-Id": {
                "required": True,
                "description": "The request's id, also in its response and in the server's log",
                "schema": {"type": "string"},
            }
        },
        "content": content,
    }


def _error(status: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": _ERRORS[status],
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="ErrorResponse")}}},
    }
    if status == 429:
        out["headers"] = {
            "Retry-After": {
                "required": True,
                "description": f"Seconds to wait before retrying ({RETRY_AFTER_S})",
                "schema": {"type": "integer", "minimum": 0},
            }
        }
    if status == 401:
        out["headers"] = {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}}
    return out


def _description() -> str:
    return (
        "OpenAI-compatible chat and text completions served from Triton. Every error is OpenAI's envelope "
        '`{"error": {"message", "type", "param", "code"}}`; see docs/api.md for the fields and limits.'
    )
