"""HarmonyDream loss harmonizers (Ma et al., ICML 2024).

A world model learns several tasks at once (observation, reward, dynamics). Their losses differ by
orders of magnitude (an image loss sums over 12,288 pixels), so fixed weights let the largest one
dominate. The harmonizer gives each task i a learnable scale sigma_i = exp(s_i) and minimises

    rectified:    L_i / sigma_i + log(1 + sigma_i)
    unrectified:  L_i / sigma_i + log(sigma_i)

so that sigma_i tracks the loss itself: for a fixed L the rectified optimum is
sigma = (L + sqrt(L^2 + 4L)) / 2 and each weighted loss settles below 1. The ablations `naive`
(L_i / stop_grad(L_i)), `fixed` (configured weights) and `off` (the caller's default weights,
DreamerV3's scales) share the same interface.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

MODES = ("rectified", "unrectified", "naive", "fixed", "off")


def rectified_equilibrium(loss: float) -> float:
    """The sigma that minimises L/sigma + log(1+sigma) for a constant loss L."""
    return (loss + (loss * loss + 4.0 * loss) ** 0.5) / 2.0


class Harmonizer(nn.Module):
    """Combines named task losses into one objective.

    `harmonized` names the tasks that get a learnable sigma (all tasks by default); the others
    keep the constant weight given in `weights` (default 1). In the `fixed` and `off` modes every
    task uses `weights`.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        mode: str = "rectified",
        weights: Mapping[str, float] | None = None,
        harmonized: Sequence[str] | None = None,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown harmonizer mode {mode!r}; choose one of {', '.join(MODES)}")
        weights = dict(weights or {})
        unknown = (set(weights) | set(harmonized or ())) - set(tasks)
        if unknown:
            raise ValueError(f"harmonizer weights name unknown tasks {sorted(unknown)}; tasks are {list(tasks)}")
        self.mode = mode
        self.tasks = tuple(tasks)
        self.weights = {task: float(weights.get(task, 1.0)) for task in self.tasks}
        learnable = mode in ("rectified", "unrectified", "naive")
        self.harmonized = tuple(harmonized if harmonized is not None else self.tasks) if learnable else ()
        # log sigma, one scalar per harmonized task; the naive mode has no parameters to learn.
        self.log_sigma = nn.ParameterDict(
            {task: nn.Parameter(torch.zeros(())) for task in self.harmonized}
            if mode in ("rectified", "unrectified")
            else {}
        )

    def forward(self, losses: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns the total objective and, per task, the raw loss, its weight and its share."""
        missing = set(self.tasks) - set(losses)
        if missing or len(losses) != len(self.tasks):
            raise ValueError(f"harmonizer expects losses for {list(self.tasks)}, got {list(losses)}")
        total = torch.zeros((), device=next(iter(losses.values())).device)
        metrics: dict[str, Tensor] = {}
        for task in self.tasks:
            loss = losses[task]
            if task in self.harmonized:
                weighted, regulariser, sigma = self._harmonize(task, loss)
                total = total + weighted + regulariser
                metrics[f"harmony/{task}/sigma"] = sigma.detach()
            else:
                weighted = self.weights[task] * loss
                total = total + weighted
            metrics[f"harmony/{task}/loss"] = loss.detach()
            metrics[f"harmony/{task}/weighted"] = weighted.detach()
        return total, metrics

    def _harmonize(self, task: str, loss: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.mode == "naive":
            scale = loss.detach()
            return loss / scale, torch.zeros_like(loss), scale
        log_sigma = self.log_sigma[task]
        sigma = torch.exp(log_sigma)
        weighted = loss * torch.exp(-log_sigma)
        regulariser = torch.log1p(sigma) if self.mode == "rectified" else log_sigma
        return weighted, regulariser, sigma

    def sigmas(self) -> dict[str, float]:
        """Current sigma per learnable task (a host sync: for logging and tests only)."""
        return {task: float(torch.exp(p.detach())) for task, p in self.log_sigma.items()}
