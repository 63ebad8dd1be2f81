"""What both collectors (lockstep and asynchronous) share: each environment's stream of steps cut
into fixed-length chunks, episode tallies, failure counts, and the thread an env's calls run on.

Convention (DreamerV3): step t of a stream holds obs_t, the action that led to it, the reward
received on arriving at it, and the flags is_first (obs_t starts an episode), is_last (it ends
one) and is_terminal (it ends one for real, not by a time limit). After an is_last step the next
step of that stream is the reset observation.
"""
from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from replay import Chunk

StepRecord = dict[str, Any]  # obs, action, reward, is_first, is_last, is_terminal


class EnvFailure(RuntimeError):
    """An environment failed (raised or hung) `max_failures` times in a row, replacements included."""


class EnvTimeout(RuntimeError):
    """An environment call (make, reset, step) ran past the step timeout."""


@dataclass
class Episode:
    """One finished episode: return, length and the environment's own stats (score, success...)."""

    ret: float
    length: int
    stats: dict[str, float] = field(default_factory=dict)


def summarize_episodes(episodes: list[tuple[float, int, dict[str, float]]]) -> dict[str, float]:
    """Mean return, length and env-specific stats over a list of finished episodes."""
    if not episodes:
        return {}
    out = {"episode/return": float(np.mean([e[0] for e in episodes])), "episode/length": float(np.mean([e[1] for e in episodes])), "episode/count": float(len(episodes))}
    keys = sorted({k for e in episodes for k in e[2]})
    for key in keys:
        out[f"episode/{key}"] = float(np.mean([e[2].get(key, 0.0) for e in episodes]))
    return out


class Streams:
    """The current step of every env, the steps since each env's last chunk, and episode tallies.

    A collector calls `begin` when an env was reset, `record` before it acts on an env's current
    step (which appends that step to the env's stream and may cut a chunk), and `advance` with the
    result of the env's step. Envs are independent: the order of calls across envs does not matter,
    which is what lets the asynchronous collector produce the same chunks as the lockstep one.
    """

    def __init__(self, num_envs: int, chunk_length: int | None, prefix: str, zero_action: np.ndarray):
        if chunk_length is not None and chunk_length < 1:
            raise ValueError("chunk_length must be >= 1")
        self.chunk_length = chunk_length
        self.names = [f"{prefix}/env{i}" for i in range(num_envs)]
        self.zero_action = zero_action
        self.current: list[StepRecord] = [{} for _ in range(num_envs)]
        self.env_steps = 0
        self._steps: list[list[StepRecord]] = [[] for _ in range(num_envs)]
        self._versions = [0] * num_envs
        self._returns = np.zeros(num_envs)
        self._lengths = np.zeros(num_envs, np.int64)

    def begin(self, i: int, obs: dict[str, np.ndarray]) -> None:
        """Env i was reset: its current step is the first of an episode."""
        self._returns[i], self._lengths[i] = 0.0, 0
        self.current[i] = {"obs": obs, "action": self.zero_action, "reward": np.float32(0.0), "is_first": True, "is_last": False, "is_terminal": False}

    def record(self, i: int, weight_version: int) -> Chunk | None:
        """Append env i's current step to its stream; the chunk it completes, if any."""
        if self.chunk_length is None:
            return None
        steps = self._steps[i]
        if not steps:
            self._versions[i] = weight_version
        steps.append(self.current[i])
        return self._cut(i) if len(steps) == self.chunk_length else None

    def advance(self, i: int, action: np.ndarray, result: tuple) -> Episode | None:
        """Env i stepped with `action` and returned `result` (gymnasium's 5-tuple); the episode
        it ended, if any."""
        next_obs, reward, terminated, truncated, info = result
        self.env_steps += 1
        self._returns[i] += reward
        self._lengths[i] += 1
        last = bool(terminated or truncated)
        self.current[i] = {
            "obs": next_obs,
            "action": np.asarray(action, self.zero_action.dtype),
            "reward": np.float32(reward),
            "is_first": False,
            "is_last": last,
            "is_terminal": bool(terminated),
        }
        if not last:
            return None
        stats = {k: float(v) for k, v in info.get("episode_stats", {}).items()}
        return Episode(float(self._returns[i]), int(self._lengths[i]), stats)

    def observations(self, envs: list[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The current observations of these envs as one batch, with their is_first flags."""
        records = [self.current[i] for i in envs]
        obs = {k: np.stack([r["obs"][k] for r in records]) for k in records[0]["obs"]}
        return obs, np.array([r["is_first"] for r in records])

    def _cut(self, i: int) -> Chunk:
        steps = self._steps[i]
        data = {k: np.stack([s["obs"][k] for s in steps]) for k in steps[0]["obs"]}
        data["action"] = np.stack([s["action"] for s in steps])
        data["reward"] = np.array([s["reward"] for s in steps], np.float32)
        for flag in ("is_first", "is_last", "is_terminal"):
            data[flag] = np.array([s[flag] for s in steps], bool)
        self._steps[i] = []
        return Chunk(data, self.names[i], uuid.uuid4().hex, self._versions[i])


class FailureCount:
    """Failures of each env in a row (since its last good step); an env that reaches
    `max_failures` is given up on until `revive`."""

    def __init__(self, names: list[str], max_failures: int):
        self.names = names
        self.max_failures = max(1, max_failures)
        self.down: dict[int, str] = {}  # envs given up on, with their last error
        self._in_a_row = [0] * len(names)

    def succeeded(self, i: int) -> None:
        self._in_a_row[i] = 0

    def failed(self, i: int, error: BaseException) -> bool:
        """Count a failure of env i; True when that gives it up."""
        self._in_a_row[i] += 1
        if self._in_a_row[i] < self.max_failures:
            return False
        self._in_a_row[i] = 0
        text = str(error).strip()
        self.down[i] = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
        return True

    def revive(self) -> dict[int, str]:
        """The envs given up on (with their last errors), no longer down: each gets new tries."""
        revived, self.down = self.down, {}
        return revived

    def raise_if_down(self) -> None:
        if self.down:
            i, error = min(self.down.items())
            raise EnvFailure(f"{self.names[i]} failed {self.max_failures} times in a row, new environments included (last: {error})")


class BusyTime:
    """Seconds spent inside env calls, summed over the env threads: what the envs cost, without
    the time they waited for the policy or for each other."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()

    def timed(self, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return fn()
        finally:
            with self._lock:  # env threads finish at once
                self.seconds += time.perf_counter() - started


class EnvThread:
    """Runs one environment's calls on a daemon thread, so that a call that hangs can be given up
    on: the caller stops waiting at its deadline and abandons the thread (with its env), which
    ends by itself if the call ever returns. A daemon thread never blocks the process's exit."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future] | None] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def submit(self, fn: Callable[[], Any]) -> Future:
        future: Future = Future()
        self._calls.put((fn, future))
        return future

    def retire(self) -> None:
        """End the thread after the calls already submitted."""
        self._calls.put(None)

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            fn, future = item
            try:
                future.set_result(fn())
            except BaseException as error:  # handed to the caller, whatever it is
                future.set_exception(error)
