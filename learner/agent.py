"""The agent API shared by both sides of the system.

Runners call `policy_step` (CPU, batched over their environments) and load `policy_weights`;
the learner calls `train_step` (CUDA when present) and publishes `policy_weights`. Weight sets
are plain dicts of CPU tensors stamped with a version (the number of updates that made them), so
they travel through Ray's object store and let everyone measure staleness.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from learner.behavior import ActorCritic
from learner.compiler import compile_fn, compile_options, plan_compile, use_cache_dir
from learner.config import AgentConfig
from learner.precision import choose_precision
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
        self.precision = choose_precision(config.precision, self.device, config.model.resolved()["deter"])
        self.bf16 = self.precision.bf16
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
        # The last trained batch's per-sequence replay priorities [B] (float32, on the device; see
        # WorldModel.losses): reading them is a host sync, left to whoever sends them to the replay.
        self.last_priorities: Tensor | None = None
        # Skipped (non-finite) updates, counted on the device so that no update waits for the
        # host: the total, the current run of consecutive skips and the longest run since
        # `read_nonfinite` last looked.
        self._nonfinite = torch.zeros(3, device=self.device)
        # The hot functions, eager (the reference) or compiled: same code, same results.
        self.compile_plan = plan_compile(config.compile, self.device, self.world_model.rssm.deter, bool(obs_spec.image_keys))
        self.compile_seconds: float | None = None  # the first update's time, compiling included
        self._act: Any = self._eager_act
        if self.compile_plan.train or self.compile_plan.act:
            use_cache_dir(config.compile_cache)
        if self.compile_plan.train:
            self._compile_training()
        if self.compile_plan.act:
            self._act = compile_fn(self._eager_act, self.device)

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
        state = state or self.initial_state(len(is_first))
        obs_t = self._observations({k: torch.as_tensor(obs[k]) for k in self.obs_spec.shapes})
        keep = torch.as_tensor(~np.asarray(is_first, bool), device=self.device).float().unsqueeze(-1)
        self._new_cuda_graph_step(self.compile_plan.act)
        env_action, deter, stoch, action = self._act(obs_t, state.deter, state.stoch, state.action, keep, greedy)
        if self.compile_plan.act and self.device.type == "cuda":  # CUDA graphs reuse their outputs' memory
            deter, stoch, action = deter.clone(), stoch.clone(), action.clone()
        return env_action.cpu().numpy(), PolicyState(deter, stoch, action)

    def _eager_act(self, obs: dict[str, Tensor], deter: Tensor, stoch: Tensor, action: Tensor, keep: Tensor, greedy: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        rssm = self.world_model.rssm
        with self._autocast(acting=True):
            embed = self.world_model.encoder(obs)
            deter = rssm.recur(deter * keep, stoch * keep, rssm.in_action(action * keep))
            stoch = rssm.dist(rssm.posterior_logits(deter, rssm.post_embed(embed))).sample()
            dist = self.actor_critic.policy(deter, stoch)
        action = dist.mode() if greedy else dist.sample()
        return dist.to_env(action), deter.float(), stoch.float(), action

    # --------------------------------------------------------------- learning
    def train_step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """One world-model and one actor-critic update on a batch of sequences [B, T, ...].

        Returns metrics as device tensors: nothing here waits for the device, so the caller
        decides when to pay for a sync (`metrics_to_floats`, `read_nonfinite`). The batch's
        per-sequence replay priorities are left, also on the device, in `last_priorities`.
        """
        started = time.perf_counter()
        self._new_cuda_graph_step(self.compile_plan.train)
        data = self._to_device(batch)
        with self._autocast():
            wm_loss, metrics, posterior, priorities = self.world_model.loss_and_priority(data)
        # a copy: compiled programs (CUDA graphs) reuse their output memory at the next update
        self.last_priorities = priorities.detach().to(torch.float32, copy=True)
        self.wm_opt.zero_grad(set_to_none=True)
        wm_loss.backward()
        wm_norm = torch.nn.utils.clip_grad_norm_(self.world_model.parameters(), self.config.world_model.grad_clip)
        wm_bad = self._skip_if_nonfinite(self.wm_opt, wm_norm)
        self.wm_opt.step()

        with self._autocast():
            ac_loss, ac_metrics = self.actor_critic.loss(self.world_model, posterior, data)
        self.ac_opt.zero_grad(set_to_none=True)
        ac_loss.backward(inputs=self._ac_params)
        clip = self.config.behavior.grad_clip
        actor_norm = torch.nn.utils.clip_grad_norm_(self.actor_critic.actor.parameters(), clip)
        critic_norm = torch.nn.utils.clip_grad_norm_(self.actor_critic.critic.parameters(), clip)
        ac_bad = self._skip_if_nonfinite(self.ac_opt, actor_norm + critic_norm)
        self.ac_opt.step()
        self.actor_critic.update_slow_critic()
        self.updates += 1
        bad = torch.maximum(wm_bad, ac_bad)
        total, streak, longest = self._nonfinite.unbind()
        streak = (streak + 1.0) * bad
        self._nonfinite = torch.stack([total + bad, streak, torch.maximum(longest, streak)])
        metrics = {
            **metrics, **ac_metrics, "world_model/grad_norm": wm_norm, "actor/grad_norm": actor_norm,
            "critic/grad_norm": critic_norm, "train/nonfinite": bad,
        }
        if self.compile_plan.train and self.compile_seconds is None:
            self.compile_seconds = time.perf_counter() - started
        # One copy of all metrics: compiled programs (CUDA graphs) reuse their output memory.
        return dict(zip(metrics, torch.stack([v.reshape(()).float() for v in metrics.values()]).unbind()))

    def read_nonfinite(self) -> tuple[int, int, int]:
        """(skipped updates in all, consecutive skips now, longest run of consecutive skips since
        the last read): one host sync, exact however rarely it is called."""
        total, streak, longest = (int(v) for v in self._nonfinite.tolist())
        self._nonfinite[2] = self._nonfinite[1]
        return total, streak, longest

    def _compile_training(self) -> None:
        """Compile every unit the update repeats or is made of, each with its backward: the
        encoder, one observe step (the scan calls it T times), the world-model losses, one
        imagined step (H times), the actor-critic losses. The loops stay in Python over compiled
        steps: unrolled into one graph, Inductor took minutes to compile a 32-step scan on a CPU,
        growing with the sequence length."""
        wm, ac = self.world_model, self.actor_critic
        wm.encoder.compile(**compile_options(self.device))
        wm.rssm.observe_step = compile_fn(wm.rssm.observe_step, self.device)
        wm.losses = compile_fn(wm.losses, self.device)
        ac.imagine_step = compile_fn(ac.imagine_step, self.device)
        ac.trajectory_loss = compile_fn(ac.trajectory_loss, self.device)

    def _new_cuda_graph_step(self, compiled: bool) -> None:
        """Tell CUDA graph trees that a new step begins: outputs of the last one may be reused."""
        if compiled and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()

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
        """A replayed batch as the train step takes it: fixed dtypes (a compiled step would
        otherwise compile again for float64 observations), model-form actions."""
        data = {k: self._host_tensor(batch[k]) for k in ("action", "reward", "is_first", "is_last", "is_terminal")}
        data = {k: v.to(self.device, non_blocking=True) for k, v in data.items()}
        data["action"] = self.act_spec.to_model(data["action"])
        data["reward"] = data["reward"].float()
        for key in ("is_first", "is_last", "is_terminal"):
            data[key] = data[key].bool()
        return {**self._observations({k: self._host_tensor(batch[k]) for k in self.obs_spec.shapes}), **data}

    def _host_tensor(self, value: Any) -> Tensor:
        tensor = value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
        # page-locked memory lets the copy to the GPU run without blocking the host
        return tensor.pin_memory() if self.device.type == "cuda" and tensor.device.type == "cpu" else tensor

    def _observations(self, obs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Images stay uint8 (4x fewer bytes to move), vectors become float32."""
        images = set(self.obs_spec.image_keys)
        return {
            k: v.to(self.device, non_blocking=True) if k in images else v.to(self.device, torch.float32, non_blocking=True)
            for k, v in obs.items()
        }


def metrics_to_floats(metrics: dict[str, Tensor]) -> dict[str, float]:
    """One host sync for a whole dict of metrics (stack, then copy once)."""
    if not metrics:
        return {}
    values = torch.stack([v.detach().float().reshape(()) for v in metrics.values()]).cpu().tolist()
    return dict(zip(metrics.keys(), values))
