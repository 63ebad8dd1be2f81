"""Numeric transforms shared by the world model and the actor-critic (DreamerV3's conventions)."""
from __future__ import annotations

import torch
from torch import Tensor


def symlog(x: Tensor) -> Tensor:
    """Compress large magnitudes so that one network handles rewards and inputs of any scale."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: Tensor) -> Tensor:
    """Inverse of `symlog`."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def twohot(x: Tensor, bins: Tensor) -> Tensor:
    """Encode scalars as weights on their two neighbouring bins, so that the expected bin equals x.

    Values outside the bin range are put entirely on the nearest edge bin.
    """
    x = x.clamp(bins[0], bins[-1])
    upper = torch.searchsorted(bins, x.contiguous(), right=True).clamp(1, len(bins) - 1)
    lower = upper - 1
    width = bins[upper] - bins[lower]
    w_upper = (x - bins[lower]) / width
    w_lower = 1.0 - w_upper
    out = torch.zeros(*x.shape, len(bins), device=x.device, dtype=x.dtype)
    out.scatter_(-1, lower.unsqueeze(-1), w_lower.unsqueeze(-1))
    out.scatter_add_(-1, upper.unsqueeze(-1), w_upper.unsqueeze(-1))
    return out


def lambda_returns(
    reward: Tensor, cont: Tensor, value: Tensor, discount: float, lam: float | Tensor
) -> Tensor:
    """TD(lambda) returns over a trajectory, imagined or replayed.

    `reward[t]` and `cont[t]` belong to the transition into state t+1; `value` has one more step
    than `reward` (the bootstrap). Returns one value per transition: R_t = r_t + gamma c_t
    ((1 - lam_t) v_{t+1} + lam_t R_{t+1}) with R_H = v_H. `lam` may vary per step: lam_t = 0
    cuts the return at t+1 (an episode boundary in replay) and bootstraps there.
    """
    horizon = reward.shape[0]
    disc = discount * cont
    lam = torch.broadcast_to(torch.as_tensor(lam, dtype=reward.dtype, device=reward.device), reward.shape)
    interm = reward + disc * (1.0 - lam) * value[1:]
    returns = [value[-1]]
    for t in reversed(range(horizon)):
        returns.append(interm[t] + disc[t] * lam[t] * returns[-1])
    return torch.stack(returns[1:][::-1])


def replay_returns(reward: Tensor, is_last: Tensor, is_terminal: Tensor, boot: Tensor, discount: float, lam: float) -> Tensor:
    """Lambda returns along replayed sequences [B, T]: real rewards and terminations, with `boot`
    (the imagined return from each replayed state) as the bootstrap. DreamerV3 trains the critic
    on these too, so its values stay anchored to what really happened. Returns [B, T-1]; the
    entries at is_last steps cross into the next episode and must get zero weight."""
    cont = 1.0 - is_terminal[:, 1:].T.float()  # time-major from here on
    lam_t = lam * (1.0 - is_last[:, 1:].T.float())  # a return never runs past the end of an episode
    return lambda_returns(reward[:, 1:].T.float(), cont, boot.T.float(), discount, lam_t).T


class ReturnNormalizer(torch.nn.Module):
    """Scale advantages by an EMA of the 5th-95th percentile range of returns, never below 1.

    Dividing by max(1, S) shrinks large returns but never amplifies small ones, which keeps the
    entropy regulariser meaningful under sparse rewards (DreamerV3, section 3). Both EMAs start
    at zero, as in the reference, so the scale grows from 1 as returns are observed.
    """

    def __init__(self, decay: float = 0.99, low: float = 0.05, high: float = 0.95):
        super().__init__()
        self.decay, self.low, self.high = decay, low, high
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))

    @torch.no_grad()
    def update(self, returns: Tensor) -> None:
        flat = returns.detach().float().flatten()
        q = torch.quantile(flat, torch.tensor([self.low, self.high], device=flat.device))
        q = torch.where(torch.isfinite(q), q, torch.stack([self.lo, self.hi]))  # a NaN batch changes nothing
        self.lo.lerp_(q[0], 1.0 - self.decay)
        self.hi.lerp_(q[1], 1.0 - self.decay)

    def scale(self) -> Tensor:
        return torch.clamp(self.hi - self.lo, min=1.0)
