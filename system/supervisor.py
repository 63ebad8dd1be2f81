"""Keeps the runners' `run` calls going, with back-off, so a crash loop neither spins nor spams.

A runner whose `run` fails (its process died, its environment keeps failing, it cannot be
created) is started again after a delay that doubles with each failure in a row (capped at
`MAX_DELAY_S`); after `max_failures` in a row it is given up on and the run goes on with the
others, or stops with a clear message when none is left. A runner that ran `HEALTHY_AFTER_S`
before failing starts a new series. Ray restarts a dead runner process itself (up to
`runners.max_restarts`, also on another node when its node is lost): calls fail fast while it
restarts, so such a runner is probed every `RESTART_POLL_S` until it answers (one failure, however
long the restart takes, up to `RESTART_WAIT_S`). One that Ray no longer restarts is re-created here.

The supervisor owns the run's runner set: the driver asks it for their stats and tells it to stop,
flush or release them, and never holds a runner handle of its own (a re-created runner would
leave it stale).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import ray

from system.failures import RunnersFailed

MAX_DELAY_S = 60.0
HEALTHY_AFTER_S = 60.0
RESTART_POLL_S = 1.0
RESTART_WAIT_S = 300.0
READY_GET_S = 60.0  # fetching a result ray.wait found ready: only its transfer is left
STATS_TIMEOUT_S = 30.0  # a runner that does not answer a stats call within this is skipped for a round


class RunnerSupervisor:
    def __init__(self, runners: list[ray.actor.ActorHandle], make_runner: Callable[[int], ray.actor.ActorHandle],
                 max_failures: int, base_delay: float):
        self.runners = runners  # the handles, replaced in place when a runner is re-created
        self.make_runner = make_runner
        self.max_failures = max(1, max_failures)
        self.base_delay = base_delay
        self.refs: dict[int, ray.ObjectRef] = {}  # the `run` call of each working runner
        self.started: dict[int, float] = {}
        self.in_a_row = [0] * len(runners)
        self.retry_at: dict[int, float] = {}  # runners waiting out their back-off
        self.dead: set[int] = set()  # runners Ray will not restart: re-created at their next start
        self.restarting: dict[int, float] = {}  # runners Ray is restarting -> since when
        self.probes: dict[int, ray.ObjectRef] = {}  # is a restarting runner back?
        self.given_up: dict[int, str] = {}  # runner -> its last error
        self.failures = 0  # over the run

    def start(self) -> None:
        for index in range(len(self.runners)):
            self._start(index)

    def check(self) -> None:
        """Start the runners whose back-off is over; note the `run` calls that ended."""
        now = time.monotonic()
        for index, at in list(self.retry_at.items()):
            if now >= at:
                del self.retry_at[index]
                if index in self.restarting:
                    self.probes[index] = self.runners[index].where.remote()
                else:
                    self._start(index)
        for index, probe in list(self.probes.items()):
            if ray.wait([probe], timeout=0)[0]:
                del self.probes[index]
                self._probed(index, probe)
        for index, ref in list(self.refs.items()):
            if not ray.wait([ref], timeout=0)[0]:
                continue
            del self.refs[index]
            try:
                ray.get(ref, timeout=READY_GET_S)  # ready: only its transfer is left
            except ray.exceptions.RayError as error:
                self._failed(index, error)
                continue
            raise RuntimeError(f"runner {index} stopped before the run ended")
        if not self.refs and not self.retry_at and not self.probes:
            last = "; ".join(f"runner {i}: {why}" for i, why in sorted(self.given_up.items()))
            raise RunnersFailed(f"every runner failed {self.max_failures} times in a row and was given up on ({last}); "
                                "fix the cause, then `harmonyray resume LOGDIR`")

    def alive(self) -> list[ray.actor.ActorHandle]:
        """Runners that can answer calls now (not dead, not waiting for Ray to restart them)."""
        return [r for i, r in enumerate(self.runners) if i not in self.dead and i not in self.restarting]

    def stats(self) -> list[dict[str, Any]]:
        """Stats of the runners that answer; one that is being restarted is skipped this round."""
        refs = [r.stats.remote() for r in self.runners]
        stats = []
        for ref in refs:
            try:
                stats.append(ray.get(ref, timeout=STATS_TIMEOUT_S))
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                continue
        return stats

    def stop(self, timeout: float | None) -> None:
        """Ask the runners that can answer to stop (they stop collecting within a step)."""
        answers([r.stop.remote() for r in self.alive()], timeout=timeout)

    def wait_stopped(self, timeout: float | None) -> None:
        """Wait for the runners' `run` calls to return (a stopped runner's returns at once)."""
        answers(list(self.refs.values()), timeout=timeout)

    def flush(self, timeout: float | None) -> None:
        """Let the stopped runners insert the chunks they still queue (within the timeout)."""
        answers([r.flush.remote() for r in self.alive()], timeout=timeout)

    def release(self) -> None:
        """Kill every runner for good (the run is over: nothing is left in them)."""
        for runner in self.runners:
            ray.kill(runner, no_restart=True)

    def metrics(self) -> dict[str, float]:
        return {"runner/failures": self.failures, "runner/backing_off": len(set(self.retry_at) - set(self.restarting)),
                "runner/restarting": len(self.restarting), "runner/given_up": len(self.given_up)}

    def _start(self, index: int) -> None:
        if index in self.dead:
            try:
                ray.kill(self.runners[index], no_restart=True)
            except ray.exceptions.RayError:
                pass  # already gone
            self.runners[index] = self.make_runner(index)
            self.dead.discard(index)
        self.refs[index] = self.runners[index].run.remote()
        self.started[index] = time.monotonic()

    def _probed(self, index: int, probe: ray.ObjectRef) -> None:
        try:
            ray.get(probe, timeout=READY_GET_S)
        except ray.exceptions.ActorUnavailableError as error:
            if time.monotonic() - self.restarting[index] < RESTART_WAIT_S:
                self.retry_at[index] = time.monotonic() + RESTART_POLL_S  # still restarting: not another failure
                return
            self.restarting.pop(index)
            self._failed(index, error)
            return
        except ray.exceptions.RayError as error:
            self.restarting.pop(index)
            self._failed(index, error)
            return
        del self.restarting[index]
        self._start(index)  # back after Ray's restart

    def _failed(self, index: int, error: ray.exceptions.RayError) -> None:
        self.failures += 1
        healthy = time.monotonic() - self.started[index] >= HEALTHY_AFTER_S
        self.in_a_row[index] = 1 if healthy else self.in_a_row[index] + 1
        if isinstance(error, ray.exceptions.ActorDiedError):
            self.dead.add(index)
        elif isinstance(error, ray.exceptions.ActorUnavailableError):
            self.restarting[index] = time.monotonic()
        why = describe(error)
        n = self.in_a_row[index]
        if n >= self.max_failures:
            self.given_up[index] = why
            self.restarting.pop(index, None)
            left = len(self.runners) - len(self.given_up)
            print(f"runner {index}: given up after {n} failures in a row ({why}); {left} runner(s) go on", file=sys.stderr, flush=True)
            return
        delay = min(self.base_delay * 2 ** (n - 1), MAX_DELAY_S)
        self.retry_at[index] = time.monotonic() + delay
        what = "Ray restarts its process, asking it back in" if index in self.restarting else "starting it again in"
        print(f"runner {index} failed ({why}); {what} {delay:.1f} s (failure {n} of {self.max_failures} in a row)",
              file=sys.stderr, flush=True)


def describe(error: ray.exceptions.RayError) -> str:
    """One line: the runner's own exception for a task error, else Ray's first line."""
    cause = getattr(error, "cause", None)
    if isinstance(error, ray.exceptions.RayTaskError) and isinstance(cause, BaseException):
        error = cause
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def answers(refs: list[ray.ObjectRef], timeout: float | None) -> list[Any]:
    """The answers of the actors that give one within the timeout (a dead one gives none)."""
    if not refs:
        return []
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    out = []
    for ref in ready:
        try:
            out.append(ray.get(ref, timeout=READY_GET_S))
        except ray.exceptions.RayError:
            continue
    return out
