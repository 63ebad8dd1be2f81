"""The agent API shared by both sides of the system.

Runners call `policy_step` (CPU, batched over their environments) and load `policy_weights`;
the learner calls `train_step` (CUDA when present) and publishes `policy_weights`. Weight sets
are plain dicts of CPU tensors stamped with a version (the number of updates that made them), so
they travel through Ray's object store and let everyone measure staleness.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from learner.behavior import ActorCritic
from learner.config import AgentConfig
from learner.spaces import ActionSpec, ObservationSpec
from learner.world_model import WorldModel

# The modules a runner needs to act; only these are broadcast.
POLICY_MODULES = ("world_model.encoder", "world_model.rssm", "actor_critic.actor")


@dataclass
class PolicyState:
    """Recurrent state per environment: model state and the last action taken (model form)."""

    deter: Tensor
    stoch: Tensor
    action: Tensor


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"agent.device is {name!r} but no CUDA GPU is visible here: set agent.device=auto or cpu")
    return device


class Agent:
    def __init__(self, obs_spec: ObservationSpec, act_spec: ActionSpec, config: AgentConfig, device: str | None = None):
        self.config = config
        self.obs_spec, self.act_spec = obs_spec, act_spec
        self.device = resolve_device(device or config.device)
        precision = config.precision if config.precision != "auto" else ("bf16" if self.device.type == "cuda" else "fp32")
        if precision not in ("bf16", "fp32"):
            raise ValueError(f"agent.precision must be auto, bf16 or fp32, not {config.precision!r}")
        self.bf16 = precision == "bf16"
        self.world_model = WorldModel(obs_spec, act_spec, config).to(self.device)
        feat = [self.world_model.rssm.deter, self.world_model.rssm.latent_dim]
        self.actor_critic = ActorCritic(feat, act_spec, config).to(self.device)
        wm, bh = config.world_model, config.behavior
        # fused: one kernel per step, and it can skip a non-finite step without a host sync
        fused = {"fused": True}
        self.wm_opt = torch.optim.Adam(self.world_model.parameters(), lr=wm.lr, eps=wm.eps, **fused)
        self.ac_opt = torch.optim.Adam(
            [
                {"params": self.actor_critic.actor.parameters(), "lr": bh.actor_lr},
                {"params": self.actor_critic.critic.parameters(), "lr": bh.critic_lr},
            ],
            eps=bh.eps,
            **fused,
        )
        self._ac_params = [p for g in self.ac_opt.param_groups for p in g["params"]]
        self.updates = 0
        if config.compile:
            self._compile()

    # ----------------------------------------------------------------- acting
    def initial_state(self, batch: int) -> PolicyState:
        deter, stoch = self.world_model.rssm.initial(batch, self.device)
        return PolicyState(deter, stoch, torch.zeros(batch, self.act_spec.model_dim, device=self.device))

    @torch.no_grad()
    def policy_step(
        self, obs: dict[str, np.ndarray], state: PolicyState | None, is_first: np.ndarray, greedy: bool = False
    ) -> tuple[np.ndarray, PolicyState]:
        """Observations of N environments -> their next actions (environment form) and states.

        `is_first[i]` resets environment i's state (a new episode began with this observation).
        """
        rssm = self.world_model.rssm
        state = state or self.initial_state(len(is_first))
        obs_t = {k: torch.as_tensor(obs[k], device=self.device) for k in self.obs_spec.shapes}
        keep = torch.as_tensor(~np.asarray(is_first, bool), device=self.device).float().unsqueeze(-1)
        with self._autocast(acting=True):
            embed = self.world_model.encoder(obs_t)
            deter = rssm.recur(state.deter * keep, state.stoch * keep, rssm.in_action(state.action * keep))
            stoch = rssm.dist(rssm.posterior_logits(deter, rssm.post_embed(embed))).sample()
            dist = self.actor_critic.policy(deter, stoch)
        action = dist.mode() if greedy else dist.sample()
        return dist.to_env(action).cpu().numpy(), PolicyState(deter.float(), stoch.float(), action)

    # --------------------------------------------------------------- learning
    def train_step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """One world-model and one actor-critic update on a batch of sequences [B, T, ...].

        Returns metrics as device tensors: nothing here waits for the device, so the caller
        decides when to pay for a sync (`metrics_to_floats`).
        """
        data = self._to_device(batch)
        with self._autocast():
            wm_loss, metrics, posterior = self.world_model.loss(data)
        self.wm_opt.zero_grad(set_to_none=True)
        wm_loss.backward()
        wm_norm = torch.nn.utils.clip_grad_norm_(self.world_model.parameters(), self.config.world_model.grad_clip)
        metrics["world_model/grad_norm"] = wm_norm
        wm_bad = self._skip_if_nonfinite(self.wm_opt, wm_norm)
        self.wm_opt.step()

        with self._autocast():
            ac_loss, ac_metrics = self.actor_critic.loss(self.world_model, posterior, data)
        self.ac_opt.zero_grad(set_to_none=True)
        ac_loss.backward(inputs=self._ac_params)
        clip = self.config.behavior.grad_clip
        actor_norm = torch.nn.utils.clip_grad_norm_(self.actor_critic.actor.parameters(), clip)
        critic_norm = torch.nn.utils.clip_grad_norm_(self.actor_critic.critic.parameters(), clip)
        metrics["actor/grad_norm"], metrics["critic/grad_norm"] = actor_norm, critic_norm
        ac_bad = self._skip_if_nonfinite(self.ac_opt, actor_norm + critic_norm)
        self.ac_opt.step()
        self.actor_critic.update_slow_critic()
        self.updates += 1
        metrics.update(ac_metrics)
        metrics["train/nonfinite"] = torch.maximum(wm_bad, ac_bad)
        return metrics

    @staticmethod
    def _skip_if_nonfinite(optimizer: torch.optim.Optimizer, grad_norm: Tensor) -> Tensor:
        """Make the fused optimizer skip its next step when the gradient is NaN/inf, on the device
        and without a host sync (the mechanism AMP's grad scaler uses). Returns the skip flag."""
        found_inf = (~torch.isfinite(grad_norm)).float()
        optimizer.found_inf = found_inf
        return found_inf

    # ---------------------------------------------------------------- weights
    def policy_weights(self) -> dict[str, Any]:
        """What runners need to act: {"version": updates, "state": {name: CPU tensor}}."""
        state = {k: v.detach().to("cpu", copy=True) for k, v in self._modules_state().items() if k.startswith(POLICY_MODULES)}
        return {"version": self.updates, "state": state}

    def load_policy_weights(self, weights: dict[str, Any]) -> None:
        modules = self._modules_state()
        with torch.no_grad():
            for name, value in weights["state"].items():
                modules[name].copy_(value)
        self.updates = int(weights["version"])

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training: models, optimisers, harmonizers, counters."""
        return {
            "world_model": self.world_model.state_dict(),
            "actor_critic": self.actor_critic.state_dict(),
            "wm_opt": self.wm_opt.state_dict(),
            "ac_opt": self.ac_opt.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.world_model.load_state_dict(state["world_model"])
        self.actor_critic.load_state_dict(state["actor_critic"])
        self.wm_opt.load_state_dict(state["wm_opt"])
        self.ac_opt.load_state_dict(state["ac_opt"])
        self.updates = int(state["updates"])

    def num_params(self) -> int:
        return sum(p.numel() for m in (self.world_model, self.actor_critic.actor, self.actor_critic.critic) for p in m.parameters())

    # ---------------------------------------------------------------- helpers
    def _modules_state(self) -> dict[str, Tensor]:
        return {
            **{f"world_model.{k}": v for k, v in self.world_model.state_dict(keep_vars=True).items()},
            **{f"actor_critic.{k}": v for k, v in self.actor_critic.state_dict(keep_vars=True).items()},
        }

    def _autocast(self, acting: bool = False) -> contextlib.AbstractContextManager:
        """bf16 autocast when configured; on a CPU only for training: at acting batch sizes (a
        runner's few envs) the casts cost more than they save, and acting took twice as long."""
        if not self.bf16 or (acting and self.device.type == "cpu"):
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        keys = (*self.obs_spec.shapes, "action", "reward", "is_first", "is_last", "is_terminal")
        data = {k: torch.as_tensor(np.asarray(batch[k]) if not isinstance(batch[k], Tensor) else batch[k]) for k in keys}
        data = {k: v.to(self.device, non_blocking=True) for k, v in data.items()}
        data["action"] = self.act_spec.to_model(data["action"])
        data["reward"] = data["reward"].float()
        data["is_first"] = data["is_first"].bool()
        data["is_last"] = data["is_last"].bool()
        data["is_terminal"] = data["is_terminal"].bool()
        return data

    def _compile(self) -> None:
        """Compile the per-step and per-batch networks; the Python time loops stay eager."""
        wm, ac = self.world_model, self.actor_critic
        for module in (wm.encoder, wm.decoder, wm.reward_head, wm.continue_head, ac.actor, ac.critic, wm.rssm.prior_net):
            module.compile()
        wm.rssm.recur = torch.compile(wm.rssm.recur)


def metrics_to_floats(metrics: dict[str, Tensor]) -> dict[str, float]:
    """One host sync for a whole dict of metrics (stack, then copy once)."""
    if not metrics:
        return {}
    values = torch.stack([v.detach().float().reshape(()) for v in metrics.values()]).cpu().tolist()
    return dict(zip(metrics.keys(), values))
