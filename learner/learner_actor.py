"""Learner: a Ray actor that samples from the replay service, trains, and publishes weights.

It runs its loop in one thread while `stats`, `checkpoint_state` and `stop` are served from
others (a threaded actor); a lock keeps a checkpoint from catching a half-applied update.

With prioritised replay (`priority=True`) it samples with keys and, after each update, hands the
keys and the batch's per-sequence priorities (still on the device) to a `PrioritySender` thread,
which copies them to the host (the sync happens there, not on the training thread) and sends them
to the shards that served them, several updates per call.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np
import ray
import torch

from learner import host_memory
from learner.agent import Agent, metrics_to_floats
from learner.config import AgentConfig
from learner.distributed import ProcessGroup, Rendezvous
from learner.openloop import openloop_frames
from learner.spaces import ActionSpec, ObservationSpec


_PUBLISH_TIMEOUT_S = 60.0  # the weight board lives on the driver's node: no answer means the run is gone


class NonFiniteError(RuntimeError):
    """Too many consecutive updates had NaN/inf gradients."""


class Learner:
    def __init__(
        self,
        obs_spec: ObservationSpec,
        act_spec: ActionSpec,
        agent_config: AgentConfig,
        replay: Any,
        board: Any,
        batch_size: int,
        seq_len: int,
        publish_every: int,
        prefetch: int = 2,
        threads: int = 0,
        max_nonfinite: int = 10,
        state: dict[str, Any] | None = None,
        priority: bool = False,
        rank: int = 0,
        world_size: int = 1,
        keep_freed_memory: bool = True,
    ):
        """`priority`: the replay samples by priority (`replay.sampling=priority`), so send it the
        world model's per-sequence priorities of every trained batch. `rank` of `world_size`: one of
        data-parallel learners (learner/distributed.py), which train only once `join` made them a
        group; rank 0 publishes the weights and answers for the group (checkpoints, videos).
        `keep_freed_memory`: on a CPU, each update reuses the last one's memory instead of faulting
        it in again (learner/host_memory.py)."""
        self.threads = threads or torch.get_num_threads()
        _one_torch_thread()  # `run` sets the training thread's count
        self.agent = Agent(obs_spec, act_spec, agent_config)
        self.host_memory_kept = keep_freed_memory and self.agent.device.type == "cpu" and host_memory.keep_freed_memory()
        if state is not None:
            self.agent.load_state_dict(state)
        self.replay, self.board = replay, board
        self.batch_size, self.seq_len = batch_size, seq_len
        self.publish_every = max(1, publish_every)
        self.prefetch = prefetch
        self.max_nonfinite = max_nonfinite
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._metrics: dict[str, torch.Tensor] = {}
        self._last_batch: dict[str, np.ndarray] | None = None  # for open-loop videos
        self._staleness: list[float] = []
        self._nonfinite_total = 0
        self._updates_at_last_stats, self._time_at_last_stats = self.agent.updates, time.perf_counter()
        self._wait_seconds = 0.0
        self._train_seconds = 0.0
        self._torch_threads = 0  # as seen by the training thread, once it runs
        self.priority = priority
        self._priorities: PrioritySender | None = None  # while `run` runs, with priority
        self._priority_counts = {"sent": 0, "errors": 0, "dropped": 0}  # of senders that ended
        self.rank, self.world_size = rank, world_size
        self.group: ProcessGroup | None = None  # once joined, with world_size > 1
        self._rendezvous: Rendezvous | None = None  # rank 0's, where the group met
        if self.agent.updates > 0:  # resumed: runners act with the restored policy at once
            self._publish()

    def rendezvous_address(self, loopback: bool) -> str:
        """Where the group meets (rank 0 opens and keeps it): a port on 127.0.0.1 when every rank
        runs on this node, else on the node's address (cluster-internal, as Ray's own ports)."""
        self._rendezvous = Rendezvous("127.0.0.1" if loopback else ray.util.get_node_ip_address())
        return self._rendezvous.address

    def join(self, address: str, timeout_s: float) -> None:
        """Become rank `rank` of the learner group at `address`; returns once all ranks joined and
        hold rank 0's weights."""
        self.group = ProcessGroup(address, self.rank, self.world_size, self.agent.device, timeout_s=timeout_s)
        self.agent.distribute()

    def where(self) -> str:
        """The Ray node this actor runs on (for the driver's placement report)."""
        return ray.get_runtime_context().get_node_id()

    def device(self) -> str:
        """Where and how it trains, for the driver's placement report."""
        agent = self.agent
        gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        where = f"{agent.device} (GPU {', '.join(gpus)} of its node)" if agent.device.type == "cuda" and gpus else str(agent.device)
        kept = ", freed host memory kept for the next update" if self.host_memory_kept else ""
        return f"{where}, {agent.precision.precision} ({agent.precision.reason}), {agent.compile_plan.describe()}{kept}"

    def run(self, max_updates: int | None = None) -> int:
        """Train until stopped, until the replay closes, or for max_updates; returns updates."""
        torch.set_num_threads(self.threads)  # OpenMP's count is per thread: this is a pool thread
        self._torch_threads = torch.get_num_threads()
        if self.priority:
            sampler = self.replay.sampler(self.batch_size, self.seq_len, prefetch=self.prefetch, with_keys=True)
            self._priorities = PrioritySender(self.replay, every=self.publish_every)
        else:
            sampler = self.replay.sampler(self.batch_size, self.seq_len, prefetch=self.prefetch)
        try:
            while True:
                waited = time.perf_counter()
                go_on = not self._stop.is_set() and (max_updates is None or self.agent.updates < max_updates)
                item = next(sampler, None) if go_on else None
                if not self._all_have_batches(item is not None):
                    break
                batch, keys = item if self.priority else (item, None)
                started = time.perf_counter()
                with self._lock:
                    metrics = self.agent.train_step(batch)
                    self._metrics = metrics
                    self._last_batch = batch
                    staleness = self.agent.updates - 1 - float(np.mean(batch["weight_version"]))
                    self._staleness.append(staleness)
                    priorities = self.agent.last_priorities
                if self._priorities is not None:
                    self._priorities.put(keys, priorities)  # no sync here: the sender's thread copies
                self._wait_seconds += started - waited
                self._train_seconds += time.perf_counter() - started
                if self.agent.updates % self.publish_every == 0 or self.agent.updates == 1:
                    self._check_nonfinite()
                    self._publish()
        finally:
            try:
                sampler.close()
            finally:
                self._close_priorities()
        self._check_nonfinite()
        self._publish()
        return self.agent.updates

    def _all_have_batches(self, have: bool) -> bool:
        """Alone: whether this learner has a batch. In a group: whether every rank has one and none
        was asked to stop, so all ranks make the same updates and stop together (a rank that went
        on alone would wait forever in DDP's all-reduce)."""
        return have if self.group is None else self.group.all_agree(have)

    def _close_priorities(self) -> None:
        """Send what the thread still holds (bounded wait) and keep its counts."""
        sender, self._priorities = self._priorities, None
        if sender is None:
            return
        sender.close()
        for name, value in sender.counts().items():
            self._priority_counts[name] += value

    def _check_nonfinite(self) -> None:
        """One sync per broadcast: the device counted every skipped update meanwhile, so a run of
        consecutive skips between two reads is seen too."""
        self._nonfinite_total, _, longest = self.agent.read_nonfinite()
        if longest >= self.max_nonfinite:
            raise NonFiniteError(f"{longest} consecutive updates had non-finite gradients; stopping (see the last checkpoint)")

    def stats(self) -> dict[str, Any]:
        """Latest losses and sigmas, updates/s since the last call, staleness, time waiting on data."""
        _one_torch_thread()
        now = time.perf_counter()
        with self._lock:
            metrics = metrics_to_floats(self._metrics)
            staleness, self._staleness = self._staleness, []
            updates = self.agent.updates
        rate = (updates - self._updates_at_last_stats) / max(now - self._time_at_last_stats, 1e-9)
        busy = self._wait_seconds + self._train_seconds
        out = {
            **metrics,
            "learner/updates": updates,
            "learner/updates_per_s": rate,
            "learner/data_wait_fraction": self._wait_seconds / busy if busy else 0.0,
            "learner/nonfinite_updates": self._nonfinite_total,
            "learner/torch_threads": self._torch_threads,
            "learner/world_size": self.world_size,
        }
        if self.priority:
            sender = self._priorities
            running = sender.counts() if sender is not None else {}
            counts = {name: value + running.get(name, 0) for name, value in self._priority_counts.items()}
            out["learner/priority_updates"] = counts["sent"]  # sequences whose priority was sent
            out["learner/priority_errors"] = counts["errors"]  # calls that failed (priorities are advisory)
            out["learner/priority_dropped"] = counts["dropped"]  # sequences dropped: sender behind, or non-finite
        if staleness:
            out["learner/weight_staleness"] = float(np.mean(staleness))
        if self.agent.compile_seconds is not None:  # the first update, compiling included
            out["learner/compile_s"] = self.agent.compile_seconds
        self._updates_at_last_stats, self._time_at_last_stats = updates, now
        self._wait_seconds = self._train_seconds = 0.0
        return out

    def checkpoint_state(self) -> dict[str, Any]:
        """Agent weights, optimisers and harmonizers, as CPU tensors, between two updates."""
        _one_torch_thread()
        with self._lock:
            state = self.agent.state_dict()
            return _to_cpu(state)

    def policy_weights(self) -> dict[str, Any]:
        _one_torch_thread()
        with self._lock:
            return self.agent.policy_weights()

    def openloop_video(self, sequences: int = 4, context: int = 5) -> np.ndarray | None:
        """The world model's open-loop predictions next to the truth on the last trained batch
        (uint8 frames, see learner/openloop.py); None before the first update or without images."""
        _one_torch_thread()
        with self._lock:
            if self._last_batch is None or not self.agent.obs_spec.image_keys:
                return None
            context = min(context, self.seq_len - 1)
            return openloop_frames(self.agent.world_model, self._last_batch, context=context, sequences=sequences)

    def stop(self) -> None:
        self._stop.set()

    def _publish(self) -> None:
        if self.rank != 0:  # every rank holds the same weights: rank 0 speaks for the group
            return
        weights = self.agent.policy_weights()
        ref = ray.put(weights)
        ray.get(self.board.publish.remote(weights["version"], [ref]), timeout=_PUBLISH_TIMEOUT_S)


class PrioritySender:
    """A thread that sends replay priorities off the training thread.

    `put(keys, priorities)` never blocks: it queues the batch's keys and its priorities as a device
    tensor. The thread copies each to the host (the one host sync, here), gathers them and, every
    `every` updates or `interval_s` seconds, sends them in one `replay.update_priorities` call (one
    call per shard). Priorities are advisory: a failed call (a shard down) is counted, not raised,
    and when the thread falls `max_pending` updates behind, newer ones are dropped and counted.
    """

    def __init__(self, replay: Any, every: int = 5, interval_s: float = 0.5, max_pending: int = 64, poll_s: float = 0.1):
        self.replay = replay
        self.every, self.interval_s, self.poll_s = max(1, every), interval_s, poll_s
        self._queue: queue.Queue[tuple[np.ndarray, torch.Tensor]] = queue.Queue(maxsize=max_pending)
        self._stop = threading.Event()
        self.sent = self.errors = self.dropped = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="priority-sender", daemon=True)
        self._thread.start()

    def put(self, keys: np.ndarray, priorities: torch.Tensor | None) -> None:
        if priorities is None:
            return
        try:
            self._queue.put_nowait((np.asarray(keys, np.int64), priorities))
        except queue.Full:
            self.dropped += len(keys)

    def counts(self) -> dict[str, int]:
        return {"sent": self.sent, "errors": self.errors, "dropped": self.dropped}

    def close(self, timeout_s: float = 30.0) -> bool:
        """Send what was put, then end the thread; False if it did not end within timeout_s (a
        shard call still waiting: the daemon thread finishes it alone)."""
        self._stop.set()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        _one_torch_thread()
        keys: list[np.ndarray] = []
        values: list[np.ndarray] = []
        last_send = time.monotonic()
        while True:
            stopping = self._stop.is_set()  # read before the get: what was put before close is sent
            try:
                item = self._queue.get(timeout=self.poll_s)
            except queue.Empty:
                item = None
            if item is not None:
                host = self._to_host(*item)
                if host is not None:
                    keys.append(host[0])
                    values.append(host[1])
            due = len(keys) >= self.every or time.monotonic() - last_send >= self.interval_s
            if keys and (due or (stopping and item is None)):
                self._send(np.concatenate(keys), np.concatenate(values))
                keys, values = [], []
                last_send = time.monotonic()
            if stopping and item is None:
                return

    def _to_host(self, keys: np.ndarray, priorities: torch.Tensor) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            values = priorities.detach().to("cpu", torch.float64).numpy().ravel()
            if values.shape != keys.shape:
                raise ValueError(f"{keys.size} keys but {values.size} priorities")
        except Exception as error:  # noqa: BLE001 - advisory: counted, never fatal
            self._failed(error)
            return None
        finite = np.isfinite(values) & (values >= 0)  # a skipped (non-finite) update's batch
        self.dropped += int((~finite).sum())
        return keys[finite], values[finite]

    def _send(self, keys: np.ndarray, values: np.ndarray) -> None:
        if keys.size == 0:
            return
        try:
            self.replay.update_priorities(keys, values)
        except Exception as error:  # noqa: BLE001 - advisory: counted, never fatal
            self._failed(error)
            return
        self.sent += int(keys.size)

    def _failed(self, error: Exception) -> None:
        self.errors += 1
        self.last_error = repr(error)


def _one_torch_thread() -> None:
    """Torch work on any thread but the training one runs single-threaded. A parallel op on a
    second thread makes OpenMP start a second team: more threads than cores, after which libgomp
    stops spinning at barriers and every update of the training thread got ~1.6x slower (2 cores;
    the thread count is per thread, so this leaves the training thread's alone)."""
    torch.set_num_threads(1)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value
