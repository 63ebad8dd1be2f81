"""Asynchronous collection for slow, crashy simulators (Minecraft): each env is stepped as soon as
its last call returned, and the policy acts on the envs that are ready, in one batch.

A lockstep vector step waits for its slowest env: while one Minecraft env builds a new world (ten
seconds and more) the others idle. Here every env's calls run on a thread of its own. A tick waits
for the first env to come back, gathers those that come back within `gather_wait` seconds,
records their steps, asks the policy for their actions in one batch (each env keeps its own
recurrent state in the policy) and sends each env its next call. A reset, the replacement of a
crashed or hung env, or a slow step of one env never holds the others. Streams are per env, so
the chunks are those lockstep collection would cut from the same env and policy.
"""
from __future__ import annotations

import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium
import numpy as np

from actors.streams import BusyTime, Episode, EnvThread, EnvTimeout, FailureCount, Streams
from replay import Chunk

_CLOSE_WAIT_S = 10.0  # what `close` waits for envs still in a call before leaving them to their threads


class SubsetPolicy(Protocol):
    """Actions for the envs `envs` (indices into the collector's envs), given their observations."""

    def __call__(self, obs: dict[str, np.ndarray], is_first: np.ndarray, envs: np.ndarray) -> np.ndarray: ...


@dataclass(eq=False)
class _Call:
    """One call in flight on an env's thread: a step (with its action) or a start (a reset,
    after making a new env when the last one failed)."""

    env: int
    future: Future
    action: np.ndarray | None  # None: a start
    deadline: float | None


class AsyncCollector:
    def __init__(
        self,
        envs: Sequence[gymnasium.Env],
        chunk_length: int | None,
        stream_prefix: str,
        remake: Callable[[int], gymnasium.Env] | None = None,
        step_timeout: float | None = None,
        max_failures: int = 3,
        gather_wait: float = 0.001,
        tick_timeout: float = 0.1,
    ):
        """Arguments as for the lockstep `Collector`, plus `gather_wait` (seconds a tick waits,
        after the first env came back, for more to act on in the same batch) and `tick_timeout`
        (the longest a tick waits for any env, so that its caller can poll for new weights or a
        stop). The envs are reset on their threads from here on."""
        self.envs = list(envs)
        self.remake = remake
        self.step_timeout = step_timeout if step_timeout and step_timeout > 0 else None
        self.gather_wait, self.tick_timeout = gather_wait, tick_timeout
        self.env_restarts = 0
        self.env_timeouts = 0
        self.dropped_episodes = 0
        self.busy = BusyTime()
        space = self.envs[0].action_space
        self.streams = Streams(len(self.envs), chunk_length, stream_prefix, np.zeros(space.shape, space.dtype))
        self.failures = FailureCount(self.streams.names, max_failures)
        self.threads = [EnvThread(name) for name in self.streams.names]
        self._calls: dict[int, _Call] = {}  # per env, its call in flight
        self._done: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._ready: list[int] = []  # envs whose current step waits to be recorded and acted on
        self._abandoned: set[int] = set()  # envs whose hung call's thread will close them
        for i in range(len(self.envs)):
            self._submit_start(i)

    @property
    def env_steps(self) -> int:
        return self.streams.env_steps

    def step(self, policy: SubsetPolicy, weight_version: int = 0) -> tuple[list[Chunk], list[Episode]]:
        """One tick: wait for envs to come back (at most `tick_timeout`), record their steps, act
        on them in one batch and send them on; envs whose step is_last are reset instead.
        Returns full chunks and finished episodes (both may be empty). Raises EnvFailure while
        an env is given up on (see `revive`)."""
        self.failures.raise_if_down()
        episodes: list[Episode] = []
        self._gather(episodes)
        chunks: list[Chunk] = []
        acting: list[int] = []
        for i in sorted(self._ready):
            if (chunk := self.streams.record(i, weight_version)) is not None:
                chunks.append(chunk)
            if self.streams.current[i]["is_last"]:
                self._submit_start(i)
            else:
                acting.append(i)
        self._ready = []
        if acting:
            obs, is_first = self.streams.observations(acting)
            actions = np.asarray(policy(obs, is_first, np.array(acting)))
            for i, action in zip(acting, actions):
                self._submit_step(i, action)
        return chunks, episodes

    def revive(self) -> None:
        """Give the envs given up on new tries (up to `max_failures` - 1 new ones each); their
        starts run in the background and the next ticks raise EnvFailure if they fail again."""
        for i in sorted(self.failures.revive()):
            self.env_restarts += 1
            self._submit_start(i, replace=True)

    def close(self) -> None:
        """Close every env on its thread (after its call in flight), waiting a bounded time."""
        closing = [thread.submit(lambda env=env: _close_quietly(env)) for thread, env in zip(self.threads, self.envs)]
        for thread in self.threads:
            thread.retire()
        wait(closing, timeout=_CLOSE_WAIT_S)

    # ------------------------------------------------------------------ calls
    def _submit_step(self, i: int, action: np.ndarray) -> None:
        env = self.envs[i]
        self._submit(i, lambda: self.busy.timed(lambda: env.step(action)), action)

    def _submit_start(self, i: int, replace: bool = False) -> None:
        """Reset env i on its thread; with `replace`, first close the failed env (unless it was
        left to an abandoned thread) and make a new one."""
        old = None if not replace or i in self._abandoned else self.envs[i]
        self._abandoned.discard(i)

        def start() -> dict[str, np.ndarray]:
            if replace:
                if old is not None:
                    _close_quietly(old)
                self.envs[i] = self.remake(i)
            obs, _ = self.envs[i].reset()
            return obs

        self._submit(i, lambda: self.busy.timed(start), None)

    def _submit(self, i: int, fn: Callable[[], Any], action: np.ndarray | None) -> None:
        deadline = time.monotonic() + self.step_timeout if self.step_timeout else None
        call = _Call(i, self.threads[i].submit(fn), action, deadline)
        self._calls[i] = call
        call.future.add_done_callback(lambda _: self._done.put(call))

    # ---------------------------------------------------------------- results
    def _gather(self, episodes: list[Episode]) -> None:
        """Take the results of the calls that finish within this tick: wait up to `tick_timeout`
        for the first, then up to `gather_wait` more for others."""
        end = time.monotonic() + self.tick_timeout
        first = True
        while self._calls:
            now = time.monotonic()
            self._expire(now)
            deadlines = [c.deadline for c in self._calls.values() if c.deadline is not None]
            until = min([end, *deadlines])
            try:
                call = self._done.get(timeout=max(0.0, until - now))
            except queue.Empty:
                if time.monotonic() >= end:
                    return
                continue
            if self._calls.get(call.env) is not call:
                continue  # a call given up on at its deadline, returning late
            del self._calls[call.env]
            self._finish(call, episodes)
            if first:
                first, end = False, min(end, time.monotonic() + self.gather_wait)

    def _finish(self, call: _Call, episodes: list[Episode]) -> None:
        i, error = call.env, call.future.exception()
        if error is not None:
            if call.action is not None:
                self.dropped_episodes += 1
            self._failed(i, error)
            return
        if call.action is None:
            self.streams.begin(i, call.future.result())
        else:
            self.failures.succeeded(i)
            if (episode := self.streams.advance(i, call.action, call.future.result())) is not None:
                episodes.append(episode)
        self._ready.append(i)

    def _expire(self, now: float) -> None:
        """Calls past their deadline: their envs are replaced on new threads (the old thread and
        env are abandoned; the env is closed there if its call ever returns)."""
        for call in [c for c in self._calls.values() if c.deadline is not None and c.deadline <= now]:
            i = call.env
            del self._calls[i]
            self.threads[i].submit(self.envs[i].close)
            self.threads[i].retire()
            self._abandoned.add(i)
            self.threads[i] = EnvThread(self.streams.names[i])
            self.dropped_episodes += call.action is not None
            self._failed(i, EnvTimeout(f"{self.streams.names[i]} did not answer within {self.step_timeout:g} s"))

    def _failed(self, i: int, error: BaseException) -> None:
        """Env i raised or hung: replace it, unless it failed `max_failures` times in a row."""
        if self.remake is None:
            raise error
        self.env_timeouts += isinstance(error, EnvTimeout)
        if self.failures.failed(i, error):
            return
        self.env_restarts += 1
        self._submit_start(i, replace=True)


def _close_quietly(env: gymnasium.Env) -> None:
    try:
        env.close()
    except Exception:
        pass  # a crashed simulator may not close cleanly; nothing depends on it any more
