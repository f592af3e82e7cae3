"""The Starlette application: guards, JSON errors, lifespan and the route table.

Layers, outermost first: optional CORS (only with ``--cors-origin``), the
:class:`Guard` (bearer token on every ``/api/`` call, body cap counted while
the body streams in, before any parsing, and security headers), then the
routes (:mod:`ftspl.serve.routes`), which share the :class:`Server` state and
the :class:`ApiError` answers through :mod:`ftspl.serve.server`. Blocking work never runs on the event
loop: queries go to worker threads through an admission gate (``workers``
computing, ``queue`` waiting, 503 + ``Retry-After`` beyond), metadata and
previews through the thread pool.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ftspl.engine.errors import FtsplError
from ftspl.serve import routes
from ftspl.serve.config import ServeConfig
from ftspl.serve.live import LiveIndex
from ftspl.serve.server import STATIC, ApiError, BodyTooLarge, Server, error_response

log = logging.getLogger(__name__)

#: the page loads only its own files: no CDN, no inline script, works offline
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


class Guard:
    """Token check and body cap for ``/api/``; security headers on every response."""

    def __init__(self, app: ASGIApp, token: str | None, max_body: int) -> None:
        self.app, self.max_body = app, max_body
        self.token = None if token is None else token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope["path"].startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("x-content-type-options", "nosniff")
                headers.setdefault("referrer-policy", "no-referrer")
                if not api:
                    headers.setdefault("content-security-policy", PAGE_CSP)
            await send(message)

        if not api:
            await self.app(scope, receive, send_with_headers)
            return
        headers = Headers(scope=scope)
        if self.token is not None and scope["method"] != "OPTIONS" and not self._authorised(headers):
            response = error_response(401, "missing or wrong token: send the header 'Authorization: Bearer TOKEN'",
                                      {"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send_with_headers)
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            status, msg = (413, str(BodyTooLarge(self.max_body))) if length.isdigit() else (400, "bad Content-Length")
            await error_response(status, msg, {"Connection": "close"})(scope, receive, send_with_headers)
            return
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:  # chunked bodies carry no length up front
                    raise BodyTooLarge(self.max_body)
            return message

        await self.app(scope, capped_receive, send_with_headers)

    def _authorised(self, headers: Headers) -> bool:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        assert self.token is not None
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token)


def _lifespan(server: Server):
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if server.live is None:
            cfg = server.cfg
            from ftspl.engine.home import Home

            server.live = await anyio.to_thread.run_sync(
                lambda: LiveIndex(Home.resolve(cfg.home), cfg.poll_s, cfg.device)
            )
        server.limiter = anyio.CapacityLimiter(server.cfg.workers)
        server.live.start()
        try:
            yield
        finally:
            # stop following here: after a SIGTERM uvicorn re-raises the signal and the process ends
            await anyio.to_thread.run_sync(server.live.close if server.owns_live else server.live.stop)

    return lifespan


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers)


_HTTP_MESSAGES = {404: "not found: see GET /api/info and the API in docs/SERVE.md", 405: "method not allowed here"}


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 304:
        return Response(status_code=304, headers=exc.headers)
    generic = exc.detail in (None, "", "Not Found", "Method Not Allowed")
    message = _HTTP_MESSAGES.get(exc.status_code, str(exc.detail)) if generic else str(exc.detail)
    return error_response(exc.status_code, message, exc.headers)


async def _on_ftspl_error(request: Request, exc: Exception) -> Response:
    # the index or model went bad under us (e.g. a store replaced mid-read): not the client's fault
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return error_response(503, f"index unavailable ({exc}); retry shortly", {"Retry-After": "2"})


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path)
    return error_response(500, "internal error; the server log has the details")


def create_app(cfg: ServeConfig, live: LiveIndex | None = None) -> Starlette:
    """The application; with ``live=None`` the lifespan opens the index of ``cfg.home`` (and closes it)."""
    from starlette.middleware.cors import CORSMiddleware

    cfg.check()
    server = Server(cfg, live)
    middleware = []
    if cfg.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins), allow_methods=["GET", "POST"],
                                     allow_headers=["Authorization", "Content-Type"], max_age=600))
    middleware.append(Middleware(Guard, token=cfg.token, max_body=cfg.max_body_bytes))
    app = Starlette(
        routes=[
            Route("/", routes.page, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
            Route("/api/health", routes.health, methods=["GET"]),
            Route("/api/info", routes.info, methods=["GET"]),
            Route("/api/query", routes.query, methods=["POST"]),
            Route("/api/shapes/{shape_id:int}", routes.shape, methods=["GET"]),
            Route("/api/shapes/{shape_id:int}/preview.png", routes.preview, methods=["GET"], name="preview"),
        ],
        middleware=middleware,
        exception_handlers={ApiError: _on_api_error, HTTPException: _on_http_error, FtsplError: _on_ftspl_error,
                            Exception: _on_unexpected},
        lifespan=_lifespan(server),
    )
    app.state.server = server
    return app


__all__ = ["ApiError", "Guard", "Server", "create_app"]
