"""Steps a vector of environments with a policy and cuts their experience into fixed-length chunks.

Convention (DreamerV3): step t of a stream holds obs_t, the action that led to it, the reward
received on arriving at it, and the flags is_first (obs_t starts an episode), is_last (it ends
one) and is_terminal (it ends one for real, not by a time limit). After an is_last step the next
step of that stream is the reset observation.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gymnasium
import numpy as np

Policy = Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]


@dataclass
class Chunk:
    data: dict[str, np.ndarray]
    stream: str
    chunk_id: str
    weight_version: int


@dataclass
class Episode:
    """One finished episode: return, length and the environment's own stats (score, success...)."""

    ret: float
    length: int
    stats: dict[str, float] = field(default_factory=dict)


class _StreamBuffer:
    """Steps of one environment since its last chunk was cut."""

    def __init__(self) -> None:
        self.steps: list[dict[str, np.ndarray | float | bool]] = []
        self.version = 0


class Collector:
    def __init__(
        self,
        envs: Sequence[gymnasium.Env],
        chunk_length: int | None,
        stream_prefix: str,
        remake: Callable[[int], gymnasium.Env] | None = None,
    ):
        """`chunk_length=None` records nothing (evaluation). With `remake(i)`, an environment
        that raises is replaced by a new one and its episode is dropped (counted), instead of
        the error ending the collector."""
        if chunk_length is not None and chunk_length < 1:
            raise ValueError("chunk_length must be >= 1")
        self.envs = list(envs)
        self.remake = remake
        self.env_restarts = 0
        self.dropped_episodes = 0
        self.chunk_length = chunk_length
        self.streams = [f"{stream_prefix}/env{i}" for i in range(len(self.envs))]
        self.buffers = [_StreamBuffer() for _ in self.envs]
        self.zero_action = np.zeros(self.envs[0].action_space.shape, self.envs[0].action_space.dtype)
        self.current = [self._reset(i) for i in range(len(self.envs))]
        self.returns = np.zeros(len(self.envs))
        self.lengths = np.zeros(len(self.envs), np.int64)
        self.env_steps = 0

    def observations(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The current observation batch and is_first flags, as the policy sees them."""
        keys = self.current[0]["obs"].keys()
        obs = {k: np.stack([c["obs"][k] for c in self.current]) for k in keys}
        return obs, np.array([c["is_first"] for c in self.current])

    def step(self, policy: Policy, weight_version: int = 0) -> tuple[list[Chunk], list[Episode]]:
        """Record the current step of every env, act, and advance. Returns full chunks and the
        episodes that ended. Envs whose current step is_last are reset instead of stepped."""
        chunks: list[Chunk] = []
        for i, record in enumerate(self.current if self.chunk_length else ()):
            buffer = self.buffers[i]
            if not buffer.steps:
                buffer.version = weight_version
            buffer.steps.append(record)
            if len(buffer.steps) == self.chunk_length:
                chunks.append(self._cut(i))
        obs, is_first = self.observations()
        actions = np.asarray(policy(obs, is_first))
        episodes: list[Episode] = []
        for i, env in enumerate(self.envs):
            if self.current[i]["is_last"]:
                self.current[i] = self._reset(i)
                continue
            action = actions[i]
            try:
                next_obs, reward, terminated, truncated, info = env.step(action)
            except Exception:
                if self.remake is None:
                    raise
                self._replace(i)
                continue
            self.env_steps += 1
            self.returns[i] += reward
            self.lengths[i] += 1
            last = bool(terminated or truncated)
            self.current[i] = {
                "obs": next_obs,
                "action": np.asarray(action, self.zero_action.dtype),
                "reward": np.float32(reward),
                "is_first": False,
                "is_last": last,
                "is_terminal": bool(terminated),
            }
            if last:
                stats = {k: float(v) for k, v in info.get("episode_stats", {}).items()}
                episodes.append(Episode(float(self.returns[i]), int(self.lengths[i]), stats))
        return chunks, episodes

    def _replace(self, i: int) -> None:
        """Swap a crashed environment for a new one; its unfinished episode is not reported."""
        try:
            self.envs[i].close()
        except Exception:
            pass  # a crashed simulator may not close cleanly; the new one does not depend on it
        self.envs[i] = self.remake(i)
        self.env_restarts += 1
        self.dropped_episodes += 1
        self.current[i] = self._reset(i)

    def _reset(self, i: int) -> dict:
        obs, _ = self.envs[i].reset()
        if hasattr(self, "returns"):
            self.returns[i], self.lengths[i] = 0.0, 0
        return {"obs": obs, "action": self.zero_action, "reward": np.float32(0.0), "is_first": True, "is_last": False, "is_terminal": False}

    def _cut(self, i: int) -> Chunk:
        steps = self.buffers[i].steps
        data = {f"{k}": np.stack([s["obs"][k] for s in steps]) for k in steps[0]["obs"]}
        data["action"] = np.stack([s["action"] for s in steps])
        data["reward"] = np.array([s["reward"] for s in steps], np.float32)
        for flag in ("is_first", "is_last", "is_terminal"):
            data[flag] = np.array([s[flag] for s in steps], bool)
        chunk = Chunk(data, self.streams[i], uuid.uuid4().hex, self.buffers[i].version)
        self.buffers[i].steps = []
        return chunk

    def close(self) -> None:
        for env in self.envs:
            env.close()
