"""Products with a weight packed once for MKL, as two operators that compiled graphs can call.

MKL copies a matmul's right-hand matrix into its own blocked layout at every call. For the
16-row products of the observe steps that copy costs more than the arithmetic: a 16 x 512 x 1536
product took 0.58 ms, and 0.19 ms with the weight packed beforehand (the same numbers, bitwise at
an inner size of 512, within fp32 rounding at 1,024). A window of steps uses each weight several
times, so `learner/matmul_passes.py: prepack_weights` packs it once per compiled graph and calls
`packed_mm` for each step. Inductor's own use of these MKL kernels needs frozen (constant)
weights: inference only.
"""
from __future__ import annotations

from functools import cache

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import unset_fake_temporarily


def available() -> bool:
    """MKL's packed single-precision products are in this torch build (x86 builds ship them)."""
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")


# Defined through `torch.library.Library`, not `custom_op`: a product here takes 0.06-0.25 ms, and
# `custom_op`'s Python wrapper added ~20 us per call against ~5 us for a plain kernel.
_LIBRARY = torch.library.Library("harmonyray", "FRAGMENT")
_LIBRARY.define("pack_weight(Tensor weight, int rows) -> Tensor")
_LIBRARY.define("packed_mm(Tensor x, Tensor packed, Tensor weight) -> Tensor")


def pack_weight(weight: Tensor, rows: int) -> Tensor:
    """`weight` [N, K] (fp32, any strides) in MKL's layout for products x [rows, K] @ weight.T:
    an opaque tensor only `packed_mm` reads."""
    return torch.ops.mkl._mkl_reorder_linear_weight(weight, rows)


def packed_mm(x: Tensor, packed: Tensor, weight: Tensor) -> Tensor:
    """x @ weight.T with `packed = pack_weight(weight, len(x))`."""
    return torch.ops.mkl._mkl_linear(x, packed, weight, None, x.shape[0])


# The packed weight is an MKL-DNN tensor: the kernels serve every backend, MkldnnCPU included.
_LIBRARY.impl("pack_weight", pack_weight, "CompositeExplicitAutograd")
_LIBRARY.impl("packed_mm", packed_mm, "CompositeExplicitAutograd")


@torch.library.register_fake("harmonyray::pack_weight")
def _pack_weight_shape(weight: Tensor, rows: int) -> Tensor:
    return weight.new_empty((_packed_numel(tuple(weight.shape), rows), 1))


@cache
def _packed_numel(shape: tuple[int, ...], rows: int) -> int:
    """MKL's buffer size for this weight shape, asked of MKL itself on a real tensor."""
    with unset_fake_temporarily():
        return torch.ops.mkl._mkl_reorder_linear_weight(torch.zeros(shape), rows).shape[0]


@torch.library.register_fake("harmonyray::packed_mm")
def _packed_mm_shape(x: Tensor, packed: Tensor, weight: Tensor) -> Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]))
