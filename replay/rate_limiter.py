"""The replay ratio as one shared object: runners and the learner block on it to keep their pace.

After ``min_size`` env steps have been inserted (prefill, which never blocks), the limiter keeps
``sampled ≈ samples_per_insert * (inserted - min_size)`` within ``± tolerance`` replayed steps:

* a sample of n steps is granted iff ``inserted >= min_size`` and ``sampled + n - target <= tolerance``;
* an insert of n steps is granted iff prefill is not over, or ``target(inserted + n) - sampled <= tolerance``.

No deadlock: if an insert of n_i is refused, ``sampled - target < ρ·n_i - tolerance``, so a sample of n_s
is granted whenever ``2·tolerance >= ρ·n_i + n_s``. The limiter is told the largest insert and sample
it will see and demands ``tolerance >= ρ·max_insert_steps + max_sample_steps``, twice that bound, as a
margin for rounding; any larger request is refused with ValueError instead of risking a stall.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import ray


def min_tolerance(samples_per_insert: float, max_insert_steps: int, max_sample_steps: int) -> float:
    """Smallest tolerance (in replayed steps) accepted for these request sizes: one chunk's worth of
    owed samples plus one batch."""
    return samples_per_insert * max_insert_steps + max_sample_steps


def check_limits(
    samples_per_insert: float, min_size: int, tolerance: float, max_insert_steps: int, max_sample_steps: int
) -> None:
    """ValueError unless these settings can never deadlock a waiting runner against a waiting learner."""
    if samples_per_insert <= 0 or min_size < 0 or max_insert_steps < 1 or max_sample_steps < 1:
        raise ValueError(
            "need samples_per_insert > 0, min_size >= 0, max_insert_steps >= 1, max_sample_steps >= 1"
        )
    needed = min_tolerance(samples_per_insert, max_insert_steps, max_sample_steps)
    if tolerance < needed:
        raise ValueError(
            f"tolerance={tolerance} replayed steps could deadlock runners against the learner: it must be "
            f">= samples_per_insert * max_insert_steps + max_sample_steps = {samples_per_insert} * "
            f"{max_insert_steps} + {max_sample_steps} = {needed}"
        )


class SamplesPerInsertLimiter:
    """Async Ray actor: ``acquire_*`` wait until the ratio allows the request, then count it.

    An acquire with a timeout returns False when it runs out; after ``close()`` every waiting and
    future acquire returns False at once, so no runner or learner hangs at shutdown.
    """

    def __init__(
        self,
        samples_per_insert: float,
        min_size: int,
        tolerance: float,
        max_insert_steps: int,
        max_sample_steps: int,
    ) -> None:
        check_limits(samples_per_insert, min_size, tolerance, max_insert_steps, max_sample_steps)
        self._ratio = samples_per_insert
        self._min_size = min_size
        self._tolerance = tolerance
        self._max_insert = max_insert_steps
        self._max_sample = max_sample_steps
        self._inserted = 0
        self._sampled = 0
        self._closed = False
        self._changed = asyncio.Condition()

    async def acquire_insert(self, n_steps: int, timeout: float | None = None) -> bool:
        """Wait until n_steps env steps may be inserted and count them; False on timeout or close."""
        return await self.acquire_inserts([n_steps], timeout) == 1

    async def acquire_inserts(self, sizes: list[int], timeout: float | None = None) -> int:
        """Wait until the first of these inserts (sizes in env steps) may happen, then grant and
        count the longest prefix the ratio allows at once; returns its length (0 on timeout or close).

        One call for a runner's batch of chunks, yet each chunk is judged as its own insert, so the
        no-deadlock bound (and the tolerance it needs) stays that of a single chunk.
        """
        for n_steps in sizes:
            _check_request("insert", n_steps, self._max_insert)
        if not sizes:
            return 0
        async with self._changed:
            if not await self._wait_until(lambda: self._insert_allowed(sizes[0]), timeout):
                return 0
            granted = 0
            for n_steps in sizes:
                if granted and not self._insert_allowed(n_steps):
                    break
                self._inserted += n_steps
                granted += 1
            self._changed.notify_all()
            return granted

    async def acquire_sample(self, n_steps: int, timeout: float | None = None) -> bool:
        """Wait until n_steps replayed steps may be sampled and count them; False on timeout or close."""
        _check_request("sample", n_steps, self._max_sample)
        async with self._changed:
            if not await self._wait_until(lambda: self._sample_allowed(n_steps), timeout):
                return False
            self._sampled += n_steps
            self._changed.notify_all()
            return True

    def inserted(self) -> int:
        return self._inserted

    def sampled(self) -> int:
        return self._sampled

    def ratio(self) -> float:
        """Measured replayed steps per env step inserted after prefill (0 until prefill is over)."""
        trained_on = self._inserted - self._min_size
        return self._sampled / trained_on if trained_on > 0 else 0.0

    def state(self) -> dict[str, Any]:
        """Counters to checkpoint; with load_state a resumed run keeps its ratio (and skips prefill)."""
        return {"inserted": self._inserted, "sampled": self._sampled}

    async def load_state(self, state: dict[str, Any]) -> None:
        async with self._changed:
            self._inserted = int(state["inserted"])
            self._sampled = int(state["sampled"])
            self._changed.notify_all()

    async def close(self) -> None:
        """Release every waiter (they get False) and refuse all later requests."""
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    def is_closed(self) -> bool:
        return self._closed

    def _target(self, inserted: int) -> float:
        return self._ratio * (inserted - self._min_size)

    def _insert_allowed(self, n_steps: int) -> bool:
        prefill = self._inserted < self._min_size
        return prefill or self._target(self._inserted + n_steps) - self._sampled <= self._tolerance

    def _sample_allowed(self, n_steps: int) -> bool:
        if self._inserted < self._min_size:
            return False
        return self._sampled + n_steps - self._target(self._inserted) <= self._tolerance

    async def _wait_until(self, allowed: Callable[[], bool], timeout: float | None) -> bool:
        """With the condition held: wait for allowed() or close; True iff allowed while still open."""

        def ready() -> bool:
            return self._closed or allowed()

        if not ready():  # checked first: wait_for(timeout=0) would refuse without ever looking
            try:
                await asyncio.wait_for(self._changed.wait_for(ready), timeout)
            except asyncio.TimeoutError:
                return False
        return not self._closed


def _check_request(kind: str, n_steps: int, max_steps: int) -> None:
    if not 1 <= n_steps <= max_steps:
        raise ValueError(
            f"{kind} of {n_steps} steps is outside [1, {max_steps}]: larger requests void the "
            "no-deadlock guarantee; raise max_{kind}_steps (and the tolerance) instead"
        )


def make_limiter_actor(
    samples_per_insert: float,
    min_size: int,
    tolerance: float,
    max_insert_steps: int,
    max_sample_steps: int,
    *,
    name: str | None = "replay_limiter",
    placement: dict[str, Any] | None = None,
) -> ray.actor.ActorHandle:
    """Start the limiter as a (by default named) Ray actor, validating the settings here so a bad
    tolerance fails with ValueError in the caller rather than later inside the actor. ``placement``
    holds Ray actor options that decide where it runs (e.g. ``scheduling_strategy``)."""
    check_limits(samples_per_insert, min_size, tolerance, max_insert_steps, max_sample_steps)
    options: dict[str, Any] = {"num_cpus": 0, **(placement or {})}
    if name is not None:
        options["name"] = name
    return (
        ray.remote(SamplesPerInsertLimiter)
        .options(**options)
        .remote(samples_per_insert, min_size, tolerance, max_insert_steps, max_sample_steps)
    )
