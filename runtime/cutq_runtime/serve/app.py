"""The FastAPI application: cutq's own API (/v1), rembg's (/api/remove), health, metrics and the web page.

Every cut-out goes through `cutq_runtime.remove()` (PNG) or the same decode -> cut path (WebP) on the bounded
pool, so the server's bytes equal the library's. Errors are JSON `{"error": ...}` with a 4xx status for
anything a client sent; a 500 would be a bug.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, File, Form, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import images
from ..api import RemoveOptions, cut, remove
from ..errors import ImageError, ModelError
from . import urlfetch
from .config import ServeConfig
from .limits import Admission, BodyLimit, Observe
from .metrics import Metrics
from .params import ParamError, parse_bgcolor, rembg_unsupported
from .pool import InferencePool, QueueTimeout
from .registry import Variants

STATIC = Path(__file__).parent / "static"
IMAGE_STATUS = {"empty": 400, "corrupt": 400, "not_image": 415, "unsupported": 415, "too_large": 413}
URL_STATUS = {urlfetch.UrlTooLarge: 413, urlfetch.UrlTimeout: 504, urlfetch.UrlRefused: 400}
log = logging.getLogger("cutq.serve")


class ClientError(Exception):
    """A request the server refuses with `status` and a message for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def create_app(config: ServeConfig, variants: Variants | None = None) -> FastAPI:
    """The app; `variants` resolved by the caller (so unknown models fail before the port opens), else here."""
    variants = variants or Variants(config)
    pool = InferencePool(config.concurrency, config.max_queue, config.queue_timeout)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        threading.Thread(target=variants.load, name="cutq-load", daemon=True).start()
        yield
        pool.shutdown()

    app = FastAPI(title="cutq", summary="U²-Net background removal on CPU: FP32, INT8 and pruned variants.",
                  lifespan=lifespan)
    _errors(app)

    def authorized(request: Request) -> None:
        if config.token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {config.token}".encode()):
            raise ClientError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorized)]

    async def respond(data: bytes, source: str, model: str | None, options: RemoveOptions, fmt: str) -> Response:
        if variants.error:
            raise ClientError(503, f"the server could not load its models: {variants.error}")
        if not variants.ready.is_set():
            raise ClientError(503, "models are still loading", {"Retry-After": "5"})
        try:
            session = variants.get(model)
        except ModelError as exc:
            raise ClientError(422, str(exc)) from None
        started = time.perf_counter()

        def job() -> tuple[bytes, float]:
            begun = time.perf_counter()
            if fmt == "png":
                body = remove(data, session=session, source=source, options=options)
            else:
                body = images.encode_webp(cut(images.decode(data, source, options.max_pixels), session, options, source))
            return body, time.perf_counter() - begun

        try:
            body, worked = await pool.run(job)
        except QueueTimeout:
            raise ClientError(504, f"waited more than {config.queue_timeout:g} s for a worker") from None
        waited = time.perf_counter() - started - worked
        return Response(body, media_type=f"image/{fmt}", headers={
            "X-Cutq-Latency-Ms": f"{worked * 1000:.1f}", "X-Cutq-Queue-Ms": f"{max(waited, 0) * 1000:.1f}",
            "X-Cutq-Model": session.name})

    def options(only_mask: bool, bgcolor: str | None) -> RemoveOptions:
        return RemoveOptions(only_mask=only_mask, bgcolor=parse_bgcolor(bgcolor), max_pixels=config.max_pixels,
                             png_compress_level=config.png_compress_level)

    @app.post("/v1/cutout", dependencies=guarded, tags=["cutq"], openapi_extra=_CUTOUT_BODY,
              responses={200: {"content": {"image/png": {}, "image/webp": {}}}})
    async def cutout(request: Request, model: str | None = None, only_mask: bool = False, bgcolor: str | None = None,
                     format: Literal["png", "webp"] = "png") -> Response:
        """Cut out one image, sent as multipart (`file`) or as the raw request body."""
        data, source = await _read_upload(request)
        return await respond(data, source, model, options(only_mask, bgcolor), format)

    @app.post("/api/remove", dependencies=guarded, tags=["rembg"], response_class=Response)
    async def rembg_post(file: Annotated[bytes, File()], model: Annotated[str | None, Form()] = None,
                         a: Annotated[bool, Form()] = False, af: Annotated[int, Form()] = 240,
                         ab: Annotated[int, Form()] = 10, ae: Annotated[int, Form(ge=0)] = 10,
                         om: Annotated[bool, Form()] = False, ppm: Annotated[bool, Form()] = False,
                         dc: Annotated[bool, Form()] = False, vm: Annotated[bool, Form()] = False,
                         bgc: str | None = None, extras: str | None = None) -> Response:
        """rembg's `POST /api/remove`: the same fields, so scripts written for `rembg s` work unchanged."""
        rembg_unsupported(a=a, ppm=ppm, dc=dc, vm=vm)
        return await respond(file, "upload", model, options(om, bgc), "png")

    @app.get("/api/remove", dependencies=guarded, tags=["rembg"], response_class=Response)
    async def rembg_get(url: str, model: str | None = None, a: bool = False, af: int = 240, ab: int = 10,
                        ae: Annotated[int, Query(ge=0)] = 10, om: bool = False, ppm: bool = False, dc: bool = False,
                        vm: bool = False, bgc: str | None = None, extras: str | None = None) -> Response:
        """rembg's `GET /api/remove?url=`: off unless the server runs with --allow-url; never fetches private
        or loopback addresses, after resolution and after every redirect."""
        if not config.allow_url:
            raise ClientError(403, "fetching URLs is off on this server (start it with --allow-url)")
        rembg_unsupported(a=a, ppm=ppm, dc=dc, vm=vm)
        limits = urlfetch.FetchLimits(max_bytes=config.max_upload_bytes, timeout=config.url_timeout)
        try:
            data = await asyncio.to_thread(urlfetch.fetch, url, limits)
        except urlfetch.UrlRefused as exc:
            raise ClientError(next(s for t, s in URL_STATUS.items() if isinstance(exc, t)), str(exc)) from None
        return await respond(data, url, model, options(om, bgc), "png")

    @app.get("/v1/models", dependencies=guarded, tags=["cutq"])
    async def list_models() -> dict:
        """Every variant served, with size, GMAC and its fidelity to FP32 from the manifest."""
        return {"models": [info.as_dict() for info in variants.info], "ready": variants.ready.is_set(),
                **({"error": variants.error} if variants.error else {})}

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        """503 until every variant is loaded and warmed."""
        ready = variants.ready.is_set()
        body = {"ready": ready, "models": list(variants.sessions), **({"error": variants.error} if variants.error else {})}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", dependencies=guarded, tags=["ops"], response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        """Prometheus text: requests, latency histogram, queue depth, in-flight inferences, sessions, RSS."""
        return PlainTextResponse(metrics.render(pool), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, limit=config.max_upload_bytes)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"],
                           expose_headers=["X-Cutq-Latency-Ms", "X-Cutq-Queue-Ms", "X-Cutq-Model"])
    app.add_middleware(Admission, pool=pool)  # outside the body limit: a refusal reads nothing
    app.add_middleware(Observe, metrics=metrics)
    app.state.pool, app.state.variants, app.state.metrics = pool, variants, metrics
    return app


async def _read_upload(request: Request) -> tuple[bytes, str]:
    """The image of a /v1/cutout request: the multipart `file` field, or the whole body otherwise."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=32)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ClientError(422, "multipart body has no file field named 'file'")
        return await upload.read(), upload.filename or "upload"
    if kind and not (kind.startswith("image/") or kind == "application/octet-stream"):
        raise ClientError(415, f"content type '{kind}' is not an image; send image/* bytes or multipart 'file'")
    return await request.body(), "upload"


def _errors(app: FastAPI) -> None:
    """JSON errors with the right 4xx for everything a client can send wrong."""

    def error(status: int, message: str, headers: dict[str, str] | None = None, **extra) -> JSONResponse:
        return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)

    @app.exception_handler(ClientError)
    async def client_error(_: Request, exc: ClientError) -> JSONResponse:
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(ParamError)
    async def bad_param(_: Request, exc: ParamError) -> JSONResponse:
        return error(422, str(exc))

    @app.exception_handler(ImageError)
    async def image_error(_: Request, exc: ImageError) -> JSONResponse:
        return error(IMAGE_STATUS.get(exc.kind, 400), str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
        return error(422, f"invalid request: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); the server keeps running")


_CUTOUT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}}}
