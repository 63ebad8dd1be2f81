"""Learner: a Ray actor that samples from the replay service, trains, and publishes weights.

It runs its loop in one thread while `stats`, `checkpoint_state` and `stop` are served from
others (a threaded actor); a lock keeps a checkpoint from catching a half-applied update.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import ray
import torch

from learner.agent import Agent, metrics_to_floats
from learner.config import AgentConfig
from learner.openloop import openloop_frames
from learner.spaces import ActionSpec, ObservationSpec


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
    ):
        self.threads = threads or torch.get_num_threads()
        _one_torch_thread()  # `run` sets the training thread's count
        self.agent = Agent(obs_spec, act_spec, agent_config)
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
        if self.agent.updates > 0:  # resumed: runners act with the restored policy at once
            self._publish()

    def where(self) -> str:
        """The Ray node this actor runs on (for the driver's placement report)."""
        return ray.get_runtime_context().get_node_id()

    def device(self) -> str:
        """Where and how it trains, for the driver's placement report."""
        agent = self.agent
        return f"{agent.device}, {agent.precision.precision} ({agent.precision.reason}), {agent.compile_plan.describe()}"

    def run(self, max_updates: int | None = None) -> int:
        """Train until stopped, until the replay closes, or for max_updates; returns updates."""
        torch.set_num_threads(self.threads)  # OpenMP's count is per thread: this is a pool thread
        self._torch_threads = torch.get_num_threads()
        sampler = self.replay.sampler(self.batch_size, self.seq_len, prefetch=self.prefetch)
        try:
            while not self._stop.is_set() and (max_updates is None or self.agent.updates < max_updates):
                waited = time.perf_counter()
                batch = next(sampler, None)
                if batch is None:
                    break
                started = time.perf_counter()
                with self._lock:
                    metrics = self.agent.train_step(batch)
                    self._metrics = metrics
                    self._last_batch = batch
                    staleness = self.agent.updates - 1 - float(np.mean(batch["weight_version"]))
                    self._staleness.append(staleness)
                self._wait_seconds += started - waited
                self._train_seconds += time.perf_counter() - started
                if self.agent.updates % self.publish_every == 0 or self.agent.updates == 1:
                    self._check_nonfinite()
                    self._publish()
        finally:
            sampler.close()
        self._check_nonfinite()
        self._publish()
        return self.agent.updates

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
        }
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
        weights = self.agent.policy_weights()
        ref = ray.put(weights)
        ray.get(self.board.publish.remote(weights["version"], [ref]))


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
