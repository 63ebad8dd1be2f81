"""The policy alone: what runners and the evaluator need to act, and nothing else.

A runner only ever runs the encoder, the RSSM's filtering step and the actor. Building the whole
training agent to act also allocated the decoder, the reward and continue heads, the critic and its
slow copy (and brought two optimisers along) in every runner: `python -m bench.broadcast` measures
the difference. The training `Agent` holds a `PolicyAgent` over its own modules and acts through
it, so there is one acting code path, and its published weights are by construction the state this
class loads: `{"version": updates, "state": {name: NumPy array}}`, the version letting everyone
measure staleness. NumPy, not torch tensors: Ray's object store writes arrays as raw buffers and
hands them to readers without a copy, while a tensor goes through torch's pickler, one
`torch.load` per tensor. Measured on 2 cores: a put of the test-sized policy 13.9 -> 1.7 ms and
a get 3.9 -> 0.2 ms, S's 88 -> 9.5 ms and 33 -> 1.7 ms; before, runners of the tests' tiny runs
spent half of their CPU unpickling weights.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from learner.behavior import Actor
from learner.compiler import compile_fn, plan_compile, use_cache_dir
from learner.config import AgentConfig
from learner.precision import choose_precision
from learner.rssm import RSSM
from learner.spaces import ActionSpec, ObservationSpec
from learner.world_model import Encoder, build_encoder, build_rssm


@dataclass
class PolicyState:
    """Recurrent state per environment: model state and the last action taken (model form)."""

    deter: Tensor
    stoch: Tensor
    action: Tensor


def resolve_device(name: str | torch.device) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"agent.device is {name!r} but no CUDA GPU is visible here: set agent.device=auto or cpu")
    return device


def model_observations(obs: dict[str, Tensor], spec: ObservationSpec, device: torch.device) -> dict[str, Tensor]:
    """Observations as the encoder takes them: images stay uint8 (4x fewer bytes to move), vectors
    become float32."""
    images = set(spec.image_keys)
    return {
        k: v.to(device, non_blocking=True) if k in images else v.to(device, torch.float32, non_blocking=True)
        for k, v in obs.items()
    }


def new_cuda_graph_step(compiled: bool, device: torch.device) -> None:
    """Tell CUDA graph trees that a new step begins: outputs of the last one may be reused."""
    if compiled and device.type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()


class PolicyNets(nn.Module):
    """The networks acting runs; their state, under these names, is what the learner publishes."""

    def __init__(self, encoder: Encoder, rssm: RSSM, actor: Actor):
        super().__init__()
        self.encoder, self.rssm, self.actor = encoder, rssm, actor

    @classmethod
    def build(cls, obs_spec: ObservationSpec, act_spec: ActionSpec, config: AgentConfig) -> PolicyNets:
        """Fresh networks, from the builders the training agent's modules come from."""
        encoder = build_encoder(obs_spec, config)
        rssm = build_rssm(encoder.out_dim, act_spec, config)
        return cls(encoder, rssm, Actor(rssm.features, act_spec, config))


class PolicyAgent:
    """Acts for a batch of environments with the latest published policy weights."""

    def __init__(self, obs_spec: ObservationSpec, act_spec: ActionSpec, config: AgentConfig,
                 device: str | torch.device | None = None, nets: PolicyNets | None = None):
        """`nets`: networks to act with as they are (the training agent's own, shared, not
        copied); by default fresh ones, to be filled by `load_policy_weights`."""
        self.config = config
        self.obs_spec, self.act_spec = obs_spec, act_spec
        self.device = resolve_device(device or config.device)
        self.nets = (nets or PolicyNets.build(obs_spec, act_spec, config)).to(self.device)
        deter = self.nets.rssm.deter
        self.precision = choose_precision(config.precision, self.device, deter)
        self.compile_plan = plan_compile(config.compile, self.device, deter)
        self.updates = 0  # the version of the weights acted with (the updates that made them)
        self._act: Any = self._eager_act  # eager (the reference) or compiled: same code, same results
        if self.compile_plan.on:
            use_cache_dir(config.compile_cache)
            self._act = compile_fn(self._eager_act, self.device)

    def initial_state(self, batch: int) -> PolicyState:
        deter, stoch = self.nets.rssm.initial(batch, self.device)
        return PolicyState(deter, stoch, torch.zeros(batch, self.act_spec.model_dim, device=self.device))

    @torch.no_grad()
    def policy_step(
        self, obs: dict[str, np.ndarray], state: PolicyState | None, is_first: np.ndarray, greedy: bool = False
    ) -> tuple[np.ndarray, PolicyState]:
        """Observations of N environments -> their next actions (environment form) and states.

        `is_first[i]` resets environment i's state (a new episode began with this observation).
        """
        state = state or self.initial_state(len(is_first))
        obs_t = model_observations({k: torch.as_tensor(obs[k]) for k in self.obs_spec.shapes}, self.obs_spec, self.device)
        keep = torch.as_tensor(~np.asarray(is_first, bool), device=self.device).float().unsqueeze(-1)
        new_cuda_graph_step(self.compile_plan.on, self.device)
        env_action, deter, stoch, action = self._act(obs_t, state.deter, state.stoch, state.action, keep, greedy)
        if self.compile_plan.on and self.device.type == "cuda":  # CUDA graphs reuse their outputs' memory
            deter, stoch, action = deter.clone(), stoch.clone(), action.clone()
        return env_action.cpu().numpy(), PolicyState(deter, stoch, action)

    def policy_weights(self) -> dict[str, Any]:
        """{"version": updates, "state": {name: NumPy array}}: copies, safe to publish while
        acting or training goes on (a dtype NumPy lacks, bfloat16, stays a CPU tensor)."""
        state = {k: _host_array(v) for k, v in self.nets.state_dict().items()}
        return {"version": self.updates, "state": state}

    def load_policy_weights(self, weights: dict[str, Any]) -> None:
        """Copy published weights in place (compiled programs and CUDA graphs keep pointing at
        them). Checked before anything is copied: a missing, unknown or misshapen tensor (weights
        of another model size or environment) raises, and the policy is never half-loaded."""
        own, version = self.nets.state_dict(), int(weights["version"])
        state = {k: _as_tensor(v) for k, v in weights["state"].items()}
        missing, unknown = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        misshapen = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
        if missing or unknown or misshapen:
            raise ValueError(f"policy weights do not fit this policy: missing {missing}, unknown {unknown}, misshapen {misshapen}")
        self.nets.load_state_dict(state)
        self.updates = version

    def num_params(self) -> int:
        return sum(p.numel() for p in self.nets.parameters())

    def _eager_act(self, obs: dict[str, Tensor], deter: Tensor, stoch: Tensor, action: Tensor, keep: Tensor, greedy: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        rssm = self.nets.rssm
        with self._autocast():
            embed = self.nets.encoder(obs)
            deter = rssm.recur(deter * keep, stoch * keep, rssm.in_action(action * keep))
            stoch = rssm.dist(rssm.posterior_logits(deter, rssm.post_embed(embed))).sample()
            dist = self.nets.actor.dist(deter, stoch)
        action = dist.mode() if greedy else dist.sample()
        return dist.to_env(action), deter.float(), stoch.float(), action

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when configured, but not on a CPU: at acting batch sizes (a runner's few
        envs) the casts cost more than they save, and acting took twice as long."""
        if not self.precision.bf16 or self.device.type == "cpu":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)


def _host_array(value: Tensor) -> np.ndarray | Tensor:
    """A host copy of a weight, as a NumPy array where NumPy has its dtype."""
    host = value.detach().to("cpu", copy=True)
    return host if host.dtype == torch.bfloat16 else host.numpy()


def _as_tensor(value: np.ndarray | Tensor) -> Tensor:
    """A published weight as a tensor sharing its memory. Arrays from Ray's object store are
    read-only, which torch warns about; loading only reads them (it copies into the parameters)."""
    if isinstance(value, Tensor):
        return value
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(value))
