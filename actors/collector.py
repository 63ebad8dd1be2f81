"""Steps a vector of environments with a policy and cuts their experience into fixed-length chunks.

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
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import gymnasium
import numpy as np

Policy = Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]


class EnvFailure(RuntimeError):
    """An environment failed (raised or hung) `max_failures` times in a row, replacements included."""


class EnvTimeout(RuntimeError):
    """An environment call (make, reset, step) ran past the step timeout."""


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


class _EnvThread:
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


class Collector:
    def __init__(
        self,
        envs: Sequence[gymnasium.Env],
        chunk_length: int | None,
        stream_prefix: str,
        remake: Callable[[int], gymnasium.Env] | None = None,
        step_timeout: float | None = None,
        max_failures: int = 3,
    ):
        """`chunk_length=None` records nothing (evaluation). With `remake(i)`, an environment
        that raises (or, with `step_timeout` seconds, hangs) is replaced by a new one and its
        episode is dropped (counted), instead of the error ending the collector."""
        if chunk_length is not None and chunk_length < 1:
            raise ValueError("chunk_length must be >= 1")
        self.envs = list(envs)
        self.remake = remake
        self.step_timeout = step_timeout if step_timeout and step_timeout > 0 else None
        self.max_failures = max(1, max_failures)
        self.env_restarts = 0
        self.env_timeouts = 0
        self.dropped_episodes = 0
        self.chunk_length = chunk_length
        self.streams = [f"{stream_prefix}/env{i}" for i in range(len(self.envs))]
        self.threads = [self._thread(i) for i in range(len(self.envs))] if self.step_timeout else None
        self.failures = [0] * len(self.envs)  # per env, failures since its last good step
        self.down: dict[int, str] = {}  # envs given up on (until revive), with their last error
        self.buffers = [_StreamBuffer() for _ in self.envs]
        self.zero_action = np.zeros(self.envs[0].action_space.shape, self.envs[0].action_space.dtype)
        self.returns = np.zeros(len(self.envs))
        self.lengths = np.zeros(len(self.envs), np.int64)
        self.current: list[dict] = [{} for _ in self.envs]
        for i in range(len(self.envs)):
            self._start(i)
        self.env_steps = 0

    def observations(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The current observation batch and is_first flags, as the policy sees them."""
        keys = self.current[0]["obs"].keys()
        obs = {k: np.stack([c["obs"][k] for c in self.current]) for k in keys}
        return obs, np.array([c["is_first"] for c in self.current])

    def step(self, policy: Policy, weight_version: int = 0) -> tuple[list[Chunk], list[Episode]]:
        """Record the current step of every env, act, and advance. Returns full chunks and the
        episodes that ended. Envs whose current step is_last are reset instead of stepped.
        Raises EnvFailure while an env is given up on (see `revive`)."""
        self.raise_if_down()
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
        stepping = [i for i in range(len(self.envs)) if not self.current[i]["is_last"]]
        results = self._step_all(stepping, actions)
        for i in range(len(self.envs)):
            if i not in results:
                self._start(i)
                continue
            result = results[i]
            if isinstance(result, Exception):
                self.dropped_episodes += 1
                self._start(i, error=result)
                continue
            next_obs, reward, terminated, truncated, info = result
            self.failures[i] = 0
            self.env_steps += 1
            self.returns[i] += reward
            self.lengths[i] += 1
            last = bool(terminated or truncated)
            self.current[i] = {
                "obs": next_obs,
                "action": np.asarray(actions[i], self.zero_action.dtype),
                "reward": np.float32(reward),
                "is_first": False,
                "is_last": last,
                "is_terminal": bool(terminated),
            }
            if last:
                stats = {k: float(v) for k, v in info.get("episode_stats", {}).items()}
                episodes.append(Episode(float(self.returns[i]), int(self.lengths[i]), stats))
        return chunks, episodes

    def revive(self) -> None:
        """Try the envs given up on again (up to `max_failures` - 1 new ones each); raises
        EnvFailure if one still fails."""
        for i in sorted(self.down):
            error = self.down.pop(i)
            self._start(i, error=RuntimeError(error))
        self.raise_if_down()

    def raise_if_down(self) -> None:
        if self.down:
            i, error = min(self.down.items())
            raise EnvFailure(f"{self.streams[i]} failed {self.max_failures} times in a row, new environments included (last: {error})")

    def _step_all(self, indices: list[int], actions: np.ndarray) -> dict[int, Any]:
        """Step these envs (at once, each on its thread, when there is a timeout); per env the
        step's result, or the exception it raised (EnvTimeout for one that did not answer)."""
        results: dict[int, Any] = {}
        if self.threads is None:
            for i in indices:
                try:
                    results[i] = self.envs[i].step(actions[i])
                except Exception as error:
                    if self.remake is None:
                        raise
                    results[i] = error
            return results
        deadline = time.monotonic() + self.step_timeout
        futures = {i: self.threads[i].submit(lambda env=self.envs[i], a=actions[i]: env.step(a)) for i in indices}
        for i, future in futures.items():
            try:
                results[i] = self._wait(i, future, deadline)
            except Exception as error:
                if self.remake is None:
                    raise
                results[i] = error
        return results

    def _start(self, i: int, error: Exception | None = None) -> None:
        """Reset env i. After a failure (`error`, or a reset that raises or hangs) it is replaced by
        a new env and that is reset, until one works or `max_failures` in a row give it up."""
        while True:
            if error is not None:
                if self.remake is None:
                    raise error
                self.failures[i] += 1
                self.env_timeouts += isinstance(error, EnvTimeout)
                if self.failures[i] >= self.max_failures:
                    self.failures[i] = 0
                    self.down[i] = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
                    return
            try:
                if error is not None:
                    self._replace(i)
                obs, _ = self._call(i, self.envs[i].reset)
            except Exception as failure:
                error = failure
                continue
            self.returns[i], self.lengths[i] = 0.0, 0
            self.current[i] = {"obs": obs, "action": self.zero_action, "reward": np.float32(0.0), "is_first": True, "is_last": False, "is_terminal": False}
            return

    def _replace(self, i: int) -> None:
        """Swap a failed environment for a new one (made under the timeout too)."""
        old = self.envs[i]
        if self.threads is None:
            try:
                old.close()
            except Exception:
                pass  # a crashed simulator may not close cleanly; the new one does not depend on it
        else:  # closed on its own thread once (if ever) its hung call returns
            self.threads[i].submit(old.close)
            self.threads[i].retire()
            self.threads[i] = self._thread(i)
        self.env_restarts += 1
        self.envs[i] = self._call(i, lambda: self.remake(i))

    def _call(self, i: int, fn: Callable[[], Any]) -> Any:
        if self.threads is None:
            return fn()
        return self._wait(i, self.threads[i].submit(fn), time.monotonic() + self.step_timeout)

    def _wait(self, i: int, future: Future, deadline: float) -> Any:
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            raise EnvTimeout(f"{self.streams[i]} did not answer within {self.step_timeout:g} s") from None

    def _thread(self, i: int) -> _EnvThread:
        return _EnvThread(f"{self.streams[i]}")

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
        for i, env in enumerate(self.envs):
            try:
                self._call(i, env.close)
            except EnvTimeout:
                pass  # a hung simulator is left to its thread
            if self.threads is not None:
                self.threads[i].retire()
