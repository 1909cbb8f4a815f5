"""Fuse int8 elementwise subgraphs of one input tensor into a single lookup table.

A Mul or Add whose two operands both derive from the same int8 tensor x through Lut
nodes (HardSwish as x * HardSigmoid(x), Sigmoid * x, ...) is a function of x alone, as
is a Lut of a Lut. Such a node becomes one Lut whose table is computed by running the
integer kernels themselves on all 256 codes of x, so the fused program gives the very
same bits as the unfused one. Intermediate tensors left without readers disappear
(they are no longer dumped), as on hardware whose compiler fuses them.
"""
from __future__ import annotations

import numpy as np

from qverify.simulator import program as prog
from qverify.simulator.executor import LayerStats
from qverify.simulator.ops import registry
from qverify.v1 import model_pb2

FUSABLE_BINARY = ("Mul", "Add")


def _node_view(node: model_pb2.Node, constants: dict[str, np.ndarray]) -> prog.NodeView:
    return prog.NodeView(node.name, node.op, list(node.inputs), list(node.outputs),
                         {k: prog.attr_value(v) for k, v in node.attrs.items()},
                         [constants[c] for c in node.constants], node.placement, node.onnx_op,
                         list(node.onnx_nodes))


def fuse_elementwise(program: model_pb2.Program) -> int:
    """Rewrite ``program`` in place; returns how many nodes were fused away."""
    registry.load_kernels()
    constants = {c.name: np.frombuffer(c.data, dtype=prog.dtype_of(c.dtype)).reshape(tuple(c.shape))
                 for c in program.constants}
    shapes = {t.name: tuple(t.shape) for t in program.tensors}
    outputs = set(program.outputs)
    # For every tensor defined as a function of one int8 tensor: (root, table over root's 256 codes).
    codes = np.arange(-128, 128, dtype=np.int32).astype(np.int8)
    as_table: dict[str, tuple[str, np.ndarray]] = {}
    new_nodes: list[model_pb2.Node] = []
    for node in program.nodes:
        replaced = None
        if node.placement == model_pb2.NPU and node.op == "Lut":
            src = node.inputs[0]
            root, before = as_table.get(src, (src, codes))
            table = constants[node.constants[0]][before.view(np.uint8) ^ np.uint8(0x80)]
            as_table[node.outputs[0]] = (root, table)
            if root != src:
                replaced = (root, table)
        elif node.placement == model_pb2.NPU and node.op in FUSABLE_BINARY and len(node.inputs) == 2:
            a, b = (as_table.get(i, (i, codes)) for i in node.inputs)
            same_shape = all(shapes.get(i) == shapes.get(node.outputs[0]) for i in node.inputs)
            if a[0] == b[0] and same_shape and a[0] in shapes:
                kernel = registry.npu_kernel(node.op)
                table = kernel(_node_view(node, constants), [a[1], b[1]], LayerStats("", "", "", ""))[0]
                as_table[node.outputs[0]] = (a[0], table)
                replaced = (a[0], table)
        if replaced is None:
            new_nodes.append(node)
            continue
        root, table = replaced
        const_name = f"{node.outputs[0]}/fused_table"
        program.constants.append(prog.make_constant(const_name, table.astype(np.int8)))
        constants[const_name] = table.astype(np.int8)
        fused = model_pb2.Node(name=node.name, op="Lut", inputs=[root], outputs=list(node.outputs),
                               constants=[const_name], placement=model_pb2.NPU,
                               onnx_op=node.onnx_op, onnx_nodes=list(node.onnx_nodes))
        fused.attrs["fused"].s = "elementwise"
        new_nodes.append(fused)
    # Dead-code elimination: drop nodes none of whose outputs are read or are program outputs.
    removed = 0
    while True:
        read = {i for n in new_nodes for i in n.inputs} | outputs
        alive = [n for n in new_nodes if any(o in read for o in n.outputs)]
        if len(alive) == len(new_nodes):
            break
        removed += len(new_nodes) - len(alive)
        new_nodes = alive
    live_tensors = {i for n in new_nodes for i in n.inputs} | {o for n in new_nodes for o in n.outputs} \
        | set(program.inputs) | outputs
    kept_tensors = [t for t in program.tensors if t.name in live_tensors]
    del program.tensors[:]
    program.tensors.extend(kept_tensors)
    del program.nodes[:]
    program.nodes.extend(new_nodes)
    return removed
