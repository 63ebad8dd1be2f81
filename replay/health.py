"""Which replay shards are in rotation, as one client of the service sees it.

A shard that failed a call or let it run past the call timeout (hung, or restarting and reloading
its files) is taken out of rotation and sent a cheap probe. It rejoins only once a probe answers:
a stopped process never answers, so no client keeps paying the call timeout to find it still hung;
a probe that fails (the actor died and Ray is restarting it) is sent again after a growing back-off.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import ray

MAX_BACKOFF_S = 5.0


class ShardHealth:
    def __init__(self, shards: Sequence[ray.actor.ActorHandle], backoff_s: float = 0.05) -> None:
        self._shards = list(shards)
        self._backoff_s = backoff_s
        self._probes: dict[int, ray.ObjectRef | None] = {}  # shards out of rotation -> their probe in flight
        self._probe_at: dict[int, float] = {}  # when to probe again a shard whose last probe failed
        self._wait: dict[int, float] = {}
        self.outages = 0  # times a shard left the rotation

    def __getstate__(self) -> dict[str, Any]:
        """A copy for another process starts with every shard in rotation (refs are not its own)."""
        return {**self.__dict__, "_probes": {}, "_probe_at": {}, "_wait": {}}

    def live(self) -> list[int]:
        """Indices of the shards in rotation, after looking (without waiting) at the probes."""
        now = time.monotonic()
        for shard in list(self._probes):
            self._check_probe(shard, now)
        return [i for i in range(len(self._shards)) if i not in self._probes]

    def is_live(self, shard: int) -> bool:
        return shard not in self._probes

    def mark_down(self, shard: int) -> None:
        """Take a shard out of rotation (no-op if it is out already) and probe it."""
        if shard in self._probes:
            return
        self.outages += 1
        self._wait[shard] = self._backoff_s
        self._probes[shard] = self._shards[shard].size.remote()

    def _check_probe(self, shard: int, now: float) -> None:
        probe = self._probes[shard]
        if probe is None:
            if now >= self._probe_at[shard]:
                self._probes[shard] = self._shards[shard].size.remote()
            return
        if not ray.wait([probe], timeout=0)[0]:
            return  # still hung, or still reloading its files
        try:
            ray.get(probe, timeout=0)
        except ray.exceptions.RayError:  # died meanwhile: Ray restarts it, ask again later
            self._probes[shard] = None
            self._probe_at[shard] = now + self._wait[shard]
            self._wait[shard] = min(2 * self._wait[shard], MAX_BACKOFF_S)
            return
        del self._probes[shard]
        self._probe_at.pop(shard, None)
