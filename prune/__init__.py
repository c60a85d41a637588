"""`cutq prune`: structured channel pruning of U²-Net on the ONNX graph, with training-free reconstruction.

Three separate concepts, as in Torch-Pruning: the dependency graph (`depgraph`), the importance criterion
(`importance`) and the pruner (`pruner`); `lowrank` factors the wide Convs, whose channels are too redundant
to remove one by one; `reconstruct` refits the Convs after pruning, `pipeline` wires them, and `recipes` names the
settings measured best (`cutq prune --recipe`).
"""
