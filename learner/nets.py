"""Network building blocks: LayerNorm + SiLU MLPs and CNNs, and the output distributions."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from learner.channel_norm import ChannelNorm
from learner.numerics import symexp, symlog, twohot


@dataclass(frozen=True)
class OneHots:
    """An input made of `groups` one-hot vectors of `classes` entries each, flattened: the RSSM's
    stochastic latent. A layer that knows this multiplies it by gathering weight columns."""

    groups: int
    classes: int

    @property
    def dim(self) -> int:
        return self.groups * self.classes


Input = int | OneHots  # a layer input: its width, or the one-hot layout that gives it


def input_width(spec: Input) -> int:
    return spec.dim if isinstance(spec, OneHots) else spec


def input_classes(specs: Sequence[Input]) -> list[int | None]:
    """Per input, the classes of its one-hot groups (None: a dense input), for `linear_sum`."""
    return [spec.classes if isinstance(spec, OneHots) else None for spec in specs]


# Below this many rows a dense product costs less than transposing the weight for the gather
# (XS: 1024 x 256 weights, measured break-even ~64 rows), so the RSSM's 16-row observe steps and
# a runner's policy steps stay dense.
ONEHOT_MIN_ROWS = 64


class MLP(nn.Module):
    """Linear -> LayerNorm -> SiLU blocks whose first layer takes several inputs.

    The first layer holds one weight per input and sums the products, which equals a linear layer
    on the concatenated inputs without materialising the concatenation (the RSSM and imagination
    loops call these once per step). Inputs given as `OneHots` are multiplied by `onehot_linear`.
    """

    def __init__(self, in_dims: Sequence[Input], hidden: int, layers: int, out: int | None = None, zero_out: bool = False):
        super().__init__()
        self.inputs = nn.ModuleList(nn.Linear(input_width(d), hidden, bias=i == 0) for i, d in enumerate(in_dims))
        self.classes = input_classes(in_dims)
        self.norm0 = nn.LayerNorm(hidden, eps=1e-3)
        blocks: list[nn.Module] = []
        for _ in range(layers - 1):
            blocks += [nn.Linear(hidden, hidden, bias=False), nn.LayerNorm(hidden, eps=1e-3), nn.SiLU()]
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Linear(hidden, out) if out is not None else None
        if zero_out and self.out is not None:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, *xs: Tensor) -> Tensor:
        h = self.blocks(F.silu(self.norm0(linear_sum(self.inputs, xs, self.classes))))
        return self.out(h) if self.out is not None else h


def linear_sum(layers: nn.ModuleList, xs: Sequence[Tensor], classes: Sequence[int | None]) -> Tensor:
    """sum_i layers[i](xs[i]), accumulated in place by addmm (no concatenation, no temporaries);
    an input whose `classes` is set holds one-hot groups of that many classes (`onehot_linear`)."""
    lead = xs[0].shape[:-1]
    h = layers[0](xs[0].reshape(-1, xs[0].shape[-1]))
    for layer, x, group in zip(layers[1:], xs[1:], classes[1:]):
        x = x.reshape(-1, x.shape[-1])
        if group is not None and x.shape[0] >= ONEHOT_MIN_ROWS:
            h = h + OneHotMatmul.apply(x, layer.weight, group, h.dtype)
        else:
            h = torch.addmm(h, x.to(h.dtype), layer.weight.t().to(h.dtype))
    return h.reshape(*lead, h.shape[-1])


def onehot_linear(x: Tensor, weight: Tensor, classes: int, dtype: torch.dtype) -> Tensor:
    """`F.linear(x, weight)` in `dtype` for an x whose every group of `classes` entries holds at
    most one non-zero entry, and a positive one: one-hot samples, straight-through samples (the
    sample plus a zero-valued gradient path), and samples masked to zeros.

    A row then selects one weight column per group, so the product is a sum of gathered columns:
    a 32 x 32 latent times a 1024 x 256 weight is 32 column additions instead of 1,024 multiply-adds
    per output, the bulk of an imagination's matmul FLOPs (its heads and actor see 15 x 1024 such
    rows). The gradients are those of the dense product: straight-through samples pass gradients
    to every class."""
    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] < ONEHOT_MIN_ROWS:
        out = F.linear(flat, weight).to(dtype)
    else:
        out = OneHotMatmul.apply(flat, weight, classes, dtype)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def selected_entries(x: Tensor, classes: int) -> tuple[Tensor, Tensor]:
    """The value and the index of the non-zero entry of each group of `classes` entries of x
    ([rows, groups] each; value 0 for a group of zeros), for inputs as `onehot_linear` takes them.
    Eager, a max finds them; compiled, two sums do (a group's entries other than the chosen one
    are exact zeros, so both are exact): Inductor's loops for a max that returns its index took
    19-23 ms on a [15360, 32, 32] trajectory, the sums 8 ms, while eager the max is the faster
    (17-22 ms against 42-47 ms)."""
    groups = x.unflatten(-1, (-1, classes))
    if not torch.compiler.is_compiling():
        return groups.max(-1)
    positions = torch.arange(classes, device=x.device, dtype=torch.float32)
    return groups.sum(-1), torch.where(groups > 0, positions, 0.0).sum(-1).long()


class OneHotMatmul(torch.autograd.Function):
    """x @ weight.T by gathering (see `onehot_linear`). Forward in the weight's dtype, exact up to
    the order of the sums; backward the dense products, in `dtype` (the autocast dtype, so that
    bf16 runs keep bf16 matmuls there)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, weight: Tensor, classes: int, dtype: torch.dtype) -> Tensor:
        value, index = selected_entries(x, classes)
        index = index + torch.arange(0, x.shape[-1], classes, device=x.device)
        out = F.embedding_bag(index, weight.t().contiguous(), mode="sum", per_sample_weights=value.to(weight.dtype))
        ctx.save_for_backward(x, weight)
        ctx.dtype = dtype
        return out.to(dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        grad = grad.to(ctx.dtype)
        grad_x = (grad @ weight.to(ctx.dtype)).to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_weight = (grad.t() @ x.to(ctx.dtype)).to(weight.dtype) if ctx.needs_input_grad[1] else None
        return grad_x, grad_weight, None, None


def _stages(resolution: int, depth: int) -> list[int]:
    """Channel widths while halving the resolution down to 4x4: depth, 2 depth, 4 depth, ..."""
    stages = []
    while resolution > 4:
        stages.append(depth * 2 ** len(stages))
        resolution //= 2
    return stages


class ImageEncoder(nn.Module):
    """Strided 4x4 convolutions from (H, W) down to 4x4, flattened."""

    def __init__(self, channels: int, resolution: int, depth: int):
        super().__init__()
        layers: list[nn.Module] = []
        for width in _stages(resolution, depth):
            layers += [nn.Conv2d(channels, width, 4, 2, 1, bias=False), ChannelNorm(width), nn.SiLU()]
            channels = width
        self.net = nn.Sequential(*layers)
        self.out_dim = channels * 16

    def forward(self, image: Tensor) -> Tensor:
        """uint8 images [N, H, W, C] -> features [N, out_dim]."""
        x = image.permute(0, 3, 1, 2).float().div_(255.0).sub_(0.5)
        x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x).flatten(1)


class ImageDecoder(nn.Module):
    """Mirror of `ImageEncoder`: features -> 4x4 map -> transposed convolutions -> image mean."""

    def __init__(self, in_dims: Sequence[Input], channels: int, resolution: int, depth: int):
        super().__init__()
        widths = _stages(resolution, depth)[::-1]
        self.top = widths[0]
        self.inputs = nn.ModuleList(nn.Linear(input_width(d), widths[0] * 16, bias=i == 0) for i, d in enumerate(in_dims))
        self.classes = input_classes(in_dims)
        layers: list[nn.Module] = []
        for width, nxt in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(width, nxt, 4, 2, 1, bias=False), ChannelNorm(nxt), nn.SiLU()]
        layers.append(nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, *xs: Tensor) -> Tensor:
        """features [N, ...] -> predicted images [N, H, W, C] in [-0.5, 0.5] units."""
        h = linear_sum(self.inputs, xs, self.classes)
        h = h.view(-1, self.top, 4, 4).contiguous(memory_format=torch.channels_last)
        return self.net(h).permute(0, 2, 3, 1)


class TwoHotSymlog:
    """A categorical over symlog-spaced bins, read out as symexp(E[bin]).

    Training with two-hot targets makes the loss invariant to the scale of rewards and returns.
    """

    def __init__(self, logits: Tensor, bins: Tensor):
        self.logits = logits.float()
        self.bins = bins

    def mean(self) -> Tensor:
        return symexp((torch.softmax(self.logits, -1) * self.bins).sum(-1))

    def log_prob(self, target: Tensor) -> Tensor:
        return (twohot(symlog(target.float()), self.bins) * torch.log_softmax(self.logits, -1)).sum(-1)


def sample_index(probs: Tensor) -> Tensor:
    """Categorical samples by inverse CDF: one uniform number per distribution. Random numbers are
    what sampling costs on a CPU (~3 ns each): an exponential race (argmax of p / Exp(1)) draws
    one per class, 32x as many for the latents, and took 8 ms per imagined step of 1,024 x 32
    categoricals against 1 ms for this (1.4 vs 6.9 ms compiled, whose cumulative sum is a
    separate aten call). A class of probability zero is never drawn (u < cdf[-1]); no error on
    NaN probabilities (the update is then skipped as non-finite, not crashed)."""
    cdf = probs.cumsum(-1)
    u = torch.rand_like(cdf[..., :1]) * cdf[..., -1:]
    return (cdf <= u).sum(-1).clamp_(max=probs.shape[-1] - 1)


def window_length(total: int, most: int | None) -> int:
    """The longest window of at most `most` steps (None: no limit) that divides `total` evenly: a
    compiled window function then sees one shape (a shorter last window would compile a second
    program)."""
    if most is None:
        return total
    return max(k for k in range(1, min(most, total) + 1) if total % k == 0)


def reward_bins(count: int, device: torch.device | None = None) -> Tensor:
    return torch.linspace(-20.0, 20.0, count, device=device)
