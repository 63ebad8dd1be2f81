"""One replay shard: a ReplayStorage whose every chunk is on disk before the insert is acknowledged.

``ReplayShard`` is a plain class (usable in-process in tests) that ``make_shard_actor`` turns into a
restartable Ray actor: a restarted shard re-runs ``__init__``, which reloads its directory, so every
acknowledged chunk is back before the actor serves its next call. Inserts are idempotent by chunk id,
so a client may safely retry an insert whose acknowledgement it never received.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import ray

from replay.chunk import Chunk, ChunkData
from replay.persistence import ChunkFiles
from replay.storage import Batch, ReplayStorage, check_same_schema


@dataclass(frozen=True)
class InsertAck:
    """Proof that a chunk is durable on its shard."""

    chunk_id: str
    shard: int
    size: int  # shard size in steps after the insert


@dataclass(frozen=True)
class ShardSample:
    """One shard's share of a batch, and how many sequence starts it holds (for the next split)."""

    batch: Batch | None
    keys: np.ndarray | None
    num_sequences: int


class ReplayShard:
    """Persistent, sampleable replay storage for the streams hashed to one shard."""

    def __init__(
        self,
        index: int,
        directory: str | os.PathLike,
        capacity: int,
        mode: str = "uniform",
        *,
        recency_half_life: float | None = None,
        priority_alpha: float = 0.6,
        seed: int | None = None,
    ) -> None:
        """recency_half_life is in this shard's steps (default: a quarter of its capacity); new and
        updated priorities are raised to priority_alpha (0: uniform, 1: proportional) in 'priority' mode."""
        self._index = index
        self._files = ChunkFiles(directory)
        self._storage = ReplayStorage(
            capacity,
            mode,
            recency_half_life=recency_half_life,
            priority_alpha=priority_alpha,
            start_key=self._files.key_end(),  # keys handed out before a restart stay stale, not reused
        )
        self._rng = np.random.default_rng(seed)
        self._inserted_steps = 0
        self._sampled_steps = 0
        self._reloaded_chunks = self._files.replay(self._add)

    def insert(self, data: ChunkData, stream: str, chunk_id: str, weight_version: int) -> InsertAck:
        """Persist, then store, a chunk; a chunk id already stored is acknowledged again, not duplicated."""
        return self.insert_many([Chunk(data, stream, chunk_id, weight_version)])[0]

    def insert_many(self, chunks: Sequence[Chunk]) -> list[InsertAck]:
        """Persist, then store, chunks in order (one directory sync for all); ids already stored are
        acknowledged again, not duplicated. All are checked before any is written, so a bad chunk
        fails the whole call and stores nothing."""
        new: dict[str, Chunk] = {}
        for chunk in chunks:
            if chunk.chunk_id not in self._storage and chunk.chunk_id not in new:
                new[chunk.chunk_id] = replace(chunk, weight_version=int(chunk.weight_version))
        lengths = [self._storage.validate(c.data, c.chunk_id) for c in new.values()]
        check_same_schema([c.data for c in new.values()])
        first_keys = self._storage.next_key + np.cumsum([0, *lengths])[:-1]
        self._files.write_many(list(new.values()), first_keys)
        for chunk, n in zip(new.values(), lengths):
            self._add(chunk)
            self._inserted_steps += n
        return [InsertAck(chunk.chunk_id, self._index, self._storage.size) for chunk in chunks]

    def sample(self, batch_size: int, seq_len: int) -> Batch | None:
        """A [B, T] batch from this shard, or None while no stream holds seq_len steps."""
        return self.sample_part(batch_size, seq_len).batch

    def sample_part(self, batch_size: int, seq_len: int, with_keys: bool = False) -> ShardSample:
        """This shard's share of a stratified batch; batch_size 0 only reports num_sequences."""
        available = self._storage.num_sequences(seq_len)
        if batch_size == 0 or available == 0:
            return ShardSample(None, None, available)
        batch, keys = self._storage.sample_with_keys(batch_size, seq_len, self._rng)
        self._sampled_steps += batch_size * seq_len
        return ShardSample(batch, keys if with_keys else None, available)

    def update_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> None:
        self._storage.update_priorities(keys, priorities)

    def num_sequences(self, seq_len: int) -> int:
        return self._storage.num_sequences(seq_len)

    def size(self) -> int:
        return self._storage.size

    def ids(self) -> list[str]:
        return self._storage.ids()

    def stats(self) -> dict[str, Any]:
        storage = self._storage
        return {
            "shard": self._index,
            "pid": os.getpid(),  # changes when the actor was restarted
            "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
            "size": storage.size,
            "capacity": storage.capacity,
            "mode": storage.mode,
            "num_chunks": storage.num_chunks,
            "nbytes": storage.nbytes,
            "inserted_steps": self._inserted_steps,
            "sampled_steps": self._sampled_steps,
            "reloaded_chunks": self._reloaded_chunks,
            "corrupt_files": list(self._files.corrupt),
        }

    def _add(self, chunk: Chunk) -> None:
        for evicted in self._storage.add(chunk.data, chunk.stream, chunk.chunk_id, chunk.weight_version):
            self._files.delete(evicted)


def make_shard_actor(
    index: int,
    directory: str | os.PathLike,
    capacity: int,
    *,
    max_restarts: int = -1,
    num_cpus: float = 0,
    placement: dict[str, Any] | None = None,
    **shard_kwargs: Any,
) -> ray.actor.ActorHandle:
    """Start a ReplayShard actor that Ray restarts (reloading its files) up to max_restarts times
    (-1: without limit).

    Calls are not retried by Ray (``max_task_retries=0``): the service retries inserts itself, with
    back-off, and routes samples around a shard that is down. ``num_cpus=0`` because shards mostly wait
    on I/O and must not starve runners and the learner of CPU slots. ``placement`` holds further
    Ray actor options that decide where shards go (``resources``, ``memory``, ``scheduling_strategy``).
    """
    actor = ray.remote(ReplayShard).options(
        max_restarts=max_restarts, max_task_retries=0, num_cpus=num_cpus, **(placement or {})
    )
    return actor.remote(index, directory, capacity, **shard_kwargs)
