"""Evaluator: greedy-policy episodes on an environment of its own, apart from the training runners."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from actors.collector import Collector
from actors.envs import make_env
from actors.policy import AgentPolicy
from actors.runner import summarize_episodes
from actors.specs import specs_from_spaces
from learner.agent import Agent
from learner.config import AgentConfig


class Evaluator:
    def __init__(self, env_name: str, env_options: dict[str, Any], seed: int, agent_config: AgentConfig):
        torch.manual_seed(seed)
        self.env = make_env(env_name, seed=seed, **env_options)
        obs_spec, act_spec = specs_from_spaces(self.env.observation_space, self.env.action_space)
        self.agent = Agent(obs_spec, act_spec, agent_config, device="cpu")

    def evaluate(self, weights: dict[str, Any], episodes: int) -> dict[str, float]:
        """Mean return, length and env stats over `episodes` greedy episodes with these weights."""
        self.agent.load_policy_weights(weights)
        collector = Collector([self.env], chunk_length=None, stream_prefix="eval")
        policy = AgentPolicy(self.agent, greedy=True)
        finished = []
        while len(finished) < episodes:
            _, ended = collector.step(policy)
            finished += ended
        summary = summarize_episodes([(e.ret, e.length, e.stats) for e in finished[:episodes]])
        out = {k.removeprefix("episode/"): v for k, v in summary.items()}
        out["return_std"] = float(np.std([e.ret for e in finished[:episodes]]))
        out["weight_version"] = float(weights["version"])
        return out
