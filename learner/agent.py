"""The training agent: world model, actor-critic and their optimisers.

The learner calls `train_step` (CUDA when present) and publishes `policy_weights`; runners act
with a `PolicyAgent` (learner/policy_agent.py), which loads them. This agent acts through a
`PolicyAgent` over its own encoder, RSSM and actor, so what it publishes is exactly that agent's
state: plain dicts of NumPy arrays stamped with a version (the number of updates that made them),
which Ray's object store passes on without a copy, the version letting everyone measure staleness.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from learner.behavior import ActorCritic
from learner.compiler import compile_fn, compile_options, use_cache_dir
from learner.config import AgentConfig
from learner.distributed import data_parallel
from learner.policy_agent import PolicyAgent, PolicyNets, PolicyState, model_observations, new_cuda_graph_step, resolve_device
from learner.spaces import ActionSpec, ObservationSpec
from learner.world_model import WorldModel


class Agent:
    def __init__(self, obs_spec: ObservationSpec, act_spec: ActionSpec, config: AgentConfig, device: str | None = None):
        self.config = config
        self.obs_spec, self.act_spec = obs_spec, act_spec
        self.device = resolve_device(device or config.device)
        self.world_model = WorldModel(obs_spec, act_spec, config).to(self.device)
        feat = self.world_model.rssm.features
        self.actor_critic = ActorCritic(feat, act_spec, config).to(self.device)
        # Acting, on these very modules: one code path, and what `policy_weights` publishes is
        # this view's state. Precision and compile plan are decided once, there.
        nets = PolicyNets(self.world_model.encoder, self.world_model.rssm, self.actor_critic.actor)
        self.policy = PolicyAgent(obs_spec, act_spec, config, self.device, nets)
        self.precision, self.compile_plan = self.policy.precision, self.policy.compile_plan
        self.bf16 = self.precision.bf16
        wm, bh = config.world_model, config.behavior
        # fused: one kernel per step, and it can skip a non-finite step without a host sync
        fused = {"fused": True}
        self.wm_opt = torch.optim.Adam(self._world_model_groups(), lr=wm.lr, eps=wm.eps, **fused)
        self.ac_opt = torch.optim.Adam(
            [
                {"params": self.actor_critic.actor.parameters(), "lr": bh.actor_lr},
                {"params": self.actor_critic.critic.parameters(), "lr": bh.critic_lr},
            ],
            eps=bh.eps,
            **fused,
        )
        self._ac_params = [p for g in self.ac_opt.param_groups for p in g["params"]]
        # The losses the update differentiates: the modules' own methods, or their data-parallel
        # wrappers once `distribute` made this agent one rank of a learner group.
        self._world_model_loss: Callable[..., Any] = self.world_model.loss_and_priority
        self._actor_critic_loss: Callable[..., Any] = self.actor_critic.loss
        # The last trained batch's per-sequence replay priorities [B] (float32, on the device; see
        # WorldModel.losses): reading them is a host sync, left to whoever sends them to the replay.
        self.last_priorities: Tensor | None = None
        # Skipped (non-finite) updates, counted on the device so that no update waits for the
        # host: the total, the current run of consecutive skips and the longest run since
        # `read_nonfinite` last looked.
        self._nonfinite = torch.zeros(3, device=self.device)
        # The hot training functions, eager (the reference) or compiled: same code, same results.
        self.compile_seconds: float | None = None  # the first update's time, compiling included
        self._clip_gradients: Callable[[list[Tensor], float], Tensor] = torch.nn.utils.clip_grad_norm_
        if self.compile_plan.on:
            use_cache_dir(config.compile_cache)
            self._compile_training()

    @property
    def updates(self) -> int:
        """Updates made (or the version of the policy weights loaded): one counter with the policy's,
        so published weights carry it."""
        return self.policy.updates

    @updates.setter
    def updates(self, value: int) -> None:
        self.policy.updates = value

    # ----------------------------------------------------------------- acting
    def initial_state(self, batch: int) -> PolicyState:
        return self.policy.initial_state(batch)

    def policy_step(
        self, obs: dict[str, np.ndarray], state: PolicyState | None, is_first: np.ndarray, greedy: bool = False
    ) -> tuple[np.ndarray, PolicyState]:
        """`PolicyAgent.policy_step` with this agent's current weights."""
        return self.policy.policy_step(obs, state, is_first, greedy)

    # --------------------------------------------------------------- learning
    def train_step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """One world-model and one actor-critic update on a batch of sequences [B, T, ...].

        Returns metrics as device tensors: nothing here waits for the device, so the caller
        decides when to pay for a sync (`metrics_to_floats`, `read_nonfinite`). The batch's
        per-sequence replay priorities are left, also on the device, in `last_priorities`.
        """
        started = time.perf_counter()
        new_cuda_graph_step(self.compile_plan.on, self.device)
        data = self._to_device(batch)
        with self._autocast():
            wm_loss, metrics, posterior, priorities = self._world_model_loss(data)
        # a copy: compiled programs (CUDA graphs) reuse their output memory at the next update
        self.last_priorities = priorities.detach().to(torch.float32, copy=True)
        self.wm_opt.zero_grad(set_to_none=True)
        wm_loss.backward()
        wm_norm = self._clip_gradients(list(self.world_model.parameters()), self.config.world_model.grad_clip)
        wm_bad = self._skip_if_nonfinite(self.wm_opt, wm_norm)
        self.wm_opt.step()

        with self._autocast():
            ac_loss, ac_metrics = self._actor_critic_loss(self.world_model, posterior, data)
        self.ac_opt.zero_grad(set_to_none=True)
        ac_loss.backward(inputs=self._ac_params)
        clip = self.config.behavior.grad_clip
        actor_norm = self._clip_gradients(list(self.actor_critic.actor.parameters()), clip)
        critic_norm = self._clip_gradients(list(self.actor_critic.critic.parameters()), clip)
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
        if self.compile_plan.on and self.compile_seconds is None:
            self.compile_seconds = time.perf_counter() - started
        # One copy of all metrics: compiled programs (CUDA graphs) reuse their output memory.
        with torch.no_grad():
            return dict(zip(metrics, torch.stack([float_scalar(v) for v in metrics.values()]).unbind()))

    def distribute(self) -> None:
        """Train as one rank of the process group this process joined (learner/distributed.py):
        rank 0's weights are copied to every rank now, and from here on every update's gradients
        are averaged over the group before the (identical) optimizer steps. The return
        normalizer's statistics follow rank 0's at every update; nothing else has state that
        could drift apart."""
        self._world_model_loss = data_parallel(self.world_model, "loss_and_priority", sync_buffers=False)
        self._actor_critic_loss = data_parallel(self.actor_critic, "loss", sync_buffers=True)

    def read_nonfinite(self) -> tuple[int, int, int]:
        """(skipped updates in all, consecutive skips now, longest run of consecutive skips since
        the last read): one host sync, exact however rarely it is called."""
        total, streak, longest = (int(v) for v in self._nonfinite.tolist())
        self._nonfinite[2] = self._nonfinite[1]
        return total, streak, longest

    def _compile_training(self) -> None:
        """Compile every unit the update repeats or is made of, each with its backward: the
        encoder, the observe scan and the imagination in windows of `agent.compile_window` steps
        at most (autograd then sums a weight's gradient once per window, not once per step), the
        world-model losses, the actor-critic losses, gradient clipping. The loops over windows
        stay in Python: unrolled into one graph, Inductor took minutes to compile a 32-step scan
        on a CPU, growing with the sequence length."""
        wm, ac = self.world_model, self.actor_critic
        wm.encoder.compile(**compile_options(self.device))
        wm.rssm.window = self.config.compile_window
        wm.rssm.observe_window = compile_fn(wm.rssm.observe_window, self.device)
        wm.losses = compile_fn(wm.losses, self.device)
        ac.window = self.config.compile_window
        ac.imagine_window = compile_fn(ac.imagine_window, self.device)
        ac.trajectory_loss = compile_fn(ac.trajectory_loss, self.device)
        # eager, clipping dispatches a few operators per parameter (CPUs have no fused foreach kernels)
        self._clip_gradients = compile_fn(torch.nn.utils.clip_grad_norm_, self.device)

    @staticmethod
    def _skip_if_nonfinite(optimizer: torch.optim.Optimizer, grad_norm: Tensor) -> Tensor:
        """Make the fused optimizer skip its next step when the gradient is NaN/inf, on the device
        and without a host sync (the mechanism AMP's grad scaler uses). Returns the skip flag."""
        found_inf = (~torch.isfinite(grad_norm)).float()
        optimizer.found_inf = found_inf
        return found_inf

    # ---------------------------------------------------------------- weights
    def policy_weights(self) -> dict[str, Any]:
        """What runners need to act: the state of this agent's policy view, which is exactly what
        a `PolicyAgent` loads ({"version": updates, "state": {name: CPU tensor}})."""
        return self.policy.policy_weights()

    def load_policy_weights(self, weights: dict[str, Any]) -> None:
        self.policy.load_policy_weights(weights)

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
        self.wm_opt.load_state_dict(self._with_sigma_group(state["wm_opt"]))
        self.ac_opt.load_state_dict(state["ac_opt"])
        self._configured_learning_rates()  # the saved ones are those of the run's old config
        self.updates = int(state["updates"])

    def _world_model_groups(self) -> list[dict[str, Any]]:
        """The world model's parameters, then the harmonizer's sigmas as a group of their own
        (`agent.harmony.lr`). The harmonizer is the world model's last module, so the parameters
        keep the order they have in one group (checkpoints from before the split still load)."""
        sigmas = list(self.world_model.harmonizer.parameters())
        ids = {id(p) for p in sigmas}
        rest = [p for p in self.world_model.parameters() if id(p) not in ids]
        sigma_lr = self.config.harmony.sigma_lr(self.config.world_model.lr)
        return [{"params": rest}] + ([{"params": sigmas, "lr": sigma_lr}] if sigmas else [])

    def _with_sigma_group(self, saved: dict[str, Any]) -> dict[str, Any]:
        """A world-model optimiser state saved with one group (before the sigmas had their own)
        in this optimiser's layout: the same parameter ids, the sigmas' (the last ones) split off."""
        groups = self.wm_opt.param_groups
        if len(saved["param_groups"]) != 1 or len(groups) != 2:
            return saved
        (group,) = saved["param_groups"]
        split = len(group["params"]) - len(groups[1]["params"])
        return {**saved, "param_groups": [{**group, "params": group["params"][:split]}, {**group, "params": group["params"][split:]}]}

    def _configured_learning_rates(self) -> None:
        """Learning rates as this agent's config says: a resumed run may change them (an
        override, or another number of learners scaling them)."""
        wm, bh = self.config.world_model, self.config.behavior
        for group, lr in zip(self.wm_opt.param_groups, (wm.lr, self.config.harmony.sigma_lr(wm.lr))):
            group["lr"] = lr
        actor, critic = self.ac_opt.param_groups
        actor["lr"], critic["lr"] = bh.actor_lr, bh.critic_lr

    def num_params(self) -> int:
        return sum(p.numel() for m in (self.world_model, self.actor_critic.actor, self.actor_critic.critic) for p in m.parameters())

    # ---------------------------------------------------------------- helpers
    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for training when configured (acting follows `PolicyAgent`'s rule)."""
        if not self.bf16:
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
        obs = model_observations({k: self._host_tensor(batch[k]) for k in self.obs_spec.shapes}, self.obs_spec, self.device)
        return {**obs, **data}

    def _host_tensor(self, value: Any) -> Tensor:
        tensor = value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
        # page-locked memory lets the copy to the GPU run without blocking the host
        return tensor.pin_memory() if self.device.type == "cuda" and tensor.device.type == "cpu" else tensor


def metrics_to_floats(metrics: dict[str, Tensor]) -> dict[str, float]:
    """One host sync for a whole dict of metrics (stack, then copy once)."""
    if not metrics:
        return {}
    with torch.no_grad():
        values = torch.stack([float_scalar(v) for v in metrics.values()]).tolist()
    return dict(zip(metrics.keys(), values))


def float_scalar(value: Tensor) -> Tensor:
    """`value` as a 0-d float32 tensor; most metrics are one already, and then nothing is
    dispatched (a few no-op operators per metric add up to hundreds per update)."""
    return value if value.dim() == 0 and value.dtype == torch.float32 else value.reshape(()).float()
