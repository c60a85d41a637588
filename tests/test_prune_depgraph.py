"""Channel dependency graph: exact groups on a tiny RSU block, the real U²-Net graphs, and untraceable graphs."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from cutq.prune.depgraph import Span, trace
from cutq_runtime.errors import ModelError

from .tiny import residual_concat_model, two_conv_model


def test_groups_follow_concat_offsets_and_tie_the_residual_add() -> None:
    graph = trace(residual_concat_model())
    by_producers = {g.producers: g for g in graph.groups}
    tied = by_producers[("conv_in", "conv_3")]  # the Add makes conv_in's and conv_3's outputs one group
    assert tied.channels == 8 and tied.prunable
    assert tied.consumers == (("conv_1", 0), ("conv_side", 0))
    b = by_producers[("conv_1",)]
    assert b.channels == 6 and b.consumers == (("conv_2", 0), ("conv_3", 6))  # after the resized branch in the Concat
    c = by_producers[("conv_2",)]
    assert c.consumers == (("conv_3", 0),)
    assert graph.input_spans["conv_3"] == (Span(c.index, 0, 6), Span(b.index, 6, 6))
    assert not by_producers[()].prunable and by_producers[()].reason == "model input"
    side = by_producers[("conv_side",)]
    assert not side.prunable and "reaches output 'y'" in side.reason
    assert {g.index for g in graph.prunable} == {tied.index, b.index, c.index}
    assert graph.conv_order == ("conv_in", "conv_1", "conv_2", "conv_3", "conv_side")


def test_an_op_it_does_not_understand_is_an_error() -> None:
    with pytest.raises(ModelError, match="Neg node 'odd': cannot trace channels"):
        trace(residual_concat_model(extra_op="Neg"))


def test_no_prunable_group_in_a_two_conv_net_with_one_hidden_group() -> None:
    graph = trace(two_conv_model())
    assert [g.channels for g in graph.prunable] == [8]


@pytest.mark.parametrize("name", ["u2netp"])
def test_u2net_graph(name: str, u2netp_path: Path) -> None:
    graph = trace(onnx.load(u2netp_path))
    assert len(graph.conv_order) == 119
    assert len(graph.prunable) == 101  # 11 RSU residuals tie 22 Convs; 7 one-channel outputs and the input are fixed
    tied = [g for g in graph.groups if len(g.producers) == 2]
    assert len(tied) == 11 and all(g.channels == 64 for g in tied)
    assert sorted(g.reason for g in graph.groups if not g.prunable)[0] == "model input"
