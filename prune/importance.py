"""Importance criteria: a score per channel of every prunable group; the pruner keeps the highest.

A criterion is anything with a `name` and `scores(model, graph) -> {group index: scores}`, so a new one
is a small class, not a change to the pruner. Two are provided:

- `Magnitude` (filter L1 or L2, the default): the norm of each producing Conv's output filter, summed over
  the group's producers. U²-Net's batch norm is folded into its Convs, so the filter norm already carries the
  BN scale γ/σ that BN-γ criteria look at; no PyTorch checkpoint is needed.
- `Activation`: how much each channel feeds into the next layers on real photos, E|x_c| · ‖W[:, c]‖₁ summed
  over the consuming Convs. It sees what the weights alone cannot: channels that are rarely active.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx

from cutq_runtime.errors import CutqError

from .activations import capture
from .depgraph import DepGraph, conv_weights

Scores = dict[int, np.ndarray]


class Importance(Protocol):
    name: str

    def scores(self, model: onnx.ModelProto, graph: DepGraph) -> Scores: ...


@dataclass(frozen=True)
class Magnitude:
    """Filter norm (p = 1 or 2) of the producing Convs."""

    p: int = 1

    @property
    def name(self) -> str:
        return f"l{self.p}"

    def scores(self, model: onnx.ModelProto, graph: DepGraph) -> Scores:
        weights = conv_weights(model)
        found = {}
        for group in graph.prunable:
            filters = [weights[conv][0].reshape(group.channels, -1).astype(np.float64) for conv in group.producers]
            found[group.index] = sum(np.linalg.norm(f, ord=self.p, axis=1) for f in filters)
        return found


@dataclass(frozen=True)
class Activation:
    """Mean absolute activation of each channel at its consumers' inputs, weighted by the weights that read it."""

    images: Sequence[np.ndarray] = field(repr=False)
    name: str = "activation"

    def scores(self, model: onnx.ModelProto, graph: DepGraph) -> Scores:
        if not self.images:
            raise CutqError("the activation criterion needs calibration images")
        inputs = {n.name: n.input[0] for n in model.graph.node if n.op_type == "Conv"}
        names = sorted({inputs[conv] for group in graph.prunable for conv, _ in group.consumers})
        means = {name: 0.0 for name in names}
        for values in capture(model, names, self.images):
            for name in names:
                means[name] = means[name] + np.abs(values[name]).mean(axis=(0, 2, 3), dtype=np.float64) / len(self.images)
        weights = conv_weights(model)
        found = {}
        for group in graph.prunable:
            total = np.zeros(group.channels)
            for conv, offset in group.consumers:
                read = np.abs(weights[conv][0][:, offset:offset + group.channels]).sum(axis=(0, 2, 3), dtype=np.float64)
                total += means[inputs[conv]][offset:offset + group.channels] * read
            found[group.index] = total
        return found


CRITERIA = ("l1", "l2", "activation")


def criterion(name: str, images: Sequence[np.ndarray] = ()) -> Importance:
    """The criterion called `name` (one of `CRITERIA`)."""
    if name in ("l1", "l2"):
        return Magnitude(int(name[1]))
    if name == "activation":
        return Activation(tuple(images))
    raise CutqError(f"unknown criterion '{name}'; choose one of {', '.join(CRITERIA)}")
