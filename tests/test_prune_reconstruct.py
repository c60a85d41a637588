"""Reconstruction: im2col matches onnxruntime's Conv, refitting reduces the error of a pruned tiny model, and
the piecewise forward pass gives the same tensors as running the whole model."""

from __future__ import annotations

import numpy as np
import onnx

from cutq.prune import importance, pruner
from cutq.prune.activations import Frontier, capture
from cutq.prune.depgraph import conv_weights, trace
from cutq.prune.geometry import Geometry, im2col
from cutq.prune.reconstruct import ReconstructConfig, reconstruct
from cutq.quantize.verify import session_for

from .tiny import residual_concat_model

CALIB = [np.random.default_rng(i).standard_normal((1, 3, 24, 24)).astype(np.float32) for i in range(6)]
HELD_OUT = [np.random.default_rng(100 + i).standard_normal((1, 3, 24, 24)).astype(np.float32) for i in range(4)]


def _outputs(model: onnx.ModelProto, inputs: list[np.ndarray]) -> np.ndarray:
    session = session_for(model)
    return np.stack([session.run(None, {"x": x})[0] for x in inputs])


def test_im2col_reproduces_a_dilated_conv() -> None:
    model = residual_concat_model()
    node = next(n for n in model.graph.node if n.name == "conv_1")
    del node.attribute[:]
    node.attribute.extend([onnx.helper.make_attribute("pads", [2, 1, 2, 1]), onnx.helper.make_attribute("dilations", [2, 1])])
    values = next(capture(model, ["a", "c_1"], CALIB[:1]))
    weight, bias = conv_weights(model)["conv_1"]
    ys, xs = np.array([0, 5, 23, 23]), np.array([0, 23, 0, 11])
    patches = im2col(values["a"][0], Geometry.of(node, weight), ys, xs)
    expected = values["c_1"][0][:, ys, xs].T
    np.testing.assert_allclose(patches @ weight.reshape(len(weight), -1).T + bias, expected, rtol=1e-4, atol=1e-4)


def test_frontier_gives_the_tensors_of_a_whole_run() -> None:
    model = residual_concat_model()
    frontier = Frontier(model, CALIB[:2])
    whole = list(capture(model, ["b", "cat", "s"], CALIB[:2]))
    for wanted in (["b"], ["cat"], ["s"]):
        for piece, full in zip(frontier.advance(model, wanted), whole, strict=True):
            np.testing.assert_array_equal(piece[wanted[0]], full[wanted[0]])
    assert all(set(cached) <= {"s"} for cached in frontier.cache)  # nothing dead is kept


def _half_pruned() -> tuple[onnx.ModelProto, onnx.ModelProto, dict]:
    """The tiny RSU model with half of every group's channels removed by filter L1, without compensation."""
    model = residual_concat_model()
    graph = trace(model)
    keep = pruner.select(graph, importance.Magnitude(1).scores(model, graph), 0.5, 1)
    pruned, slices = pruner.apply(model, graph, keep)
    return model, pruned, slices


def test_refit_beats_slicing_on_held_out_inputs() -> None:
    model, pruned, slices = _half_pruned()
    refit, report = reconstruct(model, pruned, slices, CALIB, ReconstructConfig(samples=256))
    assert report.convs == 4 and report.error_refit < report.error_sliced
    reference = _outputs(model, HELD_OUT)
    sliced_error = np.abs(_outputs(pruned, HELD_OUT) - reference).mean()
    refit_error = np.abs(_outputs(refit, HELD_OUT) - reference).mean()
    assert refit_error < 0.7 * sliced_error
    assert [i.dims for i in refit.graph.initializer] == [i.dims for i in pruned.graph.initializer]


def test_keeping_every_channel_refits_to_the_same_weights() -> None:
    model = residual_concat_model()
    graph = trace(model)
    pruned, slices = pruner.apply(model, graph, {g.index: np.arange(g.channels) for g in graph.prunable})
    refit, report = reconstruct(model, pruned, slices, CALIB, ReconstructConfig(samples=256))
    assert report.error_sliced < 1e-9
    for name, (weight, _bias) in conv_weights(refit).items():
        np.testing.assert_allclose(weight, conv_weights(model)[name][0], atol=1e-4)


def test_default_ridge_keeps_an_underdetermined_refit_from_overfitting() -> None:
    """16 positions of one photo for ~30-55 unknowns per Conv: a near-zero ridge fits the calibration photo
    and misses held-out inputs (as U²-Net's 10x10 bottom does with 16 photos); the default ridge does not."""
    model, pruned, slices = _half_pruned()
    reference = _outputs(model, HELD_OUT)
    errors = {}
    for ridge in (1e-6, ReconstructConfig().ridge):
        refit, _ = reconstruct(model, pruned, slices, CALIB[:1], ReconstructConfig(samples=16, ridge=ridge))
        errors[ridge] = float(np.abs(_outputs(refit, HELD_OUT) - reference).mean())
    assert errors[ReconstructConfig().ridge] < 0.7 * errors[1e-6], errors  # measured 0.09 against 0.19
