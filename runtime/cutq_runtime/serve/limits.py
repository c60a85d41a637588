"""ASGI middleware that bounds every request before a route sees it, and records it for /metrics.

The upload limit is enforced while the body arrives: a declared Content-Length over the limit is answered
413 before anything is read, and a body without one (chunked) is cut off as soon as it passes the limit, so a
client can never make the server hold more than the limit plus one chunk.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

from .metrics import Metrics
from .pool import InferencePool

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# Routes whose time is an inference's; everything else is counted but not timed.
TIMED = frozenset({"/api/remove", "/v1/cutout"})
ROUTES = frozenset({*TIMED, "/", "/healthz", "/readyz", "/metrics", "/v1/models", "/docs", "/openapi.json"})


class UploadTooLarge(HTTPException):
    """An HTTPException, so FastAPI's form parsing passes it through as a 413 instead of a generic 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"upload larger than the limit of {limit / 2**20:g} MiB (--max-upload-mb)")


async def send_json(send: Send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    raw = json.dumps(body).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()), *extra]})
    await send({"type": "http.response.body", "body": raw})


class BodyLimit:
    """Refuse or cut off request bodies over `limit` bytes."""

    def __init__(self, app: App, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            error = UploadTooLarge(self.limit) if declared.isdigit() else None
            message = error.detail if error else "invalid Content-Length header"
            return await send_json(send, 413 if error else 400, {"error": message}, {"connection": "close"})
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise UploadTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)


class Observe:
    """Count every response by route and status, and time the cut-out routes."""

    def __init__(self, app: App, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        route = path if path in ROUTES else ("/static" if path.startswith("/static/") else "other")
        started = time.perf_counter()
        status = 500

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            elapsed = time.perf_counter() - started if route in TIMED and status < 400 else None
            self.metrics.observe(route, status, elapsed)


class Admission:
    """Admit a cut-out request into the pool's bound before its body is read; refuse it (503) otherwise."""

    def __init__(self, app: App, pool: InferencePool) -> None:
        self.app = app
        self.pool = pool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in TIMED or scope.get("method") not in ("GET", "POST"):
            return await self.app(scope, receive, send)
        if not self.pool.admit():
            return await send_json(send, 503, {"error": "server busy: the queue is full, retry shortly"},
                                   {"retry-after": "1", "connection": "close"})
        try:
            await self.app(scope, receive, send)
        finally:
            self.pool.leave()
