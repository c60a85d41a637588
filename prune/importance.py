"""Importance criteria: a score per channel of every prunable group; the pruner keeps the highest.

A criterion is anything with a `name` and `scores(model, graph) -> {group index: scores}`, so a new one
is a small class, not a change to the pruner. Two are provided:

- `Magnitude` (filter L1 or L2): the norm of each producing Conv's output filter, summed over
  the group's producers. U²-Net's batch norm is folded into its Convs, so the filter norm already carries the
  BN scale γ/σ that BN-γ criteria look at; no PyTorch checkpoint is needed.
- `Activation` (the default): how much each channel's variation feeds into the next layers on real photos,
  std(x_c) · ‖W[:, c]‖₂ summed over the consuming Convs; the right measure once the pruner compensates the
  mean of what it removes. It sees what the weights alone cannot: channels that are constant or rarely active.

`cutq prune` uses `activation`; `Magnitude` stays for Python callers and tests that need a criterion without
calibration photos. A reconstruction-aware criterion (removing channels greedily by how much each consumer's
refit error grows, in the style of ThiNet) was measured and left out: a lower refit error per layer did not
give better masks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx

from cutq_runtime.errors import CutqError

from .activations import Moments
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
    """How much each channel's *variation* feeds into the next layers on real photos:
    std(x_c) · ‖W[:, c]‖₂ at each consuming Conv's input, summed over the consumers.

    The pruner adds a removed channel's mean contribution to the consumers' biases, so what removal loses is
    the channel's spread around its mean, not its size. A channel stuck at a large constant (common once batch
    norm is folded) scores near zero here, and high on |x| or on the filter norm, which is backwards.
    """

    moments: Mapping[str, Moments] = field(repr=False)  # Conv name -> moments of its input
    name: str = "activation"

    def scores(self, model: onnx.ModelProto, graph: DepGraph) -> Scores:
        weights = conv_weights(model)
        found = {}
        for group in graph.prunable:
            total = np.zeros(group.channels)
            for conv, offset in group.consumers:
                read = weights[conv][0][:, offset:offset + group.channels].astype(np.float64)
                total += self.moments[conv].std[offset:offset + group.channels] * np.sqrt(np.square(read).sum(axis=(0, 2, 3)))
            found[group.index] = total
        return found


CRITERIA = ("l1", "l2", "activation")


def criterion(name: str, moments: Mapping[str, Moments] | None = None) -> Importance:
    """The criterion called `name` (one of `CRITERIA`); `activation` needs the consumers' input moments."""
    if name in ("l1", "l2"):
        return Magnitude(int(name[1]))
    if name == "activation":
        if not moments:
            raise CutqError("the activation criterion needs statistics from calibration images")
        return Activation(moments)
    raise CutqError(f"unknown criterion '{name}'; choose one of {', '.join(CRITERIA)}")
