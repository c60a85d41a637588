"""Request parameters that need more than a type: background colours and rembg options cutq does not have."""

from __future__ import annotations

from .. import batch
from ..api import Bgcolor
from ..errors import CutqError


class ParamError(ValueError):
    """A parameter value the server refuses with 422."""


def parse_bgcolor(text: str | None) -> Bgcolor | None:
    """'R,G,B' or 'R,G,B,A', each 0-255 (rembg's `bgc`); None for no background."""
    try:
        return batch.parse_bgcolor(text, label="background colour")
    except CutqError as exc:
        raise ParamError(str(exc)) from None


def rembg_unsupported(**flags: bool) -> None:
    """rembg options cutq does not implement: refused by name when turned on, instead of silently ignored."""
    names = {"a": "alpha matting (a)", "ppm": "mask post-processing (ppm)", "dc": "edge decontamination (dc)",
             "vm": "ViTMatte refinement (vm)"}
    if on := [names[k] for k, v in flags.items() if v]:
        raise ParamError(f"not supported by cutq: {', '.join(on)}; leave it off")
