"""Pipeline step: late upsampling. Run the decoder Convs' upsampled half at the coarse resolution, then upsample.

Every decoder stage of U²-Net reads cat(up(x), s): the deeper map x, upsampled 2x bilinearly, beside the
encoder's skip map s, into a 3x3 Conv. The Conv is linear in its input, so it splits into a part that reads
up(x) and a part that reads s:

    W * cat(up(x), s) + b  =  Wa * up(x)  +  Wb * s + b   ≈   up(Wa' * x)  +  Wb * s + b'

The first part is replaced by a Conv on x itself, at a quarter of the positions, whose output is upsampled
instead: three quarters of that part's MACs go, and so does the Concat (an Add comes in). The two are not
equal (a kernel on the fine grid is not a kernel on the coarse one), so Wa' and b' are fit by least squares on
calibration photos so that the sum matches the Conv's output before the change, reading x and s from the
network with every earlier site already changed (as `reconstruct` does, and for the same reason). The
features of the fit are the coarse patches of x bilinearly interpolated to each sampled fine position, which
is exactly what up(Wa' * x) multiplies Wa' by.

Only sites that save enough MACs move, and only where the Conv does not widen x: moving the others saved
little and made the INT8 file no faster. Fitting to the unpruned model's outputs, or refitting the skip half
too, did not improve the masks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cutq import modelstats
from cutq.quantize.graph import copy_model
from cutq.quantize.mixed import drop_unused_initializers
from cutq_runtime.errors import ModelError

from .activations import Frontier, capture
from .depgraph import conv_weights, feature_shapes
from .geometry import Geometry, im2col
from .reconstruct import NormalEquations, sample_positions

Progress = Callable[[str], None]
LINEAR_MODES = (b"half_pixel", b"pytorch_half_pixel")


@dataclass(frozen=True)
class LateUpsampleConfig:
    """Which sites move and how their Convs are fit.

    A site moves when it saves at least `min_macs` MACs at 320x320 and its Conv has at most `max_widening` times
    as many output channels as x has: the Resize then upsamples the Conv's output instead of x, and (with its
    Quantize/Dequantize in INT8) costs per channel about as much as the MACs saved at the 16-channel sites.
    """

    min_macs: int = 50_000_000
    max_widening: float = 1.0
    samples: int = 4096  # fine positions sampled per photo and site
    ridge: float = 0.1  # as in `ReconstructConfig`: toward the fine kernel, scaled by unknowns per sample
    seed: int = 0


@dataclass(frozen=True)
class Site:
    """Concat(Resize(x), s) -> Conv, with x's channels first in the Conv's input."""

    conv: str
    concat: str
    resize: str
    coarse: str  # x
    skip: str  # s
    channels: int  # of x
    saved_macs: int


@dataclass(frozen=True)
class LateUpsampleReport:
    sites: tuple[str, ...]  # the Convs whose upsampled half now runs at the coarse resolution
    saved_macs: int
    error_before: float  # mean over sites of residual / target variance, kernel reused unchanged on x
    error_after: float  # the same after the fit


def find_sites(model: onnx.ModelProto, min_macs: int, max_widening: float = 1.0) -> list[Site]:
    """Every Concat(Resize(x), s) -> Conv site whose move saves at least `min_macs` MACs and whose Conv has at most
    `max_widening` times as many outputs as x has channels (`LateUpsampleConfig`), in graph order."""
    producer = {out: n for n in model.graph.node for out in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    weights, macs, shapes = conv_weights(model), modelstats.macs_by_conv(model), feature_shapes(model)
    found = []
    for cat in model.graph.node:
        conv = readers.get(cat.output[0], [None])[0] if cat.op_type == "Concat" else None
        resize = producer.get(cat.input[0]) if conv is not None and len(cat.input) == 2 else None
        if (resize is None or resize.op_type != "Resize" or conv.op_type != "Conv" or len(readers[cat.output[0]]) != 1
                or len(readers[resize.output[0]]) != 1 or conv.name not in weights or not _plain(conv, resize, cat)):
            continue
        weight = weights[conv.name][0]
        skip = shapes.get(cat.input[1], (0,))[0]  # 0: unknown
        if not 0 < skip < weight.shape[1]:
            continue
        channels = weight.shape[1] - skip
        saved = macs[conv.name] * channels * 3 // (4 * weight.shape[1])
        if saved >= min_macs and weight.shape[0] <= max_widening * channels:
            found.append(Site(conv.name, cat.name, resize.name, resize.input[0], cat.input[1], channels, saved))
    return found


def _plain(conv: onnx.NodeProto, resize: onnx.NodeProto, cat: onnx.NodeProto) -> bool:
    """An unstrided, undilated, ungrouped Conv after a bilinear half-pixel Resize, concatenated on channels."""
    a = {x.name: helper.get_attribute_value(x) for x in (*conv.attribute, *resize.attribute, *cat.attribute)}
    return (a.get("group", 1) == 1 and all(v == 1 for v in (*a.get("strides", [1, 1]), *a.get("dilations", [1, 1])))
            and a.get("mode") == b"linear" and a.get("coordinate_transformation_mode", b"half_pixel") in LINEAR_MODES
            and a.get("axis") == 1 and a.get("auto_pad", b"NOTSET") == b"NOTSET")


def late_upsample(model: onnx.ModelProto, images: Sequence[np.ndarray], config: LateUpsampleConfig | None = None,
                  progress: Progress = lambda message: None) -> tuple[onnx.ModelProto, LateUpsampleReport]:
    """A copy of `model` with every site moved and fit to `model`'s own Conv outputs on `images`."""
    config = config or LateUpsampleConfig()
    sites = find_sites(model, config.min_macs, config.max_widening)
    if not sites or not images:
        return copy_model(model), LateUpsampleReport((), 0, 0.0, 0.0)
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    # Sampled as they are captured: the full maps of every site and photo would hold hundreds of MB at 320x320.
    positions: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    targets: dict[tuple[str, int], np.ndarray] = {}
    for i, values in enumerate(capture(model, [convs[s.conv].output[0] for s in sites], images)):
        for step, site in enumerate(sites, 1):
            y = values[convs[site.conv].output[0]][0]
            ys, xs = positions[site.conv, i] = sample_positions([config.seed, i, step], y.shape[1:], config.samples)
            targets[site.conv, i] = np.ascontiguousarray(y[:, ys, xs].T)
    moved = _rewrite(model, sites)
    weights = conv_weights(model)
    frontier = Frontier(moved, images)
    before, after = [], []
    for step, site in enumerate(sites, 1):
        progress(f"late upsampling: site {step}/{len(sites)}")
        weight, bias = weights[site.conv]
        geometry = Geometry.of(convs[site.conv], weight)
        fine = weight[:, site.channels:].reshape(len(weight), -1)
        normal = NormalEquations()
        for i, values in enumerate(frontier.advance(moved, [site.coarse, site.skip])):
            x, s = values[site.coarse][0], values[site.skip][0]
            if s.shape[1:] != (2 * x.shape[1], 2 * x.shape[2]):
                raise ModelError(f"Conv '{site.conv}': late upsampling needs an exact 2x Resize, got "
                                 f"{x.shape[1:]} -> {s.shape[1:]}")
            ys, xs = positions[site.conv, i]
            rest = targets[site.conv, i] - im2col(s, geometry, ys, xs) @ fine.T
            normal.add(_upsampled_patches(x, geometry, ys, xs), rest)
        w0 = np.vstack([weight[:, :site.channels].reshape(len(weight), -1).T,
                        (np.zeros(len(weight)) if bias is None else bias)[None]]).astype(np.float64)
        w = normal.solve(w0, config.ridge)
        before.append(normal.residual(w0))
        after.append(normal.residual(w))
        _set(moved, site, w[:-1].T.reshape(len(weight), site.channels, *geometry.kernel), w[-1])
    saved = sum(s.saved_macs for s in sites)
    return moved, LateUpsampleReport(tuple(s.conv for s in sites), saved, float(np.mean(before)), float(np.mean(after)))


def _upsampled_patches(x: np.ndarray, geometry: Geometry, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The coarse patches of `x` under a Conv, bilinearly interpolated (half-pixel, clamped, as the Resize does)
    to the fine positions (ys, xs): the features up(Wa' * x) multiplies Wa' by."""

    def axis(fine: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = np.maximum((fine + 0.5) / 2 - 0.5, 0.0)
        low = np.floor(source).astype(int)
        return low, np.minimum(low + 1, size - 1), source - low

    y0, y1, fy = axis(ys, x.shape[1])
    x0, x1, fx = axis(xs, x.shape[2])
    total = 0.0
    for rows, wy in ((y0, 1 - fy), (y1, fy)):
        for cols, wx in ((x0, 1 - fx), (x1, fx)):
            total = total + im2col(x, geometry, rows, cols) * (wy * wx)[:, None]
    return total


def _rewrite(model: onnx.ModelProto, sites: Sequence[Site]) -> onnx.ModelProto:
    """`model` with each site as Conv(x) -> Resize and Conv(s), added; the coarse Conv starts from the fine kernel.

    The skip Conv keeps the site Conv's name, bias and weights for s; the Add writes the site Conv's output."""
    out = copy_model(model)
    graph = out.graph
    weights = conv_weights(out)
    by_name = {n.name: n for n in graph.node}
    replaced: dict[str, list[onnx.NodeProto]] = {}
    for site in sites:
        conv, resize = by_name[site.conv], by_name[site.resize]
        weight = weights[site.conv][0]
        attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        names = (f"{site.conv}.coarse.weight", f"{site.conv}.fine.weight", f"{site.resize}.late.scales")
        graph.initializer.extend([
            numpy_helper.from_array(np.ascontiguousarray(weight[:, :site.channels]), names[0]),
            numpy_helper.from_array(np.ascontiguousarray(weight[:, site.channels:]), names[1]),
            numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), names[2])])
        bias = list(conv.input[2:3])
        if not bias:  # a factored 3x1 Conv has none; the fit sets one
            bias = [f"{site.conv}.fine.bias"]
            graph.initializer.append(numpy_helper.from_array(np.zeros(len(weight), np.float32), bias[0]))
        coarse, upsampled, fine = (f"{conv.output[0]}.coarse", f"{conv.output[0]}.late", f"{conv.output[0]}.fine")
        replaced[site.concat] = [
            helper.make_node("Conv", [site.coarse, names[0]], [coarse], name=f"{site.conv}.coarse", **attrs),
            helper.make_node("Resize", [coarse, resize.input[1], names[2]], [upsampled], name=f"{site.resize}.late",
                             **{a.name: helper.get_attribute_value(a) for a in resize.attribute}),
            helper.make_node("Conv", [site.skip, names[1], *bias], [fine], name=site.conv, **attrs),
            helper.make_node("Add", [upsampled, fine], list(conv.output), name=f"{site.conv}.add"),
        ]
    gone = {s.resize for s in sites} | {s.conv for s in sites}
    nodes = [new for n in graph.node if n.name not in gone for new in replaced.get(n.name, [n])]
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(graph)
    return out


def _set(model: onnx.ModelProto, site: Site, coarse: np.ndarray, bias: np.ndarray) -> None:
    """Write the fit coarse kernel, and the bias into the skip Conv (which carries the site's bias)."""
    skip = next(n for n in model.graph.node if n.name == site.conv)
    wanted = {f"{site.conv}.coarse.weight": coarse, skip.input[2]: bias}
    for tensor in model.graph.initializer:
        if tensor.name in wanted:
            tensor.CopyFrom(numpy_helper.from_array(wanted[tensor.name].astype(np.float32), tensor.name))
