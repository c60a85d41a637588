"""What `cutq serve` is allowed to do: one typed config, filled by the command line or by code."""

from __future__ import annotations

from dataclasses import dataclass

from ..api import DEFAULT_MODEL
from ..cpu import usable_cores
from ..errors import CutqError

DEFAULT_PORT = 7000  # rembg's `rembg s` port, so scripts written for it only change the host if anything



@dataclass(frozen=True)
class ServeConfig:
    """Limits are the point: every queue, upload and image is bounded, so load or a bad client cannot take the
    server's memory or threads (rembg's server grew until OOM and ran 40 threads with `-t 2`)."""

    models: tuple[str, ...] = (DEFAULT_MODEL,)  # loaded and warmed once at startup; the first is the default
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    threads: int | None = None  # ONNX Runtime threads per inference; None: cores / concurrency
    max_concurrency: int | None = None  # inferences at once; None: cores / threads (at least 1)
    max_queue: int = 16  # requests waiting for a worker; beyond this 503 + Retry-After
    queue_timeout: float = 30.0  # seconds a request may wait for a worker before 504
    max_upload_mb: float = 25.0  # request bodies, enforced while reading (413)
    max_pixels: int | None = None  # decoded image size (default: the runtime's decompression-bomb limit)
    token: str | None = None  # bearer token for the API; None: open
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API; none: CORS off
    allow_url: bool = False  # GET /api/remove?url=: off, it makes the server fetch for the client
    url_timeout: float = 10.0
    cache_dir: str | None = None
    strict_cpu: bool = False
    png_compress_level: int = 1

    def __post_init__(self) -> None:
        if not self.models:
            raise CutqError("serve needs at least one --model")
        for label, value in (("--max-concurrency", self.max_concurrency), ("--threads", self.threads)):
            if value is not None and value < 1:
                raise CutqError(f"{label} must be at least 1, not {value}")
        if self.max_queue < 0 or self.max_upload_mb <= 0 or self.queue_timeout <= 0:
            raise CutqError("--max-queue must be >= 0, --max-upload-mb and the queue timeout > 0")
        if not 0 < self.port < 65536:
            raise CutqError(f"--port must be 1-65535, not {self.port}")

    @property
    def concurrency(self) -> int:
        """Inferences at once: given, else as many as the cores hold at the chosen threads each."""
        if self.max_concurrency:
            return self.max_concurrency
        return max(1, usable_cores() // (self.threads or 1))

    @property
    def session_threads(self) -> int:
        """Threads per inference: given, else the cores shared among the concurrent inferences."""
        return self.threads or max(1, usable_cores() // self.concurrency)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
