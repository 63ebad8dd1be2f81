"""Graph passes for Inductor on CPUs: how the compiled units hand their matmuls to the BLAS."""
from __future__ import annotations

from collections import defaultdict

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
from torch.fx import Graph, Node

from learner import packed_matmul

aten = torch.ops.aten
prims = torch.ops.prims

# Products whose inner dimension is at most this are summed as one matmul (`sum_products`). At 16
# (the rows of one observe step) 8 products summed took 0.34-0.61 ms as one and 0.51-1.19 ms
# apart (XS weight shapes, 2 cores); at 1,024 (imagined steps) one was no faster and its inputs'
# copy cost more.
SMALL_INNER = 128
# fp32 products of PACK_ROWS rows by a weight of at least PACK_MIN_WEIGHT elements that is used at
# least PACK_MIN_USES times in one graph get the weight packed once (`prepack_weights`). Measured
# with MKL on 2 Xeon cores, ms per product, plain / packed (packing itself: about 1-2 products):
# 16 x 512 x 1536 0.58 / 0.19, 16 x 512 x 512 0.18 / 0.064, 16 x 256 x 512 0.070 / 0.045,
# 16 x 256 x 256 0.037 / 0.035, 48 x 512 x 1536 0.93 / 0.54, 64 x 512 x 512 0.36 / 0.33,
# 128 x 512 x 1536 1.30 / 1.27; below 16 rows MKL takes another path (8 x 512 x 1536 0.15 / 0.14).
# In whole updates: S (weights of 512 x 512 and up) 4 % faster, paired against the same build
# without the pass; XS (256 x 512, 256 x 768) 1.7 % slower, so weights below 512 x 512 stay plain.
PACK_ROWS = range(16, 49)
PACK_MIN_WEIGHT = 512 * 512
PACK_MIN_USES = 3


class CpuMatmulPasses(CustomGraphPass):
    """`unfuse_bias_add`, `sum_products`, then `prepack_weights`: Inductor's post-grad custom
    pass on CPUs."""

    def __call__(self, graph: Graph) -> None:
        unfuse_bias_add(graph)
        sum_products(graph)
        prepack_weights(graph)

    def uuid(self) -> bytes:
        return get_hash_for_files((__file__, packed_matmul.__file__))


def unfuse_bias_add(graph: Graph) -> None:
    """Rewrite `addmm(bias, x, w)` as `mm(x, w) + bias` so that Inductor fuses the bias into the
    fused loop that follows (a LayerNorm, an activation) instead of handing it to the BLAS call.

    Inductor does this itself only on GPUs. On a CPU, aten's `addmm` first copies the bias,
    expanded to the output's shape, into the output and then multiplies into it: one more pass
    over memory and a few more dispatched operators per matmul, hundreds per update."""
    for node in graph.find_nodes(op="call_function", target=aten.addmm.default):
        if len(node.args) != 3 or node.kwargs:  # alpha or beta set: leave it
            continue
        bias, x, w = node.args
        with graph.inserting_before(node):
            total = _add(graph, _call(graph, aten.mm.default, x, w), bias)
        node.replace_all_uses_with(total)
        graph.erase_node(node)


def sum_products(graph: Graph) -> None:
    """Rewrite a sum of equal-shaped small matmuls `a_1 @ b_1 + ... + a_n @ b_n` as one matmul of the
    concatenations, `[a_1 ... a_n] @ [b_1; ...; b_n]`.

    Such sums are how a compiled window's backward adds up a weight's gradient over its steps:
    one [out, B] @ [B, in] product per step, where B is a step's batch (16 rows per observe step),
    too few for a BLAS call to pay its overhead. One call over the window's K * B rows does the
    same arithmetic at a fraction of the overhead.

    Under bf16 autocast each step's product reaches the sum converted to fp32 and transposed
    (`permute(convert(a_i @ b_i))`): the same wrappers on every product are applied once to the
    merged one, whose bf16 result is rounded once instead of once per step."""
    for root in graph.find_nodes(op="call_function", target=aten.add.Tensor):
        if _is_sum(root) and not _inside_larger_sum(root):
            _merge_products(graph, root)


def _merge_products(graph: Graph, root: Node) -> None:
    terms, adds = _sum_tree(root)
    unwrapped = {t: _unwrap(t) for t in terms if isinstance(t, Node)}
    products = [t for t in terms if t in unwrapped and _only_user(t) is not None and _small_product(unwrapped[t][0])]
    kinds = {(_signature(unwrapped[p][0].args), tuple(_wrapper_kind(w) for w in unwrapped[p][1])) for p in products}
    if len(products) < 2 or len(kinds) != 1 or len(set(products)) != len(products):
        return  # only equal products, equally wrapped: a weight's gradient over the steps (what was measured)
    mms = [unwrapped[p][0] for p in products]
    with graph.inserting_before(root):
        left = _call(graph, aten.cat.default, [_call(graph, aten.permute.default, m.args[0], [1, 0]) for m in mms], 0)
        right = _call(graph, aten.cat.default, [m.args[1] for m in mms], 0)
        total = _call(graph, aten.mm.default, _call(graph, aten.permute.default, left, [1, 0]), right)
        for wrapper in reversed(unwrapped[products[0]][1]):  # innermost first
            total = _call(graph, wrapper.target, total, *wrapper.args[1:])
        for other in (t for t in terms if t not in products):
            total = _add(graph, total, other)
    root.replace_all_uses_with(total)
    for node in [*adds, *(w for p in products for w in unwrapped[p][1]), *mms]:  # outermost first: users go before
        graph.erase_node(node)


def prepack_weights(graph: Graph) -> None:
    """Pack a weight once for all the small products of a window that use it: `x_i @ W.T` of
    the steps forward, `g_i @ W` backward (`learner/packed_matmul.py`).

    A weight here is a graph input (a parameter, or one saved for the backward) seen through
    transposes; its products are grouped by input, shape and strides, so one group is one matrix."""
    if not packed_matmul.available():
        return
    groups: dict[tuple, list[Node]] = defaultdict(list)
    for node in graph.find_nodes(op="call_function", target=aten.mm.default):
        x, b = node.args
        source = _transposed_input(b)
        xv, bv = x.meta["val"], b.meta["val"]
        if source is None or xv.shape[0] not in PACK_ROWS or bv.numel() < PACK_MIN_WEIGHT or {xv.dtype, bv.dtype} != {torch.float32}:
            continue
        groups[(source, tuple(bv.shape), bv.stride(), xv.shape[0])].append(node)
    order = {node: i for i, node in enumerate(graph.nodes)}
    for (_, _, _, rows), products in groups.items():
        if len(products) < PACK_MIN_USES:
            continue
        products.sort(key=order.__getitem__)
        with graph.inserting_before(products[0]):
            weight = _call(graph, aten.permute.default, products[0].args[1], [1, 0])
            packed = _call(graph, torch.ops.harmonyray.pack_weight.default, weight, rows)
        for product in products:
            with graph.inserting_before(product):
                result = _call(graph, torch.ops.harmonyray.packed_mm.default, product.args[0], packed, weight)
            product.replace_all_uses_with(result)
            graph.erase_node(product)


def _transposed_input(node: Node) -> Node | None:
    """The graph input under a chain of 2-d transposes, or None."""
    while node.op == "call_function" and _wrapper_kind(node) == (aten.permute.default, 1, 0):
        node = node.args[0]
    return node if node.op == "placeholder" else None


def _unwrap(node: Node) -> tuple[Node, list[Node]]:
    """The node under a chain of single-user dtype conversions and 2-d transposes, and the chain
    (outermost first)."""
    wrappers = []
    while _wrapper_kind(node) is not None and isinstance(node.args[0], Node) and _only_user(node.args[0]) is node:
        wrappers.append(node)
        node = node.args[0]
    return node, wrappers


def _wrapper_kind(node: Node) -> tuple | None:
    """What a conversion or transpose does (equal for equal wrappers), or None for other nodes."""
    if node.op != "call_function" or node.kwargs:
        return None
    if node.target is prims.convert_element_type.default:
        return (node.target, node.args[1])
    if node.target is aten.permute.default and list(node.args[1]) == [1, 0]:
        return (node.target, 1, 0)
    return None


def _signature(args: tuple) -> tuple:
    return tuple((*arg.meta["val"].shape, arg.meta["val"].dtype) for arg in args)


def _is_sum(node: Node) -> bool:
    return node.op == "call_function" and node.target is aten.add.Tensor and len(node.args) == 2 and not node.kwargs


def _only_user(node: Node) -> Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _inside_larger_sum(node: Node) -> bool:
    user = _only_user(node)
    return user is not None and _is_sum(user)


def _sum_tree(node: Node) -> tuple[list[Node], list[Node]]:
    """The summands of a tree of adds whose inner adds feed only the next add up, and its adds
    (outermost first)."""
    terms, adds = [], [node]
    for arg in node.args:
        if isinstance(arg, Node) and _is_sum(arg) and _only_user(arg) is node:
            inner_terms, inner_adds = _sum_tree(arg)
            terms += inner_terms
            adds += inner_adds
        else:
            terms.append(arg)
    return terms, adds


def _small_product(node: object) -> bool:
    if not (isinstance(node, Node) and node.target is aten.mm.default and _only_user(node) is not None):
        return False
    a, b = (arg.meta.get("val") for arg in node.args)
    return a is not None and b is not None and a.dim() == b.dim() == 2 and a.shape[1] <= SMALL_INNER


def _call(graph: Graph, target: torch._ops.OpOverload, *args: object) -> Node:
    node = graph.call_function(target, args)
    node.meta["val"] = target(*(_val(a) for a in args))
    return node


def _add(graph: Graph, x: Node, y: object) -> Node:
    return _call(graph, aten.add.Tensor, x, y)


def _val(arg: object) -> object:
    if isinstance(arg, Node):
        return arg.meta["val"]
    if isinstance(arg, list):
        return [_val(a) for a in arg]
    return arg
