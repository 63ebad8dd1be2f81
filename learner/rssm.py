"""Recurrent state-space model with discrete latents (DreamerV3).

State = (deter h, stoch z): h is a GRU state, z is `stoch` one-hot categoricals of `classes`
classes, flattened. Every input projection that does not depend on the recurrence (actions,
encoder embeddings) is computed for the whole sequence before the time loop, and the prior is
computed after it in one batched call, so the loop itself is a handful of matmuls per step.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from learner.nets import MLP, Input, OneHots, onehot_linear, sample_index, window_length


class LatentCategorical:
    """`stoch` independent categoricals mixed with 1% uniform, sampled straight-through."""

    def __init__(self, logits: Tensor, unimix: float):
        probs = torch.softmax(logits.float(), -1)
        self.probs = (1.0 - unimix) * probs + unimix / logits.shape[-1]

    @property
    def log_probs(self) -> Tensor:
        return torch.log(self.probs)

    def sample(self) -> Tensor:
        """One-hot samples with straight-through gradients, flattened to [..., stoch * classes]."""
        probs = self.probs.detach()
        onehot = F.one_hot(sample_index(probs), probs.shape[-1]).to(probs.dtype)
        if self.probs.requires_grad:
            onehot = onehot + self.probs - probs
        return onehot.flatten(-2)

    def mode(self) -> Tensor:
        index = self.probs.argmax(-1)
        return F.one_hot(index, self.probs.shape[-1]).to(self.probs.dtype).flatten(-2)


def categorical_kl(p: LatentCategorical, q: LatentCategorical) -> Tensor:
    """KL(p || q) summed over the latent variables."""
    return (p.probs * (torch.log(p.probs) - torch.log(q.probs))).sum((-2, -1))


class RSSM(nn.Module):
    def __init__(self, embed_dim: int, action_dim: int, deter: int, hidden: int, stoch: int, classes: int, unimix: float):
        super().__init__()
        self.deter, self.stoch, self.classes, self.unimix = deter, stoch, classes, unimix
        # At most this many time steps per `observe_window` call (None: the whole sequence, as the
        # eager reference runs); the agent sets it when it compiles (`agent.compile_window`).
        self.window: int | None = None
        latent = stoch * classes
        # GRU input: Linear([z, a]) split into the two parts.
        self.in_stoch = nn.Linear(latent, hidden, bias=False)
        self.in_action = nn.Linear(action_dim, hidden)
        self.in_norm = nn.LayerNorm(hidden, eps=1e-3)
        # LayerNorm GRU: gates from Linear([x, h]), split into the two parts.
        self.gru_x = nn.Linear(hidden, 3 * deter, bias=False)
        self.gru_h = nn.Linear(deter, 3 * deter)
        self.gru_norm = nn.LayerNorm(3 * deter, eps=1e-3)
        self.prior_net = MLP([deter], hidden, 1, latent)
        # Posterior: MLP([h, embed]) with the embed part projected ahead of the loop.
        self.post_deter = nn.Linear(deter, hidden, bias=False)
        self.post_embed = nn.Linear(embed_dim, hidden)
        self.post_norm = nn.LayerNorm(hidden, eps=1e-3)
        self.post_out = nn.Linear(hidden, latent)

    @property
    def latent_dim(self) -> int:
        return self.stoch * self.classes

    @property
    def features(self) -> list[Input]:
        """What heads, actor and critic take: the deter state and the one-hot latent."""
        return [self.deter, OneHots(self.stoch, self.classes)]

    def initial(self, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
        return torch.zeros(batch, self.deter, device=device), torch.zeros(batch, self.latent_dim, device=device)

    def dist(self, logits: Tensor) -> LatentCategorical:
        return LatentCategorical(logits.unflatten(-1, (self.stoch, self.classes)), self.unimix)

    def recur(self, deter: Tensor, stoch: Tensor, action_proj: Tensor) -> Tensor:
        """One GRU step from the previous state and the (projected) action that followed it."""
        x = F.silu(self.in_norm(onehot_linear(stoch, self.in_stoch.weight, self.classes, action_proj.dtype) + action_proj))
        reset, cand, update = self.gru_norm(self.gru_x(x) + self.gru_h(deter)).chunk(3, -1)
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update - 1.0)
        return update * cand + (1.0 - update) * deter

    def posterior_logits(self, deter: Tensor, embed_proj: Tensor) -> Tensor:
        return self.post_out(F.silu(self.post_norm(self.post_deter(deter) + embed_proj)))

    def prior_logits(self, deter: Tensor) -> Tensor:
        return self.prior_net(deter)

    def observe(self, embed: Tensor, action: Tensor, is_first: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Filter a batch of sequences. embed [B, T, E], action [B, T, A] (the action that led to
        each observation), is_first [B, T]. Returns deter [B, T, D], stoch samples [B, T, Z] and
        posterior logits [B, T, Z]; the state is reset to zeros where is_first is set."""
        batch, length = embed.shape[:2]
        keep = (~is_first).to(embed.dtype).unsqueeze(-1)
        action_proj = self.in_action(action * keep)
        embed_proj = self.post_embed(embed)
        # The first state requires grad when training does, like every later one: otherwise a
        # compiled `observe_window` traces and compiles a second graph for its first call.
        deter, stoch = (x.requires_grad_(torch.is_grad_enabled()) for x in self.initial(batch, embed.device))
        windows, step = [], window_length(length, self.window)
        for start in range(0, length, step):
            part = slice(start, start + step)
            windows.append(self.observe_window(deter, stoch, keep[:, part], action_proj[:, part], embed_proj[:, part]))
            deter, stoch = windows[-1][0][:, -1], windows[-1][1][:, -1]
        deters, stochs, logits = (torch.cat(parts, 1) for parts in zip(*windows))
        return deters, stochs, logits

    def observe_window(self, deter: Tensor, stoch: Tensor, keep: Tensor, action_proj: Tensor, embed_proj: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`observe_step` over a window of the sequence ([B, K, ...] inputs and outputs): the unit
        the agent compiles, so that a compiled scan is T / K calls, each one program forward and
        one backward, rather than T calls whose weight gradients autograd adds up one by one."""
        deters, stochs, logits = [], [], []
        # one view per step (unbind: a single op, whose backward is one stack, not K scatters)
        for keep_t, action_t, embed_t in zip(keep.unbind(1), action_proj.unbind(1), embed_proj.unbind(1)):
            deter, stoch, post = self.observe_step(deter, stoch, keep_t, action_t, embed_t)
            deters.append(deter)
            stochs.append(stoch)
            logits.append(post)
        return torch.stack(deters, 1), torch.stack(stochs, 1), torch.stack(logits, 1)

    def observe_step(self, deter: Tensor, stoch: Tensor, keep: Tensor, action_proj: Tensor, embed_proj: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One filtering step (the policy's acting step too). Returns the new deter, a posterior sample and the posterior logits."""
        deter = self.recur(deter * keep, stoch * keep, action_proj)
        post = self.posterior_logits(deter, embed_proj)
        return deter, self.dist(post).sample(), post

    def imagine_step(self, deter: Tensor, stoch: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """Advance a state by an action without an observation (samples z from the prior)."""
        deter = self.recur(deter, stoch, self.in_action(action))
        return deter, self.dist(self.prior_logits(deter)).sample()
