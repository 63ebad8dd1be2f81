"""WeightBoard: where the learner posts its latest weights and runners look them up.

The learner `ray.put`s a weight set once and posts the reference here; every runner that asks
gets the same reference, so the weights cross the network once per node (into that node's object
store), not once per runner. The board holds the reference, which keeps the object alive until
the next set replaces it.
"""
from __future__ import annotations

from typing import Any

import ray


class WeightBoard:
    def __init__(self) -> None:
        self._version = 0
        self._ref: list[ray.ObjectRef] | None = None

    def publish(self, version: int, ref: list[ray.ObjectRef]) -> None:
        """`ref` is wrapped in a list so that Ray passes the reference, not the weights."""
        if version >= self._version:
            self._version, self._ref = version, ref

    def latest(self, have_version: int = -1) -> tuple[int, list[ray.ObjectRef]] | None:
        """The newest (version, [ref]) if newer than what the caller has, else None."""
        if self._ref is None or self._version <= have_version:
            return None
        return self._version, self._ref

    def version(self) -> int:
        return self._version


def make_weight_board(**options: Any) -> ray.actor.ActorHandle:
    return ray.remote(num_cpus=0, max_restarts=-1)(WeightBoard).options(**options).remote()
