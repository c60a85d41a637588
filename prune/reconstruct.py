"""Training-free reconstruction: refit each pruned Conv by least squares so its output matches the unpruned one.

After channels are removed, a Conv sees fewer input channels than it was trained for. In the style of He et
al. (2017) and ThiNet, its weights and bias are refit so that, on calibration photos, its pre-activation
output (for the output channels it keeps) matches the unpruned network's output of the same Conv:

    minimise ‖X W − Y‖² + λ ‖W − W₀‖²

X holds im2col patches of the Conv's input taken from the *pruned* network (so errors made upstream are
corrected downstream), Y the unpruned outputs at the same positions, W₀ the sliced weights. The ridge pulls
towards W₀ rather than zero, so a Conv with few samples (the 10x10 bottom of U²-Net) stays close to what was
trained. Positions are sampled per image to bound memory; only XᵀX and XᵀY are kept.

A Conv must be refit on inputs from the network with every Conv upstream of it already refit: fitting on
inputs that later change lets the errors compound. So the Convs are refit in waves, each wave the next Convs in
topological order that do not depend on one another, each wave reading its inputs from a `Frontier`, which runs only the
nodes between the previous wave and this one (about one forward pass in all, not one per wave).

The refit pays off once the pruner compensates the removed channels' means; without the compensation it made
the held-out masks worse.

The ridge must be strong where samples are few. U²-Net's bottom Convs read 3x3 patches of ~350 channels (~3,000
unknowns per output) at 10x10 or 20x20 positions, so 16 photos give fewer samples than unknowns there, and a
fixed weak ridge fits the calibration photos exactly and misses everything else. So λ scales with unknowns /
samples: strong at the bottom, weak at 320x320 (16,384 samples for ~600 unknowns), where the sliced weights of
a heavily pruned Conv are far from the best fit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from cutq.quantize.graph import copy_model
from cutq_runtime.errors import CutqError

from .activations import Frontier, capture
from .depgraph import conv_weights
from .geometry import Geometry, im2col
from .pruner import ConvSlice, replace_weights


@dataclass(frozen=True)
class ReconstructConfig:
    samples: int = 1024  # spatial positions sampled per image and Conv
    ridge: float = 0.1  # λ per unknown per sample, as a fraction of the mean diagonal of XᵀX (module docstring)
    weights: bool = True  # False: keep the sliced weights and only correct the bias (the mean of the error)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 1 or self.ridge < 0:
            raise CutqError(f"`samples` must be >= 1 and `ridge` >= 0, got {self.samples} and {self.ridge}")


@dataclass(frozen=True)
class ReconstructReport:
    convs: int
    passes: int
    error_sliced: float  # mean over refit Convs of residual / variance of the target, sliced weights
    error_refit: float  # the same after the refit


class NormalEquations:
    """Running normal equations of one Conv: XᵀX, XᵀY and the target's statistics."""

    def __init__(self) -> None:
        self.xtx: np.ndarray | None = None
        self.xty: np.ndarray | None = None
        self.yy = 0.0
        self.ysum: np.ndarray | None = None
        self.n = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        x = np.hstack([x, np.ones((len(x), 1))])  # float64: the residual is a difference of large sums
        xtx, xty = x.T @ x, x.T @ y.astype(np.float64)
        self.xtx = xtx if self.xtx is None else self.xtx + xtx
        self.xty = xty if self.xty is None else self.xty + xty
        self.yy += float(np.square(y, dtype=np.float64).sum())
        self.ysum = y.sum(axis=0, dtype=np.float64) + (0 if self.ysum is None else self.ysum)
        self.n += len(y)

    def residual(self, w: np.ndarray) -> float:
        """‖XW − Y‖² / ‖Y − mean(Y)‖², from the accumulated sums alone."""
        err = np.sum(w * (self.xtx @ w)) - 2 * np.sum(w * self.xty) + self.yy
        return float(max(err, 0.0) / max(self.yy - np.sum(self.ysum**2) / self.n, 1e-12))

    def correct_bias(self, w0: np.ndarray) -> np.ndarray:
        """`w0` with its bias row moved so the mean output matches the mean target: mean(Y − X W₀)."""
        w = w0.copy()
        w[-1] = (self.xty[-1] - self.xtx[-1, :-1] @ w0[:-1]) / self.n
        return w

    def solve(self, w0: np.ndarray, ridge: float) -> np.ndarray:
        """Ridge toward `w0`, as strong as the Conv is short of samples: λ = ridge · mean diag(XᵀX) · unknowns / n."""
        lam = ridge * np.trace(self.xtx) / self.n
        system = self.xtx.copy()  # one copy, not an identity matrix and two sums: u2net's bottom has ~6,000 unknowns
        system.flat[:: len(system) + 1] += lam
        return np.linalg.solve(system, self.xty + lam * w0)


Progress = Callable[[str], None]


def reconstruct(original: onnx.ModelProto, pruned: onnx.ModelProto, slices: Mapping[str, ConvSlice],
                images: Sequence[np.ndarray], config: ReconstructConfig | None = None,
                progress: Progress = lambda message: None) -> tuple[onnx.ModelProto, ReconstructReport]:
    """A copy of `pruned` whose Convs with removed input channels are refit to `original`'s outputs."""
    config = config or ReconstructConfig()
    model = copy_model(pruned)
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    refit = [name for name in convs if name in slices and slices[name].inputs is not None]
    if not refit or not images:
        return model, ReconstructReport(0, 0, 0.0, 0.0)
    weights = conv_weights(model)
    geometry = {name: Geometry.of(convs[name], weights[name][0]) for name in refit}
    positions, targets = _targets(original, convs, refit, slices, images, config)
    chunks = _waves(model, refit)
    before, after = [], []
    frontier = Frontier(model, images)
    for step, chunk in enumerate(chunks, 1):
        progress(f"reconstruction: wave {step}/{len(chunks)} ({len(chunk)} Conv)")
        normal = {name: NormalEquations() for name in chunk}
        inputs = sorted({convs[name].input[0] for name in chunk})
        for i, values in enumerate(frontier.advance(model, inputs)):
            for name in chunk:
                ys, xs = positions[name][i]
                normal[name].add(im2col(values[convs[name].input[0]][0], geometry[name], ys, xs), targets[name][i])
        current = conv_weights(model)
        for name in chunk:
            weight, bias = current[name]
            w0 = np.vstack([weight.reshape(len(weight), -1).T, (np.zeros(len(weight)) if bias is None else bias)[None]])
            w0 = w0.astype(np.float64)
            w = normal[name].solve(w0, config.ridge) if config.weights else normal[name].correct_bias(w0)
            before.append(normal[name].residual(w0))
            after.append(normal[name].residual(w))
            replace_weights(model, name, w[:-1].T.reshape(weight.shape), w[-1] if bias is not None else None)
    return model, ReconstructReport(len(refit), len(chunks), float(np.mean(before)), float(np.mean(after)))


def sample_positions(key: Sequence[int], size: Sequence[int], count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` distinct (row, column) positions of a `size` map, sorted, drawn by a generator seeded with `key`: the
    same photo, Conv and seed always give the same positions, so a refit is reproducible byte for byte."""
    height, width = size
    rng = np.random.default_rng(list(key))
    flat = np.sort(rng.choice(height * width, min(count, height * width), replace=False))
    return flat // width, flat % width


def _waves(model: onnx.ModelProto, refit: Sequence[str]) -> list[list[str]]:
    """`refit` in topological order, cut wherever a Conv depends on one already in the current wave."""
    upstream: dict[str, frozenset[str]] = {}  # tensor -> the Convs it depends on
    reads: dict[str, str] = {}
    for node in model.graph.node:
        found = frozenset().union(*(upstream.get(i, frozenset()) for i in node.input))
        if node.op_type == "Conv":
            reads[node.name] = node.input[0]
            found = found | {node.name}
        for out in node.output:
            upstream[out] = found
    waves: list[list[str]] = [[]]
    for name in refit:
        if upstream.get(reads[name], frozenset()) & set(waves[-1]):
            waves.append([])
        waves[-1].append(name)
    return waves


def _targets(original: onnx.ModelProto, convs: Mapping[str, onnx.NodeProto], refit: Sequence[str],
             slices: Mapping[str, ConvSlice], images: Sequence[np.ndarray], config: ReconstructConfig):
    """Sampled positions and the unpruned Conv outputs there (kept output channels only), per Conv and image."""
    positions: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in refit}
    targets: dict[str, list[np.ndarray]] = {name: [] for name in refit}
    outputs = [convs[name].output[0] for name in refit]
    for i, values in enumerate(capture(original, outputs, images)):
        for k, name in enumerate(refit):
            y = values[convs[name].output[0]][0]
            if slices[name].outputs is not None:
                y = y[slices[name].outputs]
            ys, xs = sample_positions([config.seed, i, k], y.shape[1:], config.samples)
            positions[name].append((ys, xs))
            targets[name].append(np.ascontiguousarray(y[:, ys, xs].T))
    return positions, targets
