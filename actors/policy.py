"""Policies a collector can act with: the policy agent's step (with its recurrent state) or random.

Both take the envs to act for (`envs`, indices into the collector's envs; None: all of them in
order), so that the asynchronous collector can ask for the envs that are ready while every env
keeps its own recurrent state.
"""
from __future__ import annotations

import gymnasium
import numpy as np
import torch

from learner.policy_agent import PolicyAgent, PolicyState


class AgentPolicy:
    """Batched `PolicyAgent.policy_step` over a collector's environments, keeping their recurrent states."""

    def __init__(self, agent: PolicyAgent, greedy: bool = False, num_envs: int | None = None):
        """`num_envs` is needed only to act for subsets of the envs (`envs` in a call)."""
        self.agent = agent
        self.greedy = greedy
        self.num_envs = num_envs
        self.state: PolicyState | None = None

    def __call__(self, obs: dict[str, np.ndarray], is_first: np.ndarray, envs: np.ndarray | None = None) -> np.ndarray:
        if envs is None:
            actions, self.state = self.agent.policy_step(obs, self.state, is_first, greedy=self.greedy)
            return actions
        if self.num_envs is None:
            raise ValueError("AgentPolicy needs num_envs to act for a subset of the envs")
        state = self.state or self.agent.initial_state(self.num_envs)
        rows = self._padded(len(envs))
        index = torch.as_tensor(np.asarray(envs)[rows], device=state.deter.device)
        mine = PolicyState(state.deter[index], state.stoch[index], state.action[index])
        actions, new = self.agent.policy_step({k: v[rows] for k, v in obs.items()}, mine, np.asarray(is_first)[rows], greedy=self.greedy)
        n = len(envs)
        index = index[:n]
        state.deter[index], state.stoch[index], state.action[index] = new.deter[:n], new.stoch[:n], new.action[:n]
        self.state = state
        return actions[:n]

    def _padded(self, n: int) -> np.ndarray:
        """Rows for a batch of n envs. A compiled policy step has one program per batch size, so
        batches are padded (repeating the first env) to the next power of two, at most the
        collector's size: log2(envs) + 1 programs instead of one per size. Eager needs no padding."""
        if not self.agent.compile_plan.on:
            return np.arange(n)
        size = min(1 << (n - 1).bit_length(), max(n, self.num_envs or n))
        return np.concatenate([np.arange(n), np.zeros(size - n, np.int64)])


class RandomPolicy:
    """Uniform actions, for prefilling the replay before the model knows anything."""

    def __init__(self, action_space: gymnasium.Space, seed: int):
        self.space = action_space
        self.space.seed(seed)

    def __call__(self, obs: dict[str, np.ndarray], is_first: np.ndarray, envs: np.ndarray | None = None) -> np.ndarray:
        return np.stack([self.space.sample() for _ in range(len(is_first))])
