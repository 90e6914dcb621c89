"""Group normalisation as one InstanceNormalization per layer in an exported ONNX graph.

tf2onnx spells Keras' GroupNormalization out as some twenty elementwise nodes on
5-D channels-last tensors (reshape to groups, moments, rsqrt, scale, shift),
with transposes around each block because ONNX Runtime's convolutions run
channels-first. In the lesion-first U-Net those nodes were a third of ONNX
Runtime's time (Conv half), and v9 missed its 150 slices/s budget. The same
arithmetic is the standard ONNX idiom: reshape (N, C, H, W) to (N, G, -1),
InstanceNormalization with unit scale and zero bias (per-group mean and
variance, epsilon inside the root, as Keras does), reshape back, then the
layer's per-channel gamma and beta. ONNX Runtime cancels the transposes that
then meet head to head. The export's parity check (trainer.export) still
compares every output with TensorFlow, so a graph this rewrite got wrong is
never written.
"""
import re

import numpy as np


def _layers(model):
    """Every GroupNormalization layer of `model` and of models nested in it."""
    for layer in model.layers:
        if type(layer).__name__ == "GroupNormalization":
            yield layer
        elif hasattr(layer, "layers"):
            yield from _layers(layer)


def _prefix_nodes(graph, name):
    rx = re.compile(rf"(^|/){re.escape(name)}(_\d+)?/")
    return [i for i, n in enumerate(graph.node) if rx.search(n.name)]


def _block(graph, idx):
    """(input X, output Y) of the node block `idx`, or None when it is not one normalisation."""
    nodes, inside = [graph.node[i] for i in idx], set(idx)
    made = {o for n in nodes for o in n.output}
    used_outside = {t for i, n in enumerate(graph.node) if i not in inside for t in n.input} | \
        {o.name for o in graph.output}
    outs = [t for t in made if t in used_outside]
    entries = [n.input[0] for n in nodes if n.op_type == "Reshape" and n.input[0] not in made]
    if len(outs) != 1 or len(entries) != 1:
        return None
    return entries[0], outs[0]


def _replacement(layer, x, y, tag):
    from onnx import helper, numpy_helper
    groups, eps = int(layer.groups), float(layer.epsilon)
    channels = int(layer.input.shape[-1]) if hasattr(layer, "input") else None
    gamma = np.asarray(layer.gamma.numpy() if layer.scale else np.ones(channels), np.float32)
    beta = np.asarray(layer.beta.numpy() if layer.center else np.zeros(channels), np.float32)
    c = len(gamma)
    consts = [numpy_helper.from_array(a, f"{tag}/{n}") for n, a in (
        ("groups_shape", np.array([0, groups, -1], np.int64)), ("unit", np.ones(groups, np.float32)),
        ("zero", np.zeros(groups, np.float32)), ("gamma", gamma.reshape(c, 1, 1)),
        ("beta", beta.reshape(c, 1, 1)))]
    nodes = [
        helper.make_node("Transpose", [x], [f"{tag}/nchw"], perm=[0, 3, 1, 2], name=f"{tag}/to_nchw"),
        helper.make_node("Shape", [f"{tag}/nchw"], [f"{tag}/shape"], name=f"{tag}/shape"),
        helper.make_node("Reshape", [f"{tag}/nchw", f"{tag}/groups_shape"], [f"{tag}/grouped"], name=f"{tag}/group"),
        helper.make_node("InstanceNormalization", [f"{tag}/grouped", f"{tag}/unit", f"{tag}/zero"],
                         [f"{tag}/normed"], epsilon=eps, name=f"{tag}/norm"),
        helper.make_node("Reshape", [f"{tag}/normed", f"{tag}/shape"], [f"{tag}/ungrouped"], name=f"{tag}/ungroup"),
        helper.make_node("Mul", [f"{tag}/ungrouped", f"{tag}/gamma"], [f"{tag}/scaled"], name=f"{tag}/scale"),
        helper.make_node("Add", [f"{tag}/scaled", f"{tag}/beta"], [f"{tag}/shifted"], name=f"{tag}/shift"),
        helper.make_node("Transpose", [f"{tag}/shifted"], [y], perm=[0, 2, 3, 1], name=f"{tag}/to_nhwc"),
    ]
    return nodes, consts


def _prune_and_sort(graph):
    """Drop nodes nothing reads (the old blocks' shape arithmetic) and restore topological order."""
    nodes = list(graph.node)
    needed = {o.name for o in graph.output}
    keep = []
    for n in reversed(nodes):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(n.input)
    keep.reverse()
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    ordered, pending = [], keep
    while pending:
        rest = []
        for n in pending:
            (ordered.append(n), ready.update(n.output)) if all(i in ready for i in n.input) else rest.append(n)
        if len(rest) == len(pending):
            raise ValueError("ONNX graph has a cycle or an unknown input after the group-norm rewrite")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
    used = {i for n in ordered for i in n.input}
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def fuse(proto, model):
    """Rewrite every GroupNormalization block of `model` found in `proto`; returns how many were."""
    graph = proto.graph
    done = 0
    for k, layer in enumerate(_layers(model)):
        idx = _prefix_nodes(graph, layer.name)
        ends = _block(graph, idx) if idx else None
        if ends is None:
            continue
        new_nodes, consts = _replacement(layer, *ends, tag=f"groupnorm_{k}")
        first, drop = min(idx), set(idx)
        kept = [n for i, n in enumerate(graph.node) if i not in drop]
        at = sum(1 for i in range(first) if i not in drop)
        kept[at:at] = new_nodes
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(consts)
        done += 1
    if done:
        _prune_and_sort(graph)
    return done
