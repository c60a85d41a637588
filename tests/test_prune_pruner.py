"""The pruner and the criteria on tiny models built here, and on the real u2netp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cutq import modelstats
from cutq.prune import importance, pruner
from cutq.prune.activations import capture, conv_input_moments
from cutq.prune.depgraph import conv_weights, trace
from cutq.prune.geometry import Geometry
from cutq.quantize.verify import session_for
from cutq_runtime.errors import CutqError

from .tiny import residual_concat_model

X = [np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32) for i in range(3)]


def _run(model: onnx.ModelProto, inputs=X) -> list[np.ndarray]:
    session = session_for(model)
    name = session.get_inputs()[0].name
    return [session.run(None, {name: x})[0] for x in inputs]


def test_keeping_every_channel_changes_nothing() -> None:
    model = residual_concat_model()
    graph = trace(model)
    pruned, _ = pruner.apply(model, graph, {g.index: np.arange(g.channels) for g in graph.prunable})
    for a, b in zip(_run(model), _run(pruned), strict=True):
        np.testing.assert_array_equal(a, b)


def _zero_filters(model: onnx.ModelProto, conv: str, channels: list[int]) -> None:
    node = next(n for n in model.graph.node if n.name == conv)
    for init in model.graph.initializer:
        if init.name in node.input[1:3]:
            array = numpy_helper.to_array(init).copy()
            array[channels] = 0
            init.CopyFrom(numpy_helper.from_array(array, init.name))


def test_removing_dead_channels_keeps_outputs_through_concat_offsets_and_the_residual() -> None:
    model = residual_concat_model()
    _zero_filters(model, "conv_1", [1, 4])  # read by conv_3 at offset 6 of the Concat
    _zero_filters(model, "conv_2", [0])  # read by conv_3 at offset 0
    for conv in ("conv_in", "conv_3"):  # tied by the Add: both sides must be dead
        _zero_filters(model, conv, [2, 7])
    graph = trace(model)
    scores = importance.Magnitude(1).scores(model, graph)
    keep = {g: np.flatnonzero(s > 0) for g, s in scores.items()}
    by_producer = {graph.groups[i].producers: k.tolist() for i, k in keep.items()}
    assert by_producer == {("conv_in", "conv_3"): [0, 1, 3, 4, 5, 6], ("conv_1",): [0, 2, 3, 5], ("conv_2",): [1, 2, 3, 4, 5]}
    pruned, slices = pruner.apply(model, graph, keep)
    assert slices["conv_3"].inputs.tolist() == [1, 2, 3, 4, 5, 6, 8, 9, 11]
    assert conv_weights(pruned)["conv_3"][0].shape == (6, 9, 3, 3)
    for a, b in zip(_run(model), _run(pruned), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # and removing a live channel does change the output: the check above can fail
    live = dict(keep)
    live[graph.output_group["conv_1"]] = np.array([1, 2, 3, 5])
    changed, _ = pruner.apply(model, graph, live)
    assert max(np.abs(a - b).max() for a, b in zip(_run(model), _run(changed), strict=True)) > 1e-3


@pytest.mark.parametrize(("channels", "ratio", "multiple", "kept"),
                         [(64, 0.5, 4, 32), (64, 0.3, 4, 44), (16, 0.7, 4, 4), (16, 0.9, 4, 2), (16, 0.3, 8, 8), (3, 0.9, 4, 1)])
def test_kept_count(channels: int, ratio: float, multiple: int, kept: int) -> None:
    assert pruner.kept_count(channels, ratio, multiple) == kept


@pytest.mark.parametrize(("channels", "ratio", "floor", "kept"),
                         [(16, 0.3, 16, 16), (64, 0.9, 16, 16), (8, 0.5, 16, 8), (64, 0.3, 16, 44)])
def test_kept_count_respects_the_floor(channels: int, ratio: float, floor: int, kept: int) -> None:
    assert pruner.kept_count(channels, ratio, 4, floor) == kept


def test_default_floor_keeps_16_channel_groups_whole(u2netp_path: Path) -> None:
    """u2netp's groups are 16 and 64 wide: by default the 16s stay whole, so the 64s lose more to reach the ratio."""
    model = onnx.load(u2netp_path)
    graph = trace(model)
    shapes = {conv: w.shape for conv, (w, _) in conv_weights(model).items()}
    config = pruner.PruneConfig(0.4)
    fraction = pruner.channel_fraction(graph, shapes, config)
    assert fraction > pruner.channel_fraction(graph, shapes, pruner.PruneConfig(0.4, min_channels=1))
    keep = pruner.select(graph, importance.Magnitude(2).scores(model, graph), fraction, 4, config.min_channels)
    assert {len(keep[g.index]) for g in graph.prunable if g.channels == 16} == {16}
    assert min(len(k) for k in keep.values()) == 16
    pruned, _ = pruner.apply(model, graph, keep)
    assert 1 - modelstats.parameter_count(pruned) / modelstats.parameter_count(model) >= 0.4
    with pytest.raises(CutqError, match="`min_channels` 16"):
        pruner.channel_fraction(graph, shapes, pruner.PruneConfig(0.9))


@pytest.mark.parametrize("ratio", [0.0, -0.1, 0.95, 1.0])
def test_ratio_outside_range_is_refused(ratio: float) -> None:
    with pytest.raises(CutqError, match=r"`ratio` must be in \(0, 0.9\]"):
        pruner.PruneConfig(ratio)


def test_select_keeps_the_highest_scores_in_original_order() -> None:
    graph = trace(residual_concat_model())
    scores = {g.index: np.arange(g.channels, dtype=float)[::-1] for g in graph.prunable}  # first channels score highest
    keep = pruner.select(graph, scores, 0.5, 1)
    assert {graph.groups[i].channels: k.tolist() for i, k in keep.items()} == {8: [0, 1, 2, 3], 6: [0, 1, 2]}


def _moments(model: onnx.ModelProto, graph, inputs=X):
    return conv_input_moments(model, sorted({c for g in graph.prunable for c, _ in g.consumers}), inputs)


def test_activation_criterion_sees_a_channel_that_never_fires() -> None:
    model = residual_concat_model()
    for init in model.graph.initializer:  # conv_2's channel 3: the largest filter, but a bias that keeps it below 0
        if init.name in ("w2", "b2"):
            array = numpy_helper.to_array(init).copy()
            array[3] = array[3] * 5 if init.name == "w2" else -1e3
            init.CopyFrom(numpy_helper.from_array(array, init.name))
    graph = trace(model)
    group = graph.output_group["conv_2"]
    magnitude = importance.criterion("l1").scores(model, graph)[group]
    activation = importance.criterion("activation", _moments(model, graph)).scores(model, graph)[group]
    assert magnitude.argmax() == 3 and activation[3] == 0 and activation.max() > 0
    with pytest.raises(CutqError, match="unknown criterion"):
        importance.criterion("taylor")
    with pytest.raises(CutqError, match="needs statistics"):
        importance.criterion("activation")


def _outputs_of(model: onnx.ModelProto, name: str) -> np.ndarray:
    return np.concatenate([v[name] for v in capture(model, [name], X)])


@pytest.mark.parametrize(("reader", "other", "column"), [("c_2", "w3", 8), ("c_3", "w2", 2)])
def test_compensation_keeps_the_mean_of_a_removed_constant_channel(reader: str, other: str, column: int) -> None:
    """conv_1's channel 2 is a constant 5 (zero filter, bias 5), read by conv_2 through a MaxPool and by
    conv_3 at offset 6 + 2 of the Concat; with the other reader's weights on it zeroed, removing it must not
    move the reader's mean output. Its 3x3 kernels read zero padding at the borders, which the compensation
    must account for exactly."""
    model = residual_concat_model()
    for init in model.graph.initializer:
        if init.name in ("w1", "b1", other):
            array = numpy_helper.to_array(init).copy()
            if init.name == other:
                array[:, column] = 0
            else:
                array[2] = 0 if init.name == "w1" else 5.0
            init.CopyFrom(numpy_helper.from_array(array, init.name))
    graph = trace(model)
    keep = {graph.output_group["conv_1"]: np.array([0, 1, 3, 4, 5])}
    compensated, _ = pruner.apply(model, graph, keep, _moments(model, graph))
    plain, _ = pruner.apply(model, graph, keep)
    reference = _outputs_of(model, reader).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(_outputs_of(compensated, reader).mean(axis=(0, 2, 3)), reference, atol=1e-4)
    assert np.abs(_outputs_of(plain, reader).mean(axis=(0, 2, 3)) - reference).max() > 0.5


def test_coverage_counts_the_taps_that_read_padding() -> None:
    geometry = Geometry((3, 3), (8, 8, 8, 8), (1, 1), (8, 8))  # U²-Net's dilation-8 Conv on a 10x10 map
    coverage = geometry.coverage((10, 10))
    assert coverage[1, 1] == 1 and coverage[0, 0] == pytest.approx(0.2 * 0.2) and coverage[0, 1] == pytest.approx(0.2)
    assert Geometry((3, 3), (1, 1, 1, 1), (1, 1), (1, 1)).coverage((4, 4))[0, 1] == pytest.approx(0.75)


def test_u2netp_slicing_equals_zeroing_the_consumers_weights(u2netp_path: Path) -> None:
    """Removing channels from every group (Add-tied ones, Concat offsets after pruned inputs) must compute
    exactly what the unpruned model computes with those channels' consumer weights zeroed."""
    model = onnx.load(u2netp_path)
    graph = trace(model)
    rng = np.random.default_rng(1)
    keep = {g.index: np.sort(rng.choice(g.channels, g.channels - 2, replace=False)) for g in graph.prunable}
    pruned, _ = pruner.apply(model, graph, keep)
    zeroed = onnx.ModelProto()
    zeroed.CopyFrom(model)
    inits = {i.name: i for i in zeroed.graph.initializer}
    weight_of = {n.name: inits[n.input[1]] for n in zeroed.graph.node if n.op_type == "Conv"}
    for group in graph.prunable:
        removed = np.setdiff1d(np.arange(group.channels), keep[group.index])
        for conv, offset in group.consumers:
            array = numpy_helper.to_array(weight_of[conv]).copy()
            array[:, offset + removed] = 0
            weight_of[conv].CopyFrom(numpy_helper.from_array(array, weight_of[conv].name))
    x = np.random.default_rng(0).random((1, 3, 320, 320), np.float32)
    original, expected, actual = (session_for(m).run(None, {"input.1": x})[0] for m in (model, zeroed, pruned))
    assert np.abs(actual - expected).max() < 1e-4
    assert np.abs(expected - original).max() > 0.1  # the channels removed did matter


def test_channel_fraction_removes_the_requested_share_of_parameters(u2netp_path: Path) -> None:
    model = onnx.load(u2netp_path)
    graph = trace(model)
    shapes = {conv: w.shape for conv, (w, _) in conv_weights(model).items()}
    fraction = pruner.channel_fraction(graph, shapes, pruner.PruneConfig(0.5, min_channels=1))
    assert 0.2 < fraction < 0.4  # parameters fall about quadratically with the channels
    keep = pruner.select(graph, importance.Magnitude(2).scores(model, graph), fraction, 4)
    pruned, _ = pruner.apply(model, graph, keep)
    removed = 1 - modelstats.parameter_count(pruned) / modelstats.parameter_count(model)
    assert 0.5 <= removed < 0.55


def test_u2netp_at_half_is_a_valid_smaller_model(u2netp_path: Path) -> None:
    model = onnx.load(u2netp_path)
    graph = trace(model)
    keep = pruner.select(graph, importance.Magnitude(2).scores(model, graph), 0.5, 4)
    pruned, _ = pruner.apply(model, graph, keep)
    assert [i.name for i in pruned.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in pruned.graph.output] == [o.name for o in model.graph.output]
    assert modelstats.parameter_count(pruned) < 0.3 * modelstats.parameter_count(model)
    assert modelstats.conv_macs(pruned) < 0.3 * modelstats.conv_macs(model)
    x = np.random.default_rng(0).random((1, 3, 320, 320), np.float32)
    outputs = session_for(pruned).run(None, {"input.1": x})
    assert len(outputs) == 7 and all(o.shape == (1, 1, 320, 320) for o in outputs)
    assert 0 < outputs[0].mean() < 1


def test_narrow_share_spares_the_narrow_groups_at_the_same_parameter_count(u2netp_path: Path) -> None:
    model = onnx.load(u2netp_path)
    graph = trace(model)
    shapes = {conv: w.shape for conv, (w, _) in conv_weights(model).items()}
    config = pruner.PruneConfig(0.5, narrow_share=0.25, narrow_below=64, min_channels=1)  # u2netp: groups of 16 and 64
    fraction = pruner.channel_fraction(graph, shapes, config)
    uniform = pruner.channel_fraction(graph, shapes, pruner.PruneConfig(0.5, min_channels=1))
    assert fraction > uniform  # the wide groups make up for it
    keep = pruner.select(graph, importance.Magnitude(2).scores(model, graph), config.fractions(graph, fraction), 4)
    kept_share = {g.channels: len(keep[g.index]) / g.channels for g in graph.prunable}
    assert kept_share[16] > kept_share[64] + 0.2
    pruned, _ = pruner.apply(model, graph, keep)
    removed = 1 - modelstats.parameter_count(pruned) / modelstats.parameter_count(model)
    assert 0.5 <= removed < 0.55
    with pytest.raises(CutqError, match="narrow share"):
        pruner.PruneConfig(0.5, narrow_share=-1)


def test_spare_keeps_the_groups_of_one_map_size_and_width_whole(u2netp_path: Path) -> None:
    model = onnx.load(u2netp_path)
    graph = trace(model)
    fractions = {g.index: 0.5 for g in graph.prunable}
    spared = pruner.spare(model, graph, fractions, ((80, 64),))
    assert pruner.spare(model, graph, fractions, ()) == fractions
    # The map sizes as ONNX Runtime computes them on a 320x320 photo, not as shape inference reports them.
    producers = sorted({p for g in graph.prunable for p in g.producers})
    convs = {n.name: n.output[0] for n in model.graph.node}
    x = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
    height = {p: v.shape[2] for p, v in zip(producers, next(capture(model, [convs[p] for p in producers], [x])).values(),
                                            strict=True)}
    at80 = {g.index for g in graph.prunable if any(height[p] == 80 for p in g.producers)}
    wide80 = {g.index for g in graph.prunable if g.index in at80 and g.channels >= 64}
    assert wide80 and at80 - wide80  # u2netp has both 64- and 16-channel groups at 80x80
    assert {i for i, f in spared.items() if f == 0.0} == wide80
    assert all(spared[i] == 0.5 for i in fractions if i not in wide80)
    with pytest.raises(CutqError, match="`spare`"):
        pruner.PruneConfig(0.5, spare=((80, 0),))
