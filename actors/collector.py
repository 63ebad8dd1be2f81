"""Lockstep collection: steps a vector of environments with a policy, all at once, and cuts their
experience into fixed-length chunks (actors/streams.py).

Every vector step waits for the slowest env, which costs nothing for fast in-process envs
(CartPole, Atari) and keeps the policy's batch full; slow or crashy simulators (Minecraft) are
better served by actors/async_collector.py.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import gymnasium
import numpy as np

from actors.streams import BusyTime, Episode, EnvThread, EnvTimeout, FailureCount, StepRecord, Streams
from replay import Chunk

Policy = Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]


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
        self.envs = list(envs)
        self.remake = remake
        self.step_timeout = step_timeout if step_timeout and step_timeout > 0 else None
        self.env_restarts = 0
        self.env_timeouts = 0
        self.dropped_episodes = 0
        self.busy = BusyTime()  # seconds inside env calls (steps, resets, replacements)
        space = self.envs[0].action_space
        self.streams = Streams(len(self.envs), chunk_length, stream_prefix, np.zeros(space.shape, space.dtype))
        self.failures = FailureCount(self.streams.names, max_failures)
        self.threads = [self._thread(i) for i in range(len(self.envs))] if self.step_timeout else None
        for i in range(len(self.envs)):
            self._start(i)

    @property
    def env_steps(self) -> int:
        return self.streams.env_steps

    @property
    def current(self) -> list[StepRecord]:
        """Each env's current step (what the policy acts on next)."""
        return self.streams.current

    @property
    def down(self) -> dict[int, str]:
        return self.failures.down

    def step(self, policy: Policy, weight_version: int = 0) -> tuple[list[Chunk], list[Episode]]:
        """Record the current step of every env, act, and advance. Returns full chunks and the
        episodes that ended. Envs whose current step is_last are reset instead of stepped.
        Raises EnvFailure while an env is given up on (see `revive`)."""
        self.failures.raise_if_down()
        every = range(len(self.envs))
        chunks = [chunk for i in every if (chunk := self.streams.record(i, weight_version)) is not None]
        obs, is_first = self.streams.observations(list(every))
        actions = np.asarray(policy(obs, is_first))
        episodes: list[Episode] = []
        stepping = [i for i in every if not self.current[i]["is_last"]]
        results = self._step_all(stepping, actions)
        for i in every:
            if i not in results:
                self._start(i)
            elif isinstance(results[i], Exception):
                self.dropped_episodes += 1
                self._start(i, error=results[i])
            else:
                self.failures.succeeded(i)
                if (episode := self.streams.advance(i, actions[i], results[i])) is not None:
                    episodes.append(episode)
        return chunks, episodes

    def revive(self) -> None:
        """Try the envs given up on again (up to `max_failures` - 1 new ones each); raises
        EnvFailure if one still fails."""
        for i, error in sorted(self.failures.revive().items()):
            self._start(i, error=RuntimeError(error))
        self.failures.raise_if_down()

    def _step_all(self, indices: list[int], actions: np.ndarray) -> dict[int, Any]:
        """Step these envs (at once, each on its thread, when there is a timeout); per env the
        step's result, or the exception it raised (EnvTimeout for one that did not answer)."""
        results: dict[int, Any] = {}
        if self.threads is None:
            for i in indices:
                try:
                    results[i] = self.busy.timed(lambda env=self.envs[i], a=actions[i]: env.step(a))
                except Exception as error:
                    if self.remake is None:
                        raise
                    results[i] = error
            return results
        deadline = time.monotonic() + self.step_timeout
        futures = {i: self.threads[i].submit(lambda env=self.envs[i], a=actions[i]: self.busy.timed(lambda: env.step(a))) for i in indices}
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
                self.env_timeouts += isinstance(error, EnvTimeout)
                if self.failures.failed(i, error):
                    return
            try:
                if error is not None:
                    self._replace(i)
                obs, _ = self._call(i, self.envs[i].reset)
            except Exception as failure:
                error = failure
                continue
            self.streams.begin(i, obs)
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
            return self.busy.timed(fn)
        return self._wait(i, self.threads[i].submit(lambda: self.busy.timed(fn)), time.monotonic() + self.step_timeout)

    def _wait(self, i: int, future: Future, deadline: float) -> Any:
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            raise EnvTimeout(f"{self.streams.names[i]} did not answer within {self.step_timeout:g} s") from None

    def _thread(self, i: int) -> EnvThread:
        return EnvThread(self.streams.names[i])

    def close(self) -> None:
        for i, env in enumerate(self.envs):
            try:
                self._call(i, env.close)
            except EnvTimeout:
                pass  # a hung simulator is left to its thread
            if self.threads is not None:
                self.threads[i].retire()
