"""Request parameters that need more than a type: background colours and rembg options cutq does not have."""

from __future__ import annotations

from ..api import Bgcolor


class ParamError(ValueError):
    """A parameter value the server refuses with 422."""


def parse_bgcolor(text: str | None) -> Bgcolor | None:
    """'R,G,B' or 'R,G,B,A', each 0-255 (rembg's `bgc`); None for no background."""
    if text is None or text == "":
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (3, 4) or not all(p.isdigit() and int(p) <= 255 for p in parts):
        raise ParamError(f"background colour '{text}' is not R,G,B or R,G,B,A with values 0-255")
    values = [int(p) for p in parts]
    return (values[0], values[1], values[2], values[3] if len(values) == 4 else 255)


def rembg_unsupported(**flags: bool) -> None:
    """rembg options cutq does not implement: refused by name when turned on, instead of silently ignored."""
    names = {"a": "alpha matting (a)", "ppm": "mask post-processing (ppm)", "dc": "edge decontamination (dc)",
             "vm": "ViTMatte refinement (vm)"}
    if on := [names[k] for k, v in flags.items() if v]:
        raise ParamError(f"not supported by cutq: {', '.join(on)}; leave it off")
