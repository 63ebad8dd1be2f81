"""Client of the sharded replay: sticky inserts and stratified parallel sampling (the prefetching
Sampler built on its public sampling calls is in replay/sampler.py).

A ``ReplayService`` is a small picklable object (actor handles plus a little routing state); the
driver creates it and passes copies to the runners and the learner. Each stream is pinned to one
shard by a stable hash of its name, so every client agrees on the placement without coordination
and a stream's chunks stay together (sequences can span them). A batch is split across shards in
proportion to the sequence starts each holds (systematic sampling: every shard gets the floor or the
ceiling of its share), fetched in parallel and concatenated; with ``mode='uniform'`` this is exactly
uniform over all starts of all shards. Recency and priority weights apply within each shard.

Availability: every call to a shard waits at most ``call_timeout_s``. A shard that fails or times out
leaves the rotation (replay/health.py) until a probe answers: its rows of a batch are drawn from the
other shards, and chunks of its streams go to another live shard meanwhile, each run of a stream's
chunks on one shard stored as its own segment (``stream#n``), so no stored sequence skips over steps.
A chunk whose insert timed out may thus be stored twice (the hung shard finishes it later): replay
is at-least-once, never lossy, for acknowledged chunks.
"""
from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import ray

from replay.chunk import Chunk, ChunkData
from replay.health import MAX_BACKOFF_S, ShardHealth
from replay.sampler import Sampler
from replay.shard import InsertAck, ShardSample, make_shard_actor
from replay.storage import WEIGHT_VERSION, Batch, chunk_length

_SHARD_ERRORS = (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError)
_KEY_SHARD_SHIFT = 48  # service-level priority keys carry the shard index above a shard's own step key
_GRANT_POLL_S = 1.0  # a runner's wait for the limiter, in bounded calls
_SUMMED_STATS = ("size", "capacity", "num_chunks", "nbytes", "inserted_steps", "sampled_steps")


class ReplayUnavailable(RuntimeError):
    """No shard acknowledged a chunk within the service's retry deadline."""


@dataclass
class SampleRequest:
    """A batch being fetched, from ``submit_sample``: callers may read its shape and with_keys;
    ``parts`` (one in-flight ``sample_part`` call per live shard) is for ``collect_sample``."""

    batch_size: int
    seq_len: int
    with_keys: bool
    parts: list[tuple[int, ray.ObjectRef]]


class ReplayService:
    """Inserts into and samples from K replay shards, paced by an optional shared rate limiter."""

    def __init__(
        self,
        shards: Sequence[ray.actor.ActorHandle],
        limiter: ray.actor.ActorHandle | None = None,
        *,
        seed: int | None = None,
        call_timeout_s: float = 10.0,
        insert_retry_s: float = 300.0,
        retry_backoff_s: float = 0.05,
    ) -> None:
        if not shards:
            raise ValueError("need at least one shard")
        if call_timeout_s <= 0:
            raise ValueError(f"call_timeout_s must be > 0, got {call_timeout_s}")
        self._shards = list(shards)
        self._limiter = limiter
        self._rng = np.random.default_rng(seed)
        self._call_timeout_s = call_timeout_s
        self._insert_retry_s = insert_retry_s
        self._retry_backoff_s = retry_backoff_s
        self._sequences = np.zeros(len(self._shards), np.int64)  # last reported starts per shard...
        self._sequences_len = 0  # ...for sequences of this length
        self._health = ShardHealth(self._shards, retry_backoff_s)
        self._segments: dict[str, tuple[int, int]] = {}  # stream -> (shard of its last chunk, segment)
        self.rerouted_chunks = 0  # chunks stored away from their stream's shard

    @classmethod
    def create(
        cls,
        num_shards: int,
        root: str | os.PathLike,
        capacity: int,
        *,
        limiter: ray.actor.ActorHandle | None = None,
        mode: str = "uniform",
        recency_half_life: float | None = None,
        priority_alpha: float = 0.6,
        max_restarts: int = -1,
        seed: int | None = None,
        num_cpus: float = 0,
        placement: dict[str, Any] | list[dict[str, Any]] | None = None,
        **client_options: Any,
    ) -> ReplayService:
        """Start num_shards shard actors in ``<root>/shard_<i>``, splitting capacity (total steps) evenly.

        recency_half_life is in total steps; each shard sees about 1/num_shards of them, so it
        applies recency_half_life / num_shards of its own steps. priority_alpha is the exponent that
        'priority' mode raises priorities to (0: uniform, 1: proportional; DreamerV3 uses 0.6).
        placement: Ray actor options for every shard, or a list of each shard's own.
        """
        if not 1 <= num_shards <= capacity:
            raise ValueError(f"need 1 <= num_shards <= capacity, got {num_shards} and {capacity}")
        half_life = None if recency_half_life is None else recency_half_life / num_shards
        seeds = np.random.SeedSequence(seed).spawn(num_shards + 1)
        shards = [
            make_shard_actor(
                i,
                os.path.join(root, f"shard_{i}"),
                capacity // num_shards + (i < capacity % num_shards),
                max_restarts=max_restarts,
                num_cpus=num_cpus,
                placement=placement[i] if isinstance(placement, list) else placement,
                mode=mode,
                recency_half_life=half_life,
                priority_alpha=priority_alpha,
                seed=int(seeds[i].generate_state(1)[0]),
            )
            for i in range(num_shards)
        ]
        service_seed = int(seeds[-1].generate_state(1)[0])
        return cls(shards, limiter, seed=service_seed, **client_options)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Copies made by Ray may hold read-only views of its object store; routing state must be writable."""
        self.__dict__.update({k: v.copy() if isinstance(v, np.ndarray) else v for k, v in state.items()})

    @property
    def shards(self) -> list[ray.actor.ActorHandle]:
        return list(self._shards)

    def shard_for(self, stream: str) -> int:
        """The shard that holds a stream; the same in every process (CRC32, unlike the salted hash())."""
        return zlib.crc32(stream.encode()) % len(self._shards)

    def insert(self, data: ChunkData, stream: str, chunk_id: str, weight_version: int) -> InsertAck | None:
        """Wait for the limiter, then return once the stream's shard has durably stored the chunk.

        Returns None without inserting when the limiter is closed (shutdown). Raises if the shard
        stays unreachable for insert_retry_s.
        """
        return self.insert_many([Chunk(data, stream, chunk_id, weight_version)])[0]

    def insert_many(self, chunks: Sequence[Chunk]) -> list[InsertAck | None]:
        """Insert chunks with one limiter call and one call per shard they go to, where each alone
        would take two calls; returns once every granted chunk is durable, acks in the chunks' order.

        The limiter grants a prefix of the chunks at a time (each judged as its own insert); the
        rest wait for the next grant. Chunks still waiting when the limiter closes get None.
        Unacknowledged chunks are stored again with back-off; ReplayUnavailable if some chunk is
        still not acknowledged after insert_retry_s.
        """
        acks: list[InsertAck | None] = [None] * len(chunks)
        done = 0
        while done < len(chunks):
            granted = self.grant_inserts([chunk_length(chunk.data) for chunk in chunks[done:]])
            if granted == 0:
                break
            todo = list(range(done, done + granted))
            deadline, backoff = time.monotonic() + self._insert_retry_s, self._retry_backoff_s
            while todo:
                for i, ack in zip(todo, self.store([chunks[i] for i in todo])):
                    acks[i] = ack
                todo = [i for i in todo if acks[i] is None]
                if todo and time.monotonic() + backoff > deadline:
                    raise ReplayUnavailable(f"{len(todo)} chunks not acknowledged by any replay shard within {self._insert_retry_s:g} s")
                if todo:
                    time.sleep(backoff)
                    backoff = min(2 * backoff, MAX_BACKOFF_S)
            done += granted
        return acks

    def grant_inserts(self, sizes: Sequence[int]) -> int:
        """Wait until the limiter lets the first of these chunks (sizes in env steps) in; returns how
        many of them, a prefix, it granted and counted (0 once it is closed). The wait is a series of
        bounded calls, so a limiter that stops answering raises GetTimeoutError instead of hanging."""
        if self._limiter is None:
            return len(sizes)
        return self._until_granted(lambda wait_s: self._limiter.acquire_inserts.remote(list(sizes), wait_s))

    def store(self, chunks: Sequence[Chunk]) -> list[InsertAck | None]:
        """One attempt to make granted chunks durable (the limiter is not asked again): one call per
        shard, all in flight at once, each waited for at most call_timeout_s. A chunk goes to its
        stream's shard, or, while that one is out of rotation, to another live shard; chunks of a
        shard that fails or times out get one more try on another live shard. Returns an ack per
        chunk, None where none came: store those again (inserts are idempotent by chunk id)."""
        acks: list[InsertAck | None] = [None] * len(chunks)
        todo, tried = list(range(len(chunks))), set[int]()
        while todo:
            live = [s for s in self._health.live() if s not in tried] or [s for s in range(len(self._shards)) if s not in tried]
            if not live:
                break
            by_shard: dict[int, list[int]] = {}
            for i in todo:
                by_shard.setdefault(self._target(chunks[i].stream, live), []).append(i)
            # passed by value: Ray inlines small chunks in the call instead of a store round trip
            refs = {shard: self._shards[shard].insert_many.remote([self._routed(chunks[i], shard) for i in rows]) for shard, rows in by_shard.items()}
            deadline = time.monotonic() + self._call_timeout_s
            for shard, ref in refs.items():
                try:
                    answer = ray.get(ref, timeout=max(deadline - time.monotonic(), 0.0))
                except _SHARD_ERRORS:
                    self._health.mark_down(shard)
                    continue
                for i, ack in zip(by_shard[shard], answer):
                    acks[i] = ack
            tried.update(refs)
            todo = [i for i in todo if acks[i] is None]
            if len(tried) >= 2:  # the home shard and one other: the caller backs off before more
                break
        return acks

    def _target(self, stream: str, live: list[int]) -> int:
        """The stream's own shard if live, else the next live shard after it."""
        home = self.shard_for(stream)
        return min(live, key=lambda s: (s - home) % len(self._shards))

    def _routed(self, chunk: Chunk, shard: int) -> Chunk:
        """The chunk as stored on `shard`: a stream that changes shards starts a new segment there."""
        home = self.shard_for(chunk.stream)
        last, segment = self._segments.get(chunk.stream, (home, 0))
        if shard != last:
            segment += 1
            self._segments[chunk.stream] = (shard, segment)
        if shard != home:
            self.rerouted_chunks += 1
        return chunk if segment == 0 else replace(chunk, stream=f"{chunk.stream}#{segment}")

    def sample(self, batch_size: int, seq_len: int) -> Batch | None:
        """Wait for the limiter, then a stratified [B, T] batch; None if the limiter is closed or no
        live shard holds seq_len consecutive steps of a stream (the limiter still counts that grant;
        a Sampler instead waits for data under its grant)."""
        result = self._sample(batch_size, seq_len, with_keys=False)
        return None if result is None else result[0]

    def sample_with_keys(self, batch_size: int, seq_len: int) -> tuple[Batch, np.ndarray] | None:
        """Like sample, plus int64 [B] keys for update_priorities."""
        return self._sample(batch_size, seq_len, with_keys=True)

    def sampler(self, batch_size: int, seq_len: int, prefetch: int = 2, with_keys: bool = False) -> Sampler:
        """A prefetching iterator of batches (replay/sampler.py), the learner's way to sample."""
        return Sampler(self, batch_size, seq_len, prefetch, with_keys)

    def request_sample_grant(self, n_steps: int) -> ray.ObjectRef | bool:
        """Ask the limiter for a sample of n_steps without waiting: True at once when there is no
        limiter, else a ref that answers True once granted (the steps then count as sampled) or
        False once the limiter is closed. The request waits at the limiter without bound;
        ray.cancel on the ref withdraws it while it still waits."""
        return True if self._limiter is None else self._limiter.acquire_sample.remote(n_steps)

    def submit_sample(self, batch_size: int, seq_len: int, with_keys: bool = False) -> SampleRequest:
        """Send the shard calls of one [B, T] batch and return without waiting; the limiter is not
        asked (the caller holds a grant). The batch is split over live shards by their last reported
        sequence counts, and every live shard gets a call, even for zero rows, so its count stays fresh."""
        live = np.array(self._health.live() or range(len(self._shards)))
        if seq_len != self._sequences_len or self._sequences[live].sum() == 0:
            self._refresh_sequences(live, seq_len)
        counts = _split(batch_size, self._sequences[live], self._rng)
        parts = [
            (i, self._shards[i].sample_part.remote(int(c), seq_len, with_keys))
            for i, c in zip(live.tolist(), counts)
        ]
        return SampleRequest(batch_size, seq_len, with_keys, parts)

    def collect_sample(self, request: SampleRequest) -> tuple[Batch, np.ndarray | None] | None:
        """Wait for a submitted batch, each round of shard calls at most call_timeout_s; rows of shards
        that fail are drawn again from shards that answered. Returns (batch, int64 [B] keys for
        update_priorities, or None unless the request asked for keys), or None when no live shard
        holds seq_len consecutive steps of a stream (the grant is not returned: submit again)."""
        pieces: list[tuple[int, ShardSample]] = []
        missing = request.batch_size
        failed: set[int] = set()
        parts = request.parts
        while True:
            deadline = time.monotonic() + self._call_timeout_s
            for i, ref in parts:
                part = self._result(i, ref, deadline)
                if part is None:
                    failed.add(i)
                    continue
                self._sequences[i] = part.num_sequences
                if part.batch is not None:
                    pieces.append((i, part))
                    missing -= len(part.batch[WEIGHT_VERSION])
            if missing == 0:
                return _concat(pieces, request.with_keys)
            donors = np.array([i for i, _ in parts if i not in failed and self._sequences[i] > 0], int)
            if donors.size == 0:
                return None
            counts = _split(missing, self._sequences[donors], self._rng)
            parts = [
                (i, self._shards[i].sample_part.remote(int(c), request.seq_len, request.with_keys))
                for i, c in zip(donors.tolist(), counts)
                if c
            ]

    def update_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> None:
        """Route priorities to the shards that produced the keys; a shard that is down misses them
        (priorities are advisory, its reloaded steps restart at the highest priority)."""
        keys = np.asarray(keys, np.int64).ravel()
        priorities = np.asarray(priorities, np.float64).ravel()
        shard_of = keys >> _KEY_SHARD_SHIFT
        local = keys & ((1 << _KEY_SHARD_SHIFT) - 1)
        refs = [
            self._shards[i].update_priorities.remote(local[shard_of == i], priorities[shard_of == i])
            for i in np.unique(shard_of)
        ]
        for ref in refs:
            try:
                ray.get(ref, timeout=self._call_timeout_s)
            except _SHARD_ERRORS:
                continue

    def stats(self) -> dict[str, Any]:
        """Sizes and counters summed over reachable shards, the per-shard stats, and the replay ratio."""
        refs = [shard.stats.remote() for shard in self._shards]
        per_shard = []
        for i, ref in enumerate(refs):
            try:
                per_shard.append(ray.get(ref, timeout=self._call_timeout_s))
            except _SHARD_ERRORS as error:
                per_shard.append({"shard": i, "error": repr(error)})
        up = [s for s in per_shard if "error" not in s]
        stats: dict[str, Any] = {key: sum(s[key] for s in up) for key in _SUMMED_STATS}
        stats.update(num_shards=len(self._shards), shards_up=len(up), shards=per_shard)
        if self._limiter is not None:
            state, ratio = ray.get([self._limiter.state.remote(), self._limiter.ratio.remote()], timeout=self._call_timeout_s)
            stats.update(limiter=state, replay_ratio=ratio)
        else:
            stats["replay_ratio"] = stats["sampled_steps"] / max(stats["inserted_steps"], 1)
        return stats

    def ids(self) -> list[str]:
        """Chunk ids stored on all shards (raises if a shard is unreachable)."""
        return [i for ids in ray.get([s.ids.remote() for s in self._shards], timeout=self._call_timeout_s) for i in ids]

    def close(self) -> None:
        """Release everyone waiting on the limiter; later inserts and samples return None."""
        if self._limiter is not None:
            ray.get(self._limiter.close.remote(), timeout=self._call_timeout_s)

    def _sample(
        self, batch_size: int, seq_len: int, with_keys: bool
    ) -> tuple[Batch, np.ndarray | None] | None:
        if not self._acquire_sample(batch_size * seq_len):
            return None
        return self.collect_sample(self.submit_sample(batch_size, seq_len, with_keys))

    def _acquire_sample(self, n_steps: int) -> bool:
        """Wait, in bounded calls, until the limiter grants a sample of n_steps; False once it is closed."""
        if self._limiter is None:
            return True
        return bool(self._until_granted(lambda wait_s: self._limiter.acquire_sample.remote(n_steps, wait_s)))

    def _until_granted(self, acquire: Callable[[float], ray.ObjectRef]) -> Any:
        """Repeat a limiter acquire that waits at most _GRANT_POLL_S until it grants (its answer) or
        the limiter is closed (the falsy answer), each call bounded."""
        while True:
            answer = ray.get(acquire(_GRANT_POLL_S), timeout=_GRANT_POLL_S + self._call_timeout_s)
            if answer or ray.get(self._limiter.is_closed.remote(), timeout=self._call_timeout_s):
                return answer

    def _refresh_sequences(self, shards: np.ndarray, seq_len: int) -> None:
        refs = [(i, self._shards[i].num_sequences.remote(seq_len)) for i in shards.tolist()]
        self._sequences[:] = 0
        self._sequences_len = seq_len
        for i, ref in refs:
            try:
                self._sequences[i] = ray.get(ref, timeout=self._call_timeout_s)
            except _SHARD_ERRORS:
                self._health.mark_down(i)

    def _result(self, shard: int, ref: ray.ObjectRef, deadline: float) -> ShardSample | None:
        """A shard's part, or None if it failed, timed out, or (for a part requested earlier) left
        the rotation meanwhile: a request in flight does not wait a second time for a hung shard."""
        if not self._health.is_live(shard):
            deadline = time.monotonic()  # take it only if it is already there
        try:
            part = ray.get(ref, timeout=max(deadline - time.monotonic(), 0.0))
        except _SHARD_ERRORS:
            self._health.mark_down(shard)
            return None
        return part


def _split(total: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integer shares of total proportional to weights, each the floor or ceiling of its exact share,
    with expectation exactly total * w / sum(w) (systematic sampling); all zero if weights sum to 0."""
    weights = np.asarray(weights, np.float64)
    if weights.sum() <= 0:
        return np.zeros(weights.size, np.int64)
    edges = np.concatenate([[0.0], np.cumsum(weights) / weights.sum() * total])
    return np.diff(np.ceil(edges - rng.random()).astype(np.int64).clip(0, total))


def _concat(pieces: list[tuple[int, ShardSample]], with_keys: bool) -> tuple[Batch, np.ndarray | None]:
    """One writable batch from the shards' parts; keys gain their shard index in the high bits."""
    batches = [part.batch for _, part in pieces]
    batch = {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
    if not with_keys:
        return batch, None
    return batch, np.concatenate([part.keys + (i << _KEY_SHARD_SHIFT) for i, part in pieces])
