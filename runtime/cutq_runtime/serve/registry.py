"""The variants a server holds: resolved before it starts (an unknown name fails at once), then loaded and
warmed once in the background, one shared session each. Requests never create a session."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .. import cpu, models
from ..api import RemoveOptions, cut
from ..errors import ModelError
from ..session import Session, SessionConfig
from .config import ServeConfig

log = logging.getLogger("cutq.serve")
_WARM_OPTIONS = RemoveOptions(only_mask=True)


@dataclass(frozen=True)
class VariantInfo:
    """What GET /v1/models and the web page show for a variant."""

    name: str
    size_bytes: int
    gmac: float | None
    ssim_min: float | None  # mask SSIM against FP32 on held-out photos, from the manifest (None for FP32 releases)
    ssim_mean: float | None
    description: str
    cpus: str  # "any", "vnni-or-arm" or "?" (cutq_runtime.cpu.portability); "" for FP32
    precision: str  # "int8" (a quantized variant, with its fidelity to FP32) or "fp32"
    default: bool

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _info(resolved: models.ResolvedModel, default: bool) -> VariantInfo:
    manifest = resolved.manifest or {}
    # A release has its spec; an INT8 variant has its source's MACs when its manifest predates the "gmac" field.
    spec = models.get_spec(resolved.name) or models.get_spec(str(manifest.get("source", {}).get("name", "")))
    check = manifest.get("verification", {})
    int8 = bool(manifest.get("cpu")) or "int8" in resolved.name
    return VariantInfo(
        name=resolved.name, size_bytes=Path(resolved.path).stat().st_size,
        gmac=manifest.get("gmac", spec.gmac if spec else None),
        ssim_min=check.get("ssim_min"), ssim_mean=check.get("ssim_mean"),
        description=str(manifest.get("description") or (spec.description if spec else "")),
        cpus=cpu.portability(manifest) if int8 else "", precision="int8" if int8 else "fp32", default=default)


class Variants:
    """Name -> session, plus readiness for /readyz."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        cache = models.cache_dir(config.cache_dir)
        self.resolved = {}
        for name in config.models:
            found = models.resolve(name, cache)
            if found.name in self.resolved:
                raise ModelError(f"--model {name} is given twice")
            self.resolved[found.name] = found
        self.default = next(iter(self.resolved))
        self.info = [_info(r, name == self.default) for name, r in self.resolved.items()]
        self.sessions: dict[str, Session] = {}
        self.error: str | None = None
        self.ready = threading.Event()

    def load(self) -> None:
        """Load and warm every variant (run on a background thread at startup)."""
        session_config = SessionConfig(threads=self.config.session_threads, strict_cpu=self.config.strict_cpu)
        warm = Image.new("RGB", (64, 48), (120, 140, 160))
        try:
            for name, resolved in self.resolved.items():
                session = Session(resolved, session_config)
                cut(warm, session, _WARM_OPTIONS)
                self.sessions[name] = session
                log.info("loaded %s (%s)", name, resolved.path)
        except Exception as exc:  # noqa: BLE001  (any failure: /readyz reports it instead of a dead loader thread)
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("loading the models failed: %s", self.error)
            return
        self.ready.set()

    def get(self, name: str | None) -> Session:
        """The session for `name` (the default variant when None); `ModelError` naming the served ones."""
        key = name or self.default
        if key not in self.resolved:
            raise ModelError(f"model '{key}' is not served here; served: {', '.join(self.resolved)}")
        return self.sessions[key]

