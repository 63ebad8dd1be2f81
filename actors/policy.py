"""Policies a collector can act with: the agent's policy step (with its recurrent state) or random."""
from __future__ import annotations

import gymnasium
import numpy as np

from learner.agent import Agent, PolicyState


class AgentPolicy:
    """Batched `Agent.policy_step` over a runner's environments, keeping their recurrent states."""

    def __init__(self, agent: Agent, greedy: bool = False):
        self.agent = agent
        self.greedy = greedy
        self.state: PolicyState | None = None

    def __call__(self, obs: dict[str, np.ndarray], is_first: np.ndarray) -> np.ndarray:
        actions, self.state = self.agent.policy_step(obs, self.state, is_first, greedy=self.greedy)
        return actions


class RandomPolicy:
    """Uniform actions, for prefilling the replay before the model knows anything."""

    def __init__(self, action_space: gymnasium.Space, seed: int):
        self.space = action_space
        self.space.seed(seed)

    def __call__(self, obs: dict[str, np.ndarray], is_first: np.ndarray) -> np.ndarray:
        return np.stack([self.space.sample() for _ in range(len(is_first))])
