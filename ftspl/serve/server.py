"""What the HTTP handlers share: the server state, the admission gate and the error answers.

Its own module so that :mod:`ftspl.serve.app` (which builds the route table)
and :mod:`ftspl.serve.routes` (the handlers) both import it and not each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from starlette.responses import JSONResponse

from ftspl.serve.config import ServeConfig
from ftspl.serve.live import LiveIndex

STATIC = Path(__file__).resolve().parent / "static"


class ApiError(Exception):
    """An answer other than 200, with the message the client sees."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is over the limit of {limit} bytes; send fewer or smaller photos")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


class Server:
    """What the handlers share: the options, the live index and the admission gate."""

    def __init__(self, cfg: ServeConfig, live: LiveIndex | None) -> None:
        self.cfg, self.live = cfg, live
        self.owns_live = live is None
        self.in_flight = 0  #: queries admitted (computing or waiting); only the event loop touches it
        self.limiter: anyio.CapacityLimiter | None = None

    @contextlib.asynccontextmanager
    async def admission(self) -> AsyncIterator[None]:
        """Admit a query, or refuse it with 503 when ``workers + queue`` are already in."""
        limit = self.cfg.workers + self.cfg.queue
        if self.in_flight >= limit:
            raise ApiError(503, f"server busy: {self.in_flight} queries running or waiting (limit {limit}); "
                                "retry in a second", {"Retry-After": "1"})
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1


__all__ = ["STATIC", "ApiError", "BodyTooLarge", "Server", "error_response"]
