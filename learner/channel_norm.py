"""LayerNorm over the channels of image feature maps, as one opaque operator on CPUs.

Inductor decomposes LayerNorm and its backward into reductions it generates code for. Over the
channels of an image model's feature maps (millions of pixels of 32-256 channels) its CPU code for
the backward is 2-4x slower than aten's kernel: the per-pixel reduction over the channels and the
per-channel reduction over all pixels (the weight's and bias' gradients) become separate loop
nests over the whole map, one per 16 channels, with the recomputed forward stored in between
(measured at 1024 x 32 x 32 x 32: 243 ms fused against 78 ms for aten's backward plus 58 ms for
the SiLU's). As a custom operator it runs aten's kernels, and Inductor fuses what is around it.
The operator takes and returns NCHW maps in channels-last memory (where the channels of a pixel are
adjacent, so aten normalises them in place of a copy); same numbers and saved tensors as
`nn.LayerNorm` over the permuted map.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.library.custom_op("harmonyray::channel_layer_norm", mutates_args=())
def channel_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(normalised x, mean, 1 / std) over the channels of an NCHW x; the statistics are
    [N, H, W, 1]."""
    out, mean, rstd = torch.native_layer_norm(x.permute(0, 2, 3, 1), [x.shape[1]], weight, bias, eps)
    return out.permute(0, 3, 1, 2), mean, rstd


@channel_layer_norm.register_fake
def _shapes(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    n, _, h, w = x.shape
    stats = x.new_empty((n, h, w, 1), dtype=torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype)
    out = torch.empty_like(x.permute(0, 2, 3, 1), memory_format=torch.contiguous_format).permute(0, 3, 1, 2)
    return out, stats, torch.empty_like(stats)


@torch.library.custom_op("harmonyray::channel_layer_norm_backward", mutates_args=())
def channel_layer_norm_backward(grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of x (NCHW, channels-last memory), weight and bias."""
    dx, dweight, dbias = torch.ops.aten.native_layer_norm_backward(
        grad.permute(0, 2, 3, 1), x.permute(0, 2, 3, 1), [x.shape[1]], mean, rstd, weight, bias, [True, True, True])
    return dx.permute(0, 3, 1, 2), dweight, dbias


@channel_layer_norm_backward.register_fake
def _backward_shapes(grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    dx = torch.empty_like(x.permute(0, 2, 3, 1), memory_format=torch.contiguous_format).permute(0, 3, 1, 2)
    return dx, torch.empty_like(weight), torch.empty_like(bias)


def _save(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: tuple) -> None:
    x, weight, bias, _ = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, mean, rstd, weight, bias)


def _backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor, _mean_grad: Tensor, _rstd_grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
    x, mean, rstd, weight, bias = ctx.saved_tensors
    return (*channel_layer_norm_backward(grad, x, mean, rstd, weight, bias), None)


channel_layer_norm.register_autograd(_backward, setup_context=_save)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of an NCHW map (free of copies in channels-last memory): on CPUs
    through `channel_layer_norm`, on GPUs Inductor's own code."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu":
            return channel_layer_norm(x, self.norm.weight, self.norm.bias, self.norm.eps)[0]
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
