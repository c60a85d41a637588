"""`cutq serve` / `cutq-runtime serve`: the variants behind an HTTP API and a web page.

Needs the `serve` extra (`pip install "cutq-runtime[serve]"`: FastAPI, uvicorn, python-multipart). The rest of
the runtime never imports this package, so the plain runtime keeps its three dependencies.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from ..api import DEFAULT_MODEL
from ..errors import CutqError
from ..flags import for_cli
from .config import DEFAULT_PORT, ServeConfig

EXTRA_HINT = 'the server needs the serve extra: pip install "cutq-runtime[serve]"'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of both `cutq serve` and `cutq-runtime serve` (one definition)."""
    add = parser.add_argument
    add("-m", "--model", action="append", dest="models", metavar="NAME",
        help=f"variant to serve, repeatable; the first is the default (default: {DEFAULT_MODEL})")
    add("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only; "
        "0.0.0.0 for the network)")
    add("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}, as rembg s)")
    add("--threads", type=int, help="ONNX Runtime threads per inference (default: cores / concurrency)")
    add("--max-concurrency", type=int, help="inferences at once (default: cores / threads)")
    add("--max-queue", type=int, default=16, help="requests that may wait for a worker; more get 503 (default: 16)")
    add("--queue-timeout", type=float, default=30.0, help="seconds a request may wait before 504 (default: 30)")
    add("--max-upload-mb", type=float, default=25.0, help="largest request body, in MiB; larger get 413 (default: 25)")
    add("--max-pixels", type=int, help="largest decoded image, in pixels (default: 89478485)")
    add("--token", help="require 'Authorization: Bearer TOKEN' on the API (or CUTQ_SERVE_TOKEN)")
    add("--cors-origin", action="append", dest="cors_origins", metavar="ORIGIN",
        help="browser origin allowed to call the API, repeatable (default: none, CORS off)")
    add("--allow-url", action="store_true", help="enable GET /api/remove?url= (public http(s) addresses only)")
    add("--cache-dir", help="model cache (default: $CUTQ_HOME or ~/.cache/cutq)")
    add("--strict-cpu", action="store_true", help="refuse a variant this CPU may compute wrong masks with")
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="(default: info)")


def config_from(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(
        models=tuple(args.models or (DEFAULT_MODEL,)), host=args.host, port=args.port, threads=args.threads,
        max_concurrency=args.max_concurrency, max_queue=args.max_queue, queue_timeout=args.queue_timeout,
        max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels,
        token=args.token or os.environ.get("CUTQ_SERVE_TOKEN") or None, cors_origins=tuple(args.cors_origins or ()),
        allow_url=args.allow_url, cache_dir=args.cache_dir, strict_cpu=args.strict_cpu)


def run(config: ServeConfig, log_level: str = "info") -> None:
    """Resolve the variants (unknown names fail here, before the port opens), then serve until SIGTERM/SIGINT;
    uvicorn lets in-flight requests finish before it exits."""
    try:
        import uvicorn

        from .app import create_app
        from .registry import Variants
    except ImportError as exc:
        raise CutqError(f"{EXTRA_HINT} ({exc.name} is missing)") from exc
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s: %(message)s")
    logging.captureWarnings(True)  # a CutqWarning about a variant on this CPU goes to the log as it happens
    variants = Variants(config)
    app = create_app(config, variants)
    print(f"cutq serve: {', '.join(variants.resolved)} on http://{config.host}:{config.port}/ "
          f"({config.concurrency} at once x {config.session_threads} thread(s), queue {config.max_queue})", flush=True)
    # uvicorn finishes in-flight requests on SIGTERM/SIGINT, then raises the signal again with the handlers it
    # found: these make that a clean exit (status 0) for a service manager, instead of death by signal.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sys.exit(0))
    uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level,
                                  timeout_graceful_shutdown=max(60, int(config.queue_timeout) * 2))).run()


def main(argv: Sequence[str] | None = None, prog: str = "cutq-runtime serve") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Serve U²-Net variants over HTTP: rembg's /api/remove, "
                                     "cutq's /v1 API, /healthz, /readyz, /metrics and a web page at /.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run(config_from(args), args.log_level)
    except CutqError as exc:
        print(f"error: {for_cli(str(exc))}", file=sys.stderr)
        return 2
    return 0
