"""The API key check (`--api-key`): one ASGI middleware in front of every route but the exempt paths.

A middleware rather than a check per route, so a route added later (or FastAPI's own /openapi.json) cannot
forget it. The key is compared in constant time and never logged; a wrong key gets the same OpenAI-shaped
401 as a missing one, so an attacker learns nothing from the answer.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.openai_errors import ApiError

BEARER_HINT = "invalid or missing API key (send 'Authorization: Bearer <key>')"


def _digest(value: bytes) -> bytes:
    # Equal-length digests: compare_digest then leaks not even the key's length.
    return hashlib.sha256(value).digest()


def key_matches(authorization: bytes, key: bytes) -> bool:
    """`authorization` is the raw header value; the scheme is case-insensitive as RFC 9110 says."""
    scheme, _, token = authorization.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(_digest(token.strip()), _digest(key))


class ApiKeyMiddleware:
    """401 for HTTP requests to non-exempt paths without `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, key: str, exempt_paths: tuple[str, ...]) -> None:
        self.app, self.key, self.exempt = app, key.encode(), frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if key_matches(header, self.key):
            await self.app(scope, receive, send)
            return
        response = ApiError(401, BEARER_HINT, code="invalid_api_key").response(
            headers={"WWW-Authenticate": "Bearer"}
        )
        await response(scope, receive, send)
