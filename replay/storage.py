"""In-process replay storage: chunks in preallocated ring arrays, sampled as stream-contiguous sequences.

Every step is written once into per-key ring arrays (images stay uint8, no frame is duplicated across
overlapping sequences); sequences are assembled at sample time by following, step by step, a pointer
to the next step of the same stream, so a sequence may run across chunk boundaries of its stream.

Each stored step has a *key*: a global, monotonically increasing step counter. Its ring slot is
``key % capacity`` and, because chunks are evicted oldest-first, the stored keys are always the
contiguous range ``[oldest_key, next_key)``. Keys are what priority updates refer to, so a key that has
been evicted (and whose slot was reused) is recognised as stale instead of hitting the wrong step.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from replay.chunk import ChunkData
from replay.sum_tree import SumTree

Batch = dict[str, np.ndarray]

SAMPLING_MODES = ("uniform", "recency", "priority")
WEIGHT_VERSION = "weight_version"  # batch entry added by sampling, so chunks may not use the name
_REJECTION_ROUNDS = 4  # proposal rounds before the exact O(size) draw takes the few leftover rows
_MIN_PRIORITY = 1e-6  # keeps every stored start reachable, and the sum tree's total positive


def chunk_length(chunk: ChunkData) -> int:
    """The leading length every array of a chunk shares; ValueError if there is none."""
    lengths = {name: (np.shape(array)[:1] or (0,))[0] for name, array in chunk.items()}
    if not lengths or len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise ValueError(f"chunk arrays must share one non-zero leading length, got {lengths}")
    return next(iter(lengths.values()))


def check_same_schema(chunks: Sequence[ChunkData]) -> None:
    """ValueError unless the chunks share keys, dtypes and trailing shapes (what storage checks
    against what it holds, applied within a batch that arrives before storage holds anything)."""
    schemas = [{name: (np.asarray(a).dtype, np.shape(a)[1:]) for name, a in chunk.items()} for chunk in chunks]
    for schema in schemas[1:]:
        if schema != schemas[0]:
            raise ValueError(f"chunks of one insert differ in keys, dtypes or shapes: {schemas[0]} vs {schema}")


@dataclass(frozen=True, slots=True)
class _ChunkRecord:
    chunk_id: str
    stream: int
    length: int


class _StreamTable:
    """Per-stream positions with recycled integer ids, so streams that age out of the buffer cost nothing."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self._names: list[str] = []
        self._free: list[int] = []
        self.end = np.zeros(8, np.int64)  # stream position one past the stream's newest stored step
        self.length = np.zeros(8, np.int64)  # stored steps of the stream
        self.last_key = np.zeros(8, np.int64)  # key of the stream's newest stored step

    def id_for(self, name: str) -> int:
        sid = self.ids.get(name)
        if sid is not None:
            return sid
        sid = self._free.pop() if self._free else self._new_id()
        self.ids[name] = sid
        self._names[sid] = name
        self.end[sid] = self.length[sid] = 0
        return sid

    def drop_oldest(self, sid: int, n: int) -> None:
        self.length[sid] -= n
        if self.length[sid] == 0:
            del self.ids[self._names[sid]]
            self._free.append(sid)

    def _new_id(self) -> int:
        sid = len(self._names)
        self._names.append("")
        if sid == self.end.size:
            self.end, self.length, self.last_key = (
                np.concatenate([a, np.zeros_like(a)]) for a in (self.end, self.length, self.last_key)
            )
        return sid


class ReplayStorage:
    """Capacity-bounded FIFO of chunks; samples [B, T] sequences uniformly, by recency or by priority.

    ``recency`` weighs a start by 2^(-age / recency_half_life), age in steps behind the newest stored
    step (default half-life: a quarter of the capacity). ``priority`` weighs it by priority^alpha; new
    steps get the largest priority seen so far, ``update_priorities`` sets them per sequence start.
    """

    def __init__(
        self,
        capacity: int,
        mode: str = "uniform",
        *,
        recency_half_life: float | None = None,
        priority_alpha: float = 0.6,
        start_key: int = 0,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 step, got {capacity}")
        if mode not in SAMPLING_MODES:
            raise ValueError(f"mode must be one of {SAMPLING_MODES}, got {mode!r}")
        half_life = capacity / 4 if recency_half_life is None else recency_half_life
        if half_life <= 0 or priority_alpha < 0:
            raise ValueError("recency_half_life must be > 0 and priority_alpha >= 0")
        self._capacity = capacity
        self._mode = mode
        self._log_decay = -np.log(2.0) / half_life  # log of the recency weight ratio of adjacent steps
        self._alpha = priority_alpha
        self._max_priority = 1.0
        self._data: dict[str, np.ndarray] = {}
        self._stream = np.zeros(capacity, np.int32)
        self._stream_pos = np.zeros(capacity, np.int64)
        self._next = np.zeros(capacity, np.int64)  # key of the following step of the same stream
        self._version = np.zeros(capacity, np.int64)
        self._priority = SumTree(capacity) if mode == "priority" else None
        self._streams = _StreamTable()
        self._chunks: deque[_ChunkRecord] = deque()
        self._ids: set[str] = set()
        self._oldest_key = self._next_key = start_key

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def size(self) -> int:
        """Stored steps."""
        return self._next_key - self._oldest_key

    @property
    def num_chunks(self) -> int:
        return len(self._chunks)

    @property
    def next_key(self) -> int:
        """Key the next added step will get (persisted so a reloaded shard never reuses old keys)."""
        return self._next_key

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated arrays (data and per-step bookkeeping)."""
        arrays = [*self._data.values(), self._stream, self._stream_pos, self._next, self._version]
        return sum(a.nbytes for a in arrays) + (self._priority.nbytes if self._priority else 0)

    def ids(self) -> list[str]:
        """Stored chunk ids, oldest first."""
        return [record.chunk_id for record in self._chunks]

    def __contains__(self, chunk_id: str) -> bool:
        return chunk_id in self._ids

    def num_sequences(self, seq_len: int) -> int:
        """Number of valid start positions for sequences of seq_len steps."""
        return int(np.maximum(self._streams.length - seq_len + 1, 0).sum())

    def validate(self, chunk: ChunkData, chunk_id: str) -> int:
        """Check a chunk fits this storage (keys, dtypes, trailing shapes, new id); returns its length."""
        n = chunk_length(chunk)
        if n > self._capacity:
            raise ValueError(f"chunk of {n} steps exceeds the capacity of {self._capacity}")
        if WEIGHT_VERSION in chunk:
            raise ValueError(f"{WEIGHT_VERSION!r} is reserved for the batch, not a chunk key")
        if chunk_id in self._ids:
            raise ValueError(f"chunk id {chunk_id!r} is already stored")
        if self._data and set(chunk) != set(self._data):
            raise ValueError(f"chunk keys {sorted(chunk)} differ from stored keys {sorted(self._data)}")
        for name, stored in self._data.items():
            array = np.asarray(chunk[name])
            if array.dtype != stored.dtype or array.shape[1:] != stored.shape[1:]:
                raise ValueError(
                    f"{name!r}: got {array.dtype}{list(array.shape[1:])}, "
                    f"stored as {stored.dtype}{list(stored.shape[1:])}"
                )
        return n

    def add(self, chunk: ChunkData, stream: str, chunk_id: str, weight_version: int) -> list[str]:
        """Append a chunk after the previous chunk of its stream; returns evicted chunk ids, oldest first."""
        n = self.validate(chunk, chunk_id)
        if not self._data:
            self._data = {
                name: np.empty((self._capacity, *np.shape(a)[1:]), np.asarray(a).dtype)
                for name, a in chunk.items()
            }
        evicted = []
        while self.size + n > self._capacity:
            evicted.append(self._evict_oldest())
        first = self._next_key
        keys = np.arange(first, first + n)
        slots = keys % self._capacity
        for name, ring in self._data.items():
            self._ring_write(ring, first, np.asarray(chunk[name]))
        streams = self._streams
        sid = streams.id_for(stream)
        if streams.length[sid]:
            self._next[streams.last_key[sid] % self._capacity] = first
        self._next[slots] = keys + 1  # the last step's pointer is only followed once the stream continues
        self._stream[slots] = sid
        self._stream_pos[slots] = streams.end[sid] + np.arange(n)
        self._version[slots] = weight_version
        streams.end[sid] += n
        streams.length[sid] += n
        streams.last_key[sid] = first + n - 1
        if self._priority is not None:
            self._priority.set(slots, self._max_priority**self._alpha)
        self._next_key += n
        self._chunks.append(_ChunkRecord(chunk_id, sid, n))
        self._ids.add(chunk_id)
        return evicted

    def sample(self, batch_size: int, seq_len: int, rng: np.random.Generator) -> Batch:
        """[B, T, ...] sequences plus weight_version [B]; ValueError if no stream holds seq_len steps."""
        return self._gather(self._sample_keys(batch_size, seq_len, rng), seq_len)

    def sample_with_keys(
        self, batch_size: int, seq_len: int, rng: np.random.Generator
    ) -> tuple[Batch, np.ndarray]:
        """Like sample, plus the int64 [B] start keys that update_priorities refers to."""
        keys = self._sample_keys(batch_size, seq_len, rng)
        return self._gather(keys, seq_len), keys

    def update_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> None:
        """Set the priority of sequence starts; keys evicted since they were sampled are ignored."""
        if self._priority is None:
            raise ValueError("update_priorities needs mode='priority'")
        keys = np.asarray(keys, np.int64).ravel()
        values = np.asarray(priorities, np.float64).ravel()
        if keys.shape != values.shape:
            raise ValueError(f"{keys.size} keys but {values.size} priorities")
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError("priorities must be finite and >= 0")
        stored = (keys >= self._oldest_key) & (keys < self._next_key)
        values = np.maximum(values[stored], _MIN_PRIORITY)
        if values.size:
            self._max_priority = max(self._max_priority, float(values.max()))
            self._priority.set(keys[stored] % self._capacity, values**self._alpha)

    def _evict_oldest(self) -> str:
        record = self._chunks.popleft()
        if self._priority is not None:
            slots = np.arange(self._oldest_key, self._oldest_key + record.length) % self._capacity
            self._priority.set(slots, 0.0)
        self._streams.drop_oldest(record.stream, record.length)
        self._oldest_key += record.length
        self._ids.remove(record.chunk_id)
        return record.chunk_id

    def _ring_write(self, ring: np.ndarray, first_key: int, values: np.ndarray) -> None:
        start = first_key % self._capacity
        head = min(len(values), self._capacity - start)
        ring[start : start + head] = values[:head]
        ring[: len(values) - head] = values[head:]

    def _valid(self, keys: np.ndarray, seq_len: int) -> np.ndarray:
        """Whether each key is stored and its stream holds seq_len steps from it on."""
        slots = keys % self._capacity
        remaining = self._streams.end[self._stream[slots]] - self._stream_pos[slots]
        return (keys >= self._oldest_key) & (keys < self._next_key) & (remaining >= seq_len)

    def _sample_keys(self, batch_size: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
        """Rejection sampling from the mode's distribution over all stored keys, restricted to valid starts.

        Invalid starts are only the last seq_len - 1 steps of each stream, so almost every proposal is
        accepted; rows still missing after a few rounds are drawn exactly, which keeps the result exact.
        """
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
        if self.num_sequences(seq_len) == 0:
            raise ValueError(f"no stream holds {seq_len} consecutive steps yet")
        keys = np.empty(batch_size, np.int64)
        todo = np.arange(batch_size)
        for _ in range(_REJECTION_ROUNDS):
            proposal = self._propose(todo.size, rng)
            accepted = self._valid(proposal, seq_len)
            keys[todo[accepted]] = proposal[accepted]
            todo = todo[~accepted]
            if todo.size == 0:
                return keys
        keys[todo] = self._draw_exact(todo.size, seq_len, rng)
        return keys

    def _propose(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self._priority is not None:
            slots = self._priority.sample(n, rng)
            return self._oldest_key + (slots - self._oldest_key) % self._capacity
        if self._mode == "recency":
            # Inverse CDF of the geometric age distribution truncated to the stored range.
            stored_mass = -np.expm1(self.size * self._log_decay)
            age = np.floor(np.log1p(-rng.random(n) * stored_mass) / self._log_decay).astype(np.int64)
            return self._next_key - 1 - np.minimum(age, self.size - 1)
        return rng.integers(self._oldest_key, self._next_key, size=n)

    def _draw_exact(self, n: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
        keys = np.arange(self._oldest_key, self._next_key)
        keys = keys[self._valid(keys, seq_len)]
        if self._priority is not None:
            weights = self._priority.get(keys % self._capacity)
        elif self._mode == "recency":
            weights = np.exp((keys[-1] - keys) * self._log_decay)
        else:
            return rng.choice(keys, size=n)
        return rng.choice(keys, size=n, p=weights / weights.sum())

    def _gather(self, keys: np.ndarray, seq_len: int) -> Batch:
        slots = np.empty((keys.size, seq_len), np.int64)
        current = keys
        for t in range(seq_len):
            slots[:, t] = current % self._capacity
            current = self._next[slots[:, t]]
        batch = {name: ring[slots] for name, ring in self._data.items()}
        batch[WEIGHT_VERSION] = self._version[slots[:, 0]]
        return batch
