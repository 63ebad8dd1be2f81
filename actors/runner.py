"""EnvRunner: a Ray actor that collects experience with the latest policy and feeds the replay.

The env loop never waits for the network: chunks go to a queue that a sender thread drains into
the replay service, and new weights are polled with a non-blocking check. Collection pauses only
when `insert_batch + 1` chunks are waiting for their acknowledgement, i.e. when the rate limiter
holds runners back. A Ray call costs ~0.6 ms of CPU here, as much as a CartPole step, so the sender
gathers chunks for up to `insert_linger` seconds and inserts up to `insert_batch` of them with one
limiter call and one call per shard.
Until the first weights arrive the runner acts uniformly at random, which is the prefill.

A chunk stays with the sender until a shard acknowledged it: an insert that fails or times out (a
shard restarting, hung, or a node gone for a moment) is sent again with back-off, to its shard or
another live one (replay/service.py), and the limiter is asked only once per chunk. Meanwhile
back-pressure holds collection, so memory stays bounded. Only a chunk of a runner that dies is lost,
and it was never acknowledged.

An environment that crashes or hangs is replaced by the collector; one that keeps failing makes
`run` raise EnvFailure, and the driver calls `run` again after a back-off (which revives it).
"""
from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from collections import deque
from typing import Any

import numpy as np
import psutil
import ray
import torch

from actors.async_collector import AsyncCollector
from actors.collector import Collector
from actors.envs import default_collection, env_slot, make_env
from actors.policy import AgentPolicy, RandomPolicy
from actors.specs import specs_from_spaces
from actors.streams import Episode
from learner.config import AgentConfig
from learner.policy_agent import PolicyAgent
from replay import Chunk
from replay import chunk_length as steps_of

_MAX_BACKOFF_S = 5.0


class EnvRunner:
    def __init__(
        self,
        index: int,
        env_name: str,
        env_options: dict[str, Any],
        num_envs: int,
        chunk_length: int,
        seed: int,
        agent_config: AgentConfig,
        replay: Any,
        board: Any,
        step_timeout: float | None = None,
        insert_batch: int = 4,
        insert_linger: float = 0.25,
        poll_interval: float = 0.1,
        retry_backoff: float = 0.1,
        call_timeout: float = 10.0,
        collection: str = "auto",
        gather_wait: float = 0.001,
        device: str = "cpu",
    ):
        """`collection`: lockstep, async or auto (the env suite's default, `actors.envs.default_collection`);
        `device`: where the policy acts (cpu, or cuda for a runner given a share of a GPU)."""
        torch.set_num_threads(1)
        torch.manual_seed(seed + 7919 * index)
        restarts = iter(range(1, 1 << 30))

        def remake(i: int):  # a fresh seed, so a crash is not replayed deterministically
            return make_env(env_name, seed=seed + 1000 * index + i + 100_000 * next(restarts), slot=env_slot(index, num_envs, i), **env_options)

        envs = [make_env(env_name, seed=seed + 1000 * index + i, slot=env_slot(index, num_envs, i), **env_options) for i in range(num_envs)]
        obs_spec, act_spec = specs_from_spaces(envs[0].observation_space, envs[0].action_space)
        self.index = index
        self.incarnation = uuid.uuid4().hex  # changes when Ray restarts this actor
        self.agent = PolicyAgent(obs_spec, act_spec, agent_config, device=device)
        self.collection = collection if collection != "auto" else default_collection(env_name)
        if self.collection == "async":
            self.collector: Collector | AsyncCollector = AsyncCollector(
                envs, chunk_length, f"runner{index}", remake=remake, step_timeout=step_timeout, gather_wait=gather_wait)
        else:
            self.collector = Collector(envs, chunk_length, f"runner{index}", remake=remake, step_timeout=step_timeout)
        self.explore = RandomPolicy(envs[0].action_space, seed + index)
        self.policy = AgentPolicy(self.agent, num_envs=num_envs)
        self.replay, self.board = replay, board
        self.insert_batch, self.insert_linger = insert_batch, insert_linger
        self.poll_interval = poll_interval
        self.retry_backoff, self.call_timeout = retry_backoff, call_timeout
        self.version = 0  # 0: no weights yet, act randomly
        self._pending_poll: ray.ObjectRef | None = None
        self._next_poll = 0.0
        self._outbox: queue.SimpleQueue[Chunk | None] = queue.SimpleQueue()
        self._unacked = threading.Semaphore(self.insert_batch + 1)  # chunks queued or being inserted
        self._unsent = 0
        self._lock = threading.Lock()
        self._episodes: deque[Episode] = deque(maxlen=1000)
        self._inserted_ids: list[str] = []
        self._insert_error: str | None = None  # a chunk the replay refuses as invalid: a bug, not a fault
        self._insert_retries = 0  # chunks sent again after an attempt without acknowledgement
        self._insert_failures = 0  # attempts (grant or store) that failed or timed out
        self._stop = threading.Event()
        self._steps_at_last_stats, self._time_at_last_stats = 0, time.perf_counter()
        self._sender = threading.Thread(target=self._send_chunks, daemon=True)
        self._sender.start()

    def run(self, max_steps: int | None = None) -> int:
        """Collect until stopped (or max_steps); returns the env steps taken. Raises EnvFailure
        when an environment keeps failing (envs given up on get new tries at the next call)."""
        torch.set_num_threads(1)  # per thread in OpenMP, and this may run on an actor pool thread
        self.collector.revive()
        while not self._stop.is_set() and (max_steps is None or self.collector.env_steps < max_steps):
            policy = self.policy if self.version > 0 else self.explore
            chunks, episodes = self.collector.step(policy, self.version)
            with self._lock:
                self._episodes.extend(episodes)
            for chunk in chunks:
                while not self._stop.is_set() and not self._insert_error:
                    if self._unacked.acquire(timeout=self.poll_interval):
                        with self._lock:
                            self._unsent += 1
                        self._outbox.put(chunk)
                        break
                    self._poll_weights_when_due()  # held back by the replay ratio: the learner is training
            self._poll_weights_when_due()
            if self._insert_error:
                raise RuntimeError(f"runner {self.index}: replay insert failed: {self._insert_error}")
        return self.collector.env_steps

    def stats(self) -> dict[str, Any]:
        """Counters since the last call: env steps/s, finished episodes, weight version."""
        now = time.perf_counter()
        with self._lock:
            episodes = list(self._episodes)
            self._episodes.clear()
            inserted = len(self._inserted_ids)
        steps = self.collector.env_steps
        rate = (steps - self._steps_at_last_stats) / max(now - self._time_at_last_stats, 1e-9)
        self._steps_at_last_stats, self._time_at_last_stats = steps, now
        return {
            "runner": self.index,
            "incarnation": self.incarnation,
            "collection": self.collection,
            "env_steps": steps,
            "env_steps_per_s": rate,
            "weight_version": self.version,
            "chunks_inserted": inserted,
            "queued_chunks": self._unsent,
            "insert_retries": self._insert_retries,
            "insert_failures": self._insert_failures,
            "rerouted_chunks": self.replay.rerouted_chunks,
            "env_restarts": self.collector.env_restarts,
            "env_timeouts": self.collector.env_timeouts,
            "dropped_episodes": self.collector.dropped_episodes,
            "env_busy_s": self.collector.busy.seconds,
            "rss_mb": resident_mb(),
            "episodes": [(e.ret, e.length, e.stats) for e in episodes],
        }

    def where(self) -> str:
        """The Ray node this actor runs on (for the driver's placement report)."""
        return ray.get_runtime_context().get_node_id()

    def pid(self) -> int:
        """This incarnation's process id (for fault injection: bench/chaos.py)."""
        return os.getpid()

    def inserted_ids(self) -> list[str]:
        with self._lock:
            return list(self._inserted_ids)

    def stop(self) -> None:
        """Stop collecting; `run` returns after its current step, and later calls at once."""
        self._stop.set()

    def resume(self) -> None:
        """Let `run` collect again after a stop (a benchmark pausing the runners)."""
        self._stop.clear()

    def flush(self, timeout: float = 60.0) -> int:
        """Insert the chunks still queued (the learner must still be sampling, or the limiter may
        hold them back), then end the sender. Returns the chunks left unsent (never acknowledged)."""
        self._outbox.put(None)
        self._sender.join(timeout=timeout)
        with self._lock:
            return self._unsent

    def _poll_weights_when_due(self) -> None:
        """Ask the board for newer weights at most every `poll_interval`, also while back-pressure
        holds the runner (the learner publishes then, and the next steps should use them)."""
        if time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + self.poll_interval
            self._poll_weights()

    def _poll_weights(self) -> None:
        if self._pending_poll is None:
            self._pending_poll = self.board.latest.remote(self.version)
            return
        ready, _ = ray.wait([self._pending_poll], timeout=0)
        if not ready:
            return
        poll, self._pending_poll = self._pending_poll, None
        try:
            published = ray.get(poll, timeout=self.call_timeout)
            if published is not None:
                version, (ref,) = published
                self.agent.load_policy_weights(ray.get(ref, timeout=self.call_timeout))
                self.version = version
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            return  # the board restarting or weights gone with a learner: keep acting, poll again

    def _send_chunks(self) -> None:
        ending = False
        while not ending:
            batch, ending = self._next_batch()
            if not batch:
                continue
            try:
                self._deliver(batch)
            except Exception as error:  # a chunk the shards refuse (a bug): surfaced by run()
                self._insert_error = repr(error)
                return

    def _deliver(self, inserts: list[Chunk]) -> None:
        """Keep the chunks until each is acknowledged: one limiter grant per chunk, then stores
        with back-off until a shard acknowledges. Returns early only if the limiter closed (the
        run is ending), for the chunks it did not grant."""
        sizes = [steps_of(insert.data) for insert in inserts]
        granted, pending, backoff = 0, list[int](), self.retry_backoff
        while pending or granted < len(inserts):
            if pending:
                acks = self.replay.store([inserts[i] for i in pending])
                self._acknowledged([ack.chunk_id for ack in acks if ack is not None])
                pending = [i for i, ack in zip(pending, acks) if ack is None]
                failed = bool(pending)
                self._insert_retries += len(pending)
            else:
                try:
                    n = self.replay.grant_inserts(sizes[granted:])
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    n, failed = -1, True
                else:
                    if n == 0:  # closed: these were never acknowledged, and never will be
                        self._acknowledged([], dropped=len(inserts) - granted)
                        return
                    pending, granted, failed = list(range(granted, granted + n)), granted + n, False
            if failed:
                self._insert_failures += 1
                time.sleep(backoff)
                backoff = min(2 * backoff, _MAX_BACKOFF_S)
            else:
                backoff = self.retry_backoff

    def _acknowledged(self, chunk_ids: list[str], dropped: int = 0) -> None:
        """Record acknowledged (or, at shutdown, refused) chunks and free their places in the queue."""
        with self._lock:
            self._inserted_ids += chunk_ids
            self._unsent -= len(chunk_ids) + dropped
        for _ in range(len(chunk_ids) + dropped):
            self._unacked.release()

    def _next_batch(self) -> tuple[list[Chunk], bool]:
        """Up to insert_batch chunks: the next one, and those that arrive within insert_linger
        seconds of it. True as well once flush asked the sender to end."""
        first = self._outbox.get()
        if first is None:
            return [], True
        batch, deadline = [first], time.monotonic() + self.insert_linger
        while len(batch) < self.insert_batch:
            try:
                chunk = self._outbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if chunk is None:
                return batch, True
            batch.append(chunk)
        return batch, False


def resident_mb() -> float:
    """Resident memory of this process and its children (simulators that run as their own
    processes, like Minecraft's JVM), in MiB."""
    process = psutil.Process()
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass  # it ended meanwhile
    return total / 2**20
