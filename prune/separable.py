"""Separable factorisation of U²-Net's big 3x3 Convs: a 3x1 Conv to r channels, then a 1x3 Conv back.

Write a 3x3 Conv's weights W[o, c, i, j] as the matrix M[(c, i), (o, j)]. A rank-r factorisation M ≈ A B is
exactly a 3x1 Conv with weights A (c input channels, vertical taps i, r outputs) followed by a 1x3 Conv with
weights B (r inputs, horizontal taps j, o outputs) (Jaderberg et al. 2014, "Speeding up Convolutional Neural
Networks with Low Rank Expansions", scheme 2). The pair costs 3r(c + o) weights and MACs per position where
the Conv cost 9co, so r = share * 9co / (3(c + o)) keeps `share` of both. The truncated SVD gives the best A B
for the weights alone; the 1x3 Convs are then refit by least squares on calibration photos like any pruned
Conv (`reconstruct`), which corrects for what the truncation lost on real inputs.

U²-Net's 3x3 kernels are close to separable in this sense: the truncation keeps most of each big Conv's weight
energy, so factoring every big Conv at one share loses less of the masks than removing channels or factoring
the wide Convs' outputs at the same parameter count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cutq import modelstats
from cutq_runtime.errors import CutqError

from .depgraph import conv_weights
from .pruner import replace_convs

UNREACHABLE = "the requested ratio needs more parameters removed than separable factoring can give at rank {multiple}"


@dataclass(frozen=True)
class Candidate:
    """A 3x3 Conv that can be factored: its weights' SVD and its size."""

    inputs: int
    outputs: int
    macs: int
    u: np.ndarray  # left singular vectors of M, (3 * inputs, k)
    s: np.ndarray  # singular values
    vt: np.ndarray  # right singular vectors, (k, 3 * outputs)

    def rank(self, share: float, multiple: int) -> int:
        """The rank, a multiple of `multiple`, that keeps about `share` of the Conv's weights and MACs."""
        return round(share * 9 * self.inputs * self.outputs / (3 * (self.inputs + self.outputs)) / multiple) * multiple

    def saves(self, rank: int) -> bool:
        return rank >= 1 and 3 * rank * (self.inputs + self.outputs) < 9 * self.inputs * self.outputs


def candidates(model: onnx.ModelProto, min_macs: int, min_outputs: int = 0) -> dict[str, Candidate]:
    """Conv name -> `Candidate` for each ungrouped, unstrided 3x3 Conv of at least `min_macs` MACs at 320x320 and
    at least `min_outputs` output channels."""
    weights = conv_weights(model)
    macs = modelstats.macs_by_conv(model)
    found = {}
    for node in model.graph.node:
        if node.op_type != "Conv" or node.name not in weights or macs.get(node.name, 0) < min_macs:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = weights[node.name][0]
        if (weight.shape[2:] != (3, 3) or attrs.get("group", 1) != 1 or any(s != 1 for s in attrs.get("strides", [1, 1]))
                or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            continue
        outputs, inputs = weight.shape[:2]
        if outputs < min_outputs:
            continue
        matrix = weight.astype(np.float64).transpose(1, 2, 0, 3).reshape(3 * inputs, 3 * outputs)
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        found[node.name] = Candidate(inputs, outputs, macs[node.name], u, s, vt)
    return found


def ranks_for(found: Mapping[str, Candidate], excess: int, multiple: int) -> tuple[float, dict[str, int]]:
    """The largest share of every candidate's weights (one share for all) that removes at least `excess`
    parameters, and the ranks it gives; `CutqError` if even the lowest rank does not."""

    def at(share: float) -> tuple[int, dict[str, int]]:
        ranks = {name: max(c.rank(share, multiple), multiple) for name, c in found.items()}
        ranks = {name: r for name, r in ranks.items() if found[name].saves(r)}
        saved = sum(9 * found[n].inputs * found[n].outputs - 3 * r * (found[n].inputs + found[n].outputs)
                    for n, r in ranks.items())
        return saved, ranks

    if at(0.0)[0] < excess:
        raise CutqError(UNREACHABLE.format(multiple=multiple))
    low, high = 0.0, 1.0  # removes enough at `low`, not at `high`
    for _ in range(30):
        middle = (low + high) / 2
        low, high = (middle, high) if at(middle)[0] >= excess else (low, middle)
    return low, at(low)[1]


def factor(model: onnx.ModelProto, found: Mapping[str, Candidate], ranks: Mapping[str, int]) -> onnx.ModelProto:
    """A copy of `model` with each Conv of `ranks` replaced by a 3x1 Conv (`<name>.vertical`) and a 1x3 Conv.

    The 1x3 Conv keeps the node's name, bias and output tensor, so the refit finds the unpruned output under the
    same name; the 3x1 Conv has no bias, so with zero padding the borders are factored exactly too."""

    def build(node: onnx.NodeProto, rank: int) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
        c = found[node.name]
        root = np.sqrt(c.s[:rank])
        vertical = (c.u[:, :rank] * root).T.reshape(rank, c.inputs, 3, 1)  # A[(c, i), k] -> [k, c, i, 0]
        horizontal = (root[:, None] * c.vt[:rank]).reshape(rank, c.outputs, 3).transpose(1, 0, 2)[:, :, None, :]
        names = (f"{node.name}.vertical.weight", f"{node.name}.horizontal.weight")
        initializers = [numpy_helper.from_array(w.astype(np.float32), name)
                        for w, name in zip((vertical, horizontal), names, strict=True)]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        dilations = attrs.get("dilations", [1, 1])
        pads = attrs.get("pads", [0, 0, 0, 0])
        middle = f"{node.output[0]}.vertical{rank}"
        return initializers, [
            helper.make_node("Conv", [node.input[0], names[0]], [middle], name=f"{node.name}.vertical",
                             kernel_shape=[3, 1], dilations=[dilations[0], 1], pads=[pads[0], 0, pads[2], 0]),
            helper.make_node("Conv", [middle, names[1], *node.input[2:]], list(node.output), name=node.name,
                             kernel_shape=[1, 3], dilations=[1, dilations[1]], pads=[0, pads[1], 0, pads[3]]),
        ]

    return replace_convs(model, ranks, build)
