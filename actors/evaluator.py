"""Evaluator: greedy-policy episodes on an environment of its own, apart from the training runners.

Besides mean return and the env's own stats it reports the scores that span episodes (the Crafter
score), and can record the frames of one episode for a video.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from actors.collector import Collector
from actors.envs import crafter_score, crafter_success_rates, make_env
from actors.envs.crafter_suite import ACHIEVEMENTS
from actors.policy import AgentPolicy
from actors.specs import specs_from_spaces
from actors.streams import Episode, summarize_episodes
from learner.config import AgentConfig
from learner.policy_agent import PolicyAgent

# Frames kept of a recorded episode: long episodes (Crafter's 10,000 steps) are cut to this.
MAX_VIDEO_FRAMES = 1000


class Evaluator:
    def __init__(self, env_name: str, env_options: dict[str, Any], seed: int, agent_config: AgentConfig,
                 slot: int | None = None):
        """`slot`: the env slot after all runners' (`actors.envs.env_slot`), for per-env servers."""
        torch.manual_seed(seed)
        self.env = make_env(env_name, seed=seed, slot=slot, **env_options)
        obs_spec, act_spec = specs_from_spaces(self.env.observation_space, self.env.action_space)
        self.agent = PolicyAgent(obs_spec, act_spec, agent_config, device="cpu")
        self.image_key = obs_spec.image_keys[0] if obs_spec.image_keys else None
        self._video: np.ndarray | None = None

    def evaluate(self, weights: dict[str, Any], episodes: int, record: bool = False) -> dict[str, float]:
        """Mean return, length and env stats over `episodes` greedy episodes with these weights.

        With `record`, the frames of the first episode are kept for `video()` (image envs only).
        """
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one env, batch-1 inference: more threads only contend
        try:
            return self._evaluate(weights, episodes, record)
        finally:
            torch.set_num_threads(threads)

    def _evaluate(self, weights: dict[str, Any], episodes: int, record: bool) -> dict[str, float]:
        self.agent.load_policy_weights(weights)
        collector = Collector([self.env], chunk_length=None, stream_prefix="eval")
        policy = AgentPolicy(self.agent, greedy=True)
        finished: list[Episode] = []
        frames: list[np.ndarray] | None = [] if record and self.image_key else None
        while len(finished) < episodes:
            if frames is not None and len(frames) < MAX_VIDEO_FRAMES:
                frames.append(collector.current[0]["obs"][self.image_key])
            _, ended = collector.step(policy)
            if ended and frames is not None:
                if len(frames) < MAX_VIDEO_FRAMES:
                    frames.append(collector.current[0]["obs"][self.image_key])  # the episode's last frame
                self._video, frames = np.stack(frames), None
            finished += ended
        out = summarize_evaluation(finished[:episodes])
        out["weight_version"] = float(weights["version"])
        return out

    def video(self) -> np.ndarray | None:
        """uint8 frames [T, H, W, C] of the episode the last recording `evaluate` played, once."""
        video, self._video = self._video, None
        return video


def summarize_evaluation(episodes: list[Episode]) -> dict[str, float]:
    """Means over the episodes (return, length, env stats such as success or the human-normalised
    score), the return's spread, and the Crafter score when the episodes report achievements."""
    summary = summarize_episodes([(e.ret, e.length, e.stats) for e in episodes])
    out = {k.removeprefix("episode/"): v for k, v in summary.items()}
    out["return_std"] = float(np.std([e.ret for e in episodes]))
    if episodes and all(f"achievement_{name}" in e.stats for e in episodes for name in ACHIEVEMENTS):
        out["crafter_score"] = crafter_score(crafter_success_rates(e.stats for e in episodes))
    return out
