"""The hook metrics plug into (issue 6): the gateway reports each request's life to a RequestObserver.

The default observer does nothing; a Prometheus implementation is passed to `create_app(observer=...)`.
Calls happen on the event loop and must not block.
"""

from __future__ import annotations

from typing import Protocol


class RequestObserver(Protocol):
    def request_started(self, endpoint: str) -> None: ...

    def first_token(self, endpoint: str, seconds: float) -> None:
        """Time from arrival to the first response with tokens (TTFT)."""

    def request_finished(
        self,
        endpoint: str,
        status: int,
        prompt_tokens: int,
        completion_tokens: int,
        seconds: float,
        finish_reason: str | None,
    ) -> None:
        """Once per request that got past validation; status: the HTTP status (499: client gone)."""


class NullObserver:
    def request_started(self, endpoint: str) -> None:
        pass

    def first_token(self, endpoint: str, seconds: float) -> None:
        pass

    def request_finished(
        self,
        endpoint: str,
        status: int,
        prompt_tokens: int,
        completion_tokens: int,
        seconds: float,
        finish_reason: str | None,
    ) -> None:
        pass
