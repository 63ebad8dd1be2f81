"""Prioritised replay as in DreamerV3: the world model scores each sequence by its loss, the learner
sends the scores to the shards that served the batch (off the training thread, batched), and
sampling follows them."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import ray
import torch

from learner.agent import Agent, metrics_to_floats
from learner.broadcast import make_weight_board
from learner.config import AgentConfig, HarmonyConfig, ModelConfig
from learner.learner_actor import Learner, PrioritySender
from learner.spaces import ActionSpec, ObservationSpec
from replay.service import ReplayService
from test_replay_storage import make_chunk

OBS = ObservationSpec({"vector": (16,)})
ACTION = ActionSpec("discrete", (3,))
NOISE = 10.0  # std of the noisy streams' observations: hard to predict; the others are all zeros


def tiny_config(**harmony) -> AgentConfig:
    return AgentConfig(model=ModelConfig(size="debug"), harmony=HarmonyConfig(**harmony), device="cpu", compile="off")


def sequences(rng: np.random.Generator, length: int, noisy: bool, batch: int | None = None) -> dict[str, np.ndarray]:
    """Steps of one stream ([length, ...]) or a batch of sequences ([batch, length, ...]): pure noise
    (observations and rewards) or all zeros."""
    lead = (length,) if batch is None else (batch, length)
    scale = NOISE if noisy else 0.0
    first = np.zeros(lead, bool)
    first[..., 0] = True
    return {
        "vector": (scale * rng.normal(size=(*lead, 16))).astype(np.float32),
        "action": rng.integers(0, 3, lead),
        "reward": (scale * rng.normal(size=lead)).astype(np.float32),
        "is_first": first,
        "is_last": np.zeros(lead, bool),
        "is_terminal": np.zeros(lead, bool),
    }


def mixed_batch(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """8 sequences of 6 steps: rows 0-3 pure noise, rows 4-7 all zeros."""
    noisy, quiet = sequences(rng, 6, True, batch=4), sequences(rng, 6, False, batch=4)
    return {key: np.concatenate([noisy[key], quiet[key]]) for key in noisy}


def test_world_model_priority_is_higher_for_sequences_it_predicts_worse():
    torch.manual_seed(0)
    agent = Agent(OBS, ACTION, tiny_config(mode="off"))
    for group in agent.wm_opt.param_groups:
        group["lr"] = 3e-3
    rng = np.random.default_rng(0)
    batch = mixed_batch(rng)
    for update in range(6):
        metrics = metrics_to_floats(agent.train_step(batch))
        priorities = agent.last_priorities
        assert priorities.shape == (8,) and priorities.dtype == torch.float32
        assert priorities.device == agent.device and not priorities.requires_grad
        values = priorities.numpy()
        assert np.isfinite(values).all() and (values > 0).all()
        assert values[:4].min() > 2 * values[4:].max(), f"update {update}: noisy rows must rank higher: {values}"
        # with DreamerV3's fixed weights (harmony off) the batch mean is exactly the trained loss
        assert values.mean() == pytest.approx(metrics["world_model/loss"], rel=1e-5)
    # a fresh batch of the same kinds keeps the ranking (the priority measures the data, not the rows)
    agent.train_step(mixed_batch(rng))
    values = agent.last_priorities.numpy()
    assert values[:4].min() > 2 * values[4:].max()


class _Recorder:
    """A replay stand-in that records update_priorities calls, failing the first `fail` of them."""

    def __init__(self, fail: int = 0):
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []
        self.fail = fail
        self.thread_names: set[str] = set()

    def update_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> None:
        self.thread_names.add(threading.current_thread().name)
        if self.fail:
            self.fail -= 1
            raise ray.exceptions.RayActorError()  # a shard down
        self.calls.append((keys.copy(), priorities.copy()))


def test_priority_sender_batches_off_thread_and_survives_errors():
    replay = _Recorder(fail=1)
    sender = PrioritySender(replay, every=3, interval_s=60.0)
    for step in range(9):
        keys = np.arange(4) + 10 * step
        values = torch.full((4,), float(step))
        if step == 4:
            values[1] = float("nan")  # a skipped update's batch: not sent
        sender.put(keys, values)
    assert sender.close(timeout_s=10.0), "the thread ends when closed"
    assert threading.current_thread().name not in replay.thread_names
    assert sender.errors == 1 and "RayActorError" in sender.last_error, "the failed call is counted, not raised"
    assert len(replay.calls) == 2, "three updates per call; the first call failed"
    sent_keys = np.concatenate([k for k, _ in replay.calls])
    assert sender.sent == len(sent_keys) == 4 * 6 - 1 and sender.dropped == 1
    assert 41 not in sent_keys
    keys, values = replay.calls[-1]
    np.testing.assert_array_equal(values, np.repeat([6.0, 7.0, 8.0], 4))
    # time-triggered: one update is sent after interval_s even when fewer than `every` came
    replay = _Recorder()
    sender = PrioritySender(replay, every=100, interval_s=0.2)
    sender.put(np.arange(3), torch.ones(3))
    deadline = time.monotonic() + 10
    while not replay.calls and time.monotonic() < deadline:
        time.sleep(0.05)
    assert replay.calls and sender.sent == 3
    assert sender.close(timeout_s=10.0)


def _stream_names(service: ReplayService, prefix: str, per_shard: int) -> list[str]:
    """Stream names that place `per_shard` streams on every shard."""
    names: list[str] = []
    for shard in range(len(service.shards)):
        names += [n for n in (f"{prefix}{i}" for i in range(1000)) if service.shard_for(n) == shard][:per_shard]
    return names


def test_learner_sends_priorities_and_sampling_follows_them(ray_local, tmp_path):
    """Two shards, each with a pure-noise stream and an all-zero stream, all at the same initial
    priority. A learner in priority mode trains on them; afterwards the noisy streams, which the
    world model predicts far worse, are sampled far more often than the others (uniform: half)."""
    service = ReplayService.create(2, tmp_path, capacity=4000, mode="priority", seed=3)
    rng = np.random.default_rng(1)
    streams = {name: True for name in _stream_names(service, "noisy", 1)}
    streams.update({name: False for name in _stream_names(service, "zeros", 1)})
    for name, noisy in streams.items():
        for c in range(2):
            chunk = sequences(rng, 32, noisy)
            chunk["is_first"][0] = c == 0
            service.insert(chunk, name, f"{name}-{c}", 0)

    def noisy_fraction(samples: int = 20, batch: int = 64) -> float:
        rows = [np.abs(service.sample_with_keys(batch, 8)[0]["vector"]).sum((1, 2)) > 0 for _ in range(samples)]
        return float(np.mean(np.concatenate(rows)))

    before = noisy_fraction()
    assert before == pytest.approx(0.5, abs=0.06), "all starts begin at the same priority"

    torch.manual_seed(0)
    learner = ray.remote(Learner).options(num_cpus=0, max_concurrency=2).remote(
        OBS, ACTION, tiny_config(), service, make_weight_board(), batch_size=16, seq_len=8,
        publish_every=2, prefetch=1, threads=1, priority=True,
    )
    updates = 24
    assert ray.get(learner.run.remote(max_updates=updates), timeout=120) == updates
    stats = ray.get(learner.stats.remote(), timeout=30)
    assert stats["learner/priority_updates"] == updates * 16, "every trained sequence's priority was sent"
    assert stats["learner/priority_errors"] == 0 and stats["learner/priority_dropped"] == 0

    after = noisy_fraction()
    assert after > 0.7, f"sampling follows the priorities: noisy streams drawn {after:.2f} of the time, {before:.2f} before"
    ray.kill(learner)


@pytest.mark.parametrize("alpha, high_share", [(0.0, 0.5), (1.0, 0.8)])
def test_priority_exponent_reaches_every_shard(ray_local, tmp_path, alpha, high_share):
    """ReplayService.create hands priority_alpha through the shards to their storage: the later half
    of each stream gets 4x the priority of the earlier half, which exponent 0 ignores (uniform)
    and exponent 1 follows (4 / (1 + 4) of the draws)."""
    service = ReplayService.create(2, tmp_path, capacity=128, mode="priority", priority_alpha=alpha, seed=0)
    for s, name in enumerate(_stream_names(service, "s", 1)):
        service.insert(make_chunk(s, 0, 32), name, name, 0)
    batch, keys = service.sample_with_keys(2000, 1)  # covers all 64 starts
    service.update_priorities(keys, np.where(batch["vector"][:, 0, 1] >= 16, 4.0, 1.0))
    steps = np.concatenate([service.sample(500, 1)["vector"][:, 0, 1] for _ in range(20)])
    assert np.mean(steps >= 16) == pytest.approx(high_share, abs=0.03)
    for shard in service.shards:
        ray.kill(shard)
