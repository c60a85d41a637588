"""cutq runtime: U²-Net background removal on CPU with FP32, INT8 and pruned variants.

Depends on numpy, onnxruntime and pillow only.
"""

from .api import RemoveOptions, remove
from .errors import ChecksumError, CutqError, CutqWarning, ImageError, ModelError, OutputError
from .registry import REGISTRY, InputSpec, ModelSpec
from .session import Session, SessionConfig, new_session

__version__ = "0.1.0"

__all__ = [
    "REGISTRY",
    "ChecksumError",
    "CutqError",
    "CutqWarning",
    "ImageError",
    "InputSpec",
    "ModelError",
    "ModelSpec",
    "OutputError",
    "RemoveOptions",
    "Session",
    "SessionConfig",
    "new_session",
    "remove",
]
