"""A graph pass for Inductor on CPUs: matmul biases fused into the loops that follow."""
from __future__ import annotations

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files


class UnfuseBiasAdd(CustomGraphPass):
    """Rewrite `addmm(bias, x, w)` as `mm(x, w) + bias` so that Inductor fuses the bias into the
    fused loop that follows (a LayerNorm, an activation) instead of handing it to the BLAS call.

    Inductor does this itself only on GPUs. On a CPU, aten's `addmm` first copies the bias,
    expanded to the output's shape, into the output and then multiplies into it: one more pass
    over memory and a few more dispatched operators per matmul, hundreds per update."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        aten = torch.ops.aten
        for node in graph.find_nodes(op="call_function", target=aten.addmm.default):
            if len(node.args) != 3 or node.kwargs:  # alpha or beta set: leave it
                continue
            bias, x, w = node.args
            with graph.inserting_before(node):
                product = graph.call_function(aten.mm.default, (x, w))
                product.meta["val"] = aten.mm.default(x.meta["val"], w.meta["val"])
                total = graph.call_function(aten.add.Tensor, (product, bias))
                total.meta["val"] = aten.add.Tensor(product.meta["val"], bias.meta["val"])
            node.replace_all_uses_with(total)
            graph.erase_node(node)

    def uuid(self) -> bytes:
        return get_hash_for_files((__file__,))
