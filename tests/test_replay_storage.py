"""ReplayStorage: FIFO capacity, stream-contiguous sequences across chunks, sampling modes, memory."""
from __future__ import annotations

import numpy as np
import pytest

from replay.storage import ReplayStorage


def make_chunk(stream_no: int, first_step: int, length: int, image_shape=(8, 8, 3)) -> dict[str, np.ndarray]:
    """A chunk whose arrays encode (stream, step), so sampled sequences can be checked exactly."""
    steps = np.arange(first_step, first_step + length)
    return {
        "image": np.broadcast_to(
            (steps % 256).astype(np.uint8).reshape(-1, 1, 1, 1), (length, *image_shape)
        ).copy(),
        "vector": np.stack([np.full(length, stream_no), steps], axis=1).astype(np.float32),
        "action": steps.astype(np.int64),
        "reward": steps.astype(np.float32),
        "is_first": steps % 20 == 0,
        "is_last": steps % 20 == 19,
        "is_terminal": steps % 40 == 39,
    }


def fill(storage: ReplayStorage, num_streams: int, lengths: list[int]) -> dict[tuple[int, int], int]:
    """Add chunks round-robin over streams; returns (stream, step) -> weight_version of its chunk."""
    next_step = [0] * num_streams
    version_of = {}
    for i, length in enumerate(lengths):
        s = i % num_streams
        storage.add(make_chunk(s, next_step[s], length), f"runner{s}/env0", f"c{i}", weight_version=i)
        version_of.update({(s, t): i for t in range(next_step[s], next_step[s] + length)})
        next_step[s] += length
    return version_of


def check_sequences(batch: dict[str, np.ndarray], seq_len: int) -> None:
    """Every row is one stream, consecutive steps, with all keys agreeing."""
    stream, step = batch["vector"][..., 0], batch["vector"][..., 1].astype(np.int64)
    assert batch["image"].shape[1:] == (seq_len, 8, 8, 3) and batch["image"].dtype == np.uint8
    assert (stream == stream[:, :1]).all(), "a sequence mixed streams"
    assert (np.diff(step, axis=1) == 1).all(), "a sequence is not time-contiguous"
    assert (batch["action"] == step).all() and (batch["reward"] == step).all()
    assert (batch["image"][:, :, 0, 0, 0] == step % 256).all()
    assert (batch["is_first"] == (step % 20 == 0)).all()


def test_fifo_eviction_keeps_newest_whole_chunks():
    storage = ReplayStorage(capacity=50)
    for i in range(10):
        evicted = storage.add(make_chunk(i % 2, 8 * (i // 2), 8), f"s{i % 2}", f"c{i}", 0)
        assert evicted == ([f"c{i - 6}"] if i >= 6 else [])
        assert storage.size == 8 * min(i + 1, 6) <= storage.capacity
    assert storage.ids() == [f"c{i}" for i in range(4, 10)] and storage.num_chunks == 6
    assert storage.add(make_chunk(0, 40, 20), "s0", "big", 0) == ["c4", "c5", "c6"]
    assert storage.size == 3 * 8 + 20 and "c4" not in storage and "big" in storage


@pytest.mark.parametrize("mode", ["uniform", "recency", "priority"])
def test_sequences_span_chunks_of_one_stream_only(mode):
    storage = ReplayStorage(capacity=97, mode=mode, recency_half_life=30)  # 97: chunks wrap the ring
    lengths = [3 + (i * 5) % 5 for i in range(90)]  # 3..7 steps, all shorter than the sequences
    version_of = fill(storage, num_streams=3, lengths=lengths)
    batch = storage.sample(2000, 10, np.random.default_rng(0))
    check_sequences(batch, 10)
    stream, step = batch["vector"][:, 0, 0].astype(int), batch["vector"][:, 0, 1].astype(int)
    assert batch["weight_version"].dtype == np.int64 and batch["weight_version"].shape == (2000,)
    assert (batch["weight_version"] == [version_of[(s, t)] for s, t in zip(stream, step)]).all()
    oldest_version = min(int(c[1:]) for c in storage.ids())
    assert batch["weight_version"].min() >= oldest_version, "sampled an evicted chunk"


def test_streams_shorter_than_the_sequence_are_not_sampled():
    storage = ReplayStorage(capacity=100)
    storage.add(make_chunk(0, 0, 5), "s0", "a", 0)
    assert storage.num_sequences(5) == 1 and storage.num_sequences(6) == 0
    with pytest.raises(ValueError, match="6 consecutive steps"):
        storage.sample(4, 6, np.random.default_rng(0))
    storage.add(make_chunk(1, 0, 5), "s1", "b", 0)  # another stream does not extend stream 0
    assert storage.num_sequences(6) == 0
    storage.add(make_chunk(0, 5, 1), "s0", "c", 0)
    assert storage.num_sequences(6) == 1


def test_uniform_samples_every_valid_start_equally():
    storage = ReplayStorage(capacity=200)
    fill(storage, num_streams=2, lengths=[8] * 10)  # 2 streams x 40 steps
    batch = storage.sample(36_000, 5, np.random.default_rng(1))
    starts = batch["vector"][:, 0, 0] * 100 + batch["vector"][:, 0, 1]
    values, counts = np.unique(starts, return_counts=True)
    assert set(values) == {s * 100 + t for s in range(2) for t in range(36)}  # 40 - 5 + 1 starts each
    assert counts.min() > 380 and counts.max() < 620  # mean 500, sd ~22


def test_recency_halves_the_rate_every_half_life():
    storage = ReplayStorage(capacity=400, mode="recency", recency_half_life=50)
    fill(storage, num_streams=1, lengths=[16] * 25)
    step = storage.sample(40_000, 1, np.random.default_rng(2))["vector"][:, 0, 1]
    age = 399 - step
    newest, next_newest = np.sum(age < 50), np.sum((age >= 50) & (age < 100))
    assert newest / next_newest == pytest.approx(2.0, rel=0.1)
    assert newest / len(age) == pytest.approx(0.5 / (1 - 2**-8), rel=0.05)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_priority_sampling_is_proportional_to_priority_power_alpha(alpha):
    storage = ReplayStorage(capacity=64, mode="priority", priority_alpha=alpha)
    fill(storage, num_streams=1, lengths=[16] * 4)
    rng = np.random.default_rng(3)
    batch, keys = storage.sample_with_keys(100, 1, rng)
    assert (keys == batch["vector"][:, 0, 1]).all()  # single stream from key 0: key == step
    storage.update_priorities(np.arange(64), np.where(np.arange(64) < 32, 1.0, 3.0))
    step = storage.sample(20_000, 1, rng)["vector"][:, 0, 1]
    high = 3.0**alpha
    assert np.mean(step >= 32) == pytest.approx(high / (1 + high), abs=0.02)


def test_priority_new_data_gets_max_priority_and_stale_keys_are_ignored():
    storage = ReplayStorage(capacity=32, mode="priority", priority_alpha=1.0)
    fill(storage, num_streams=1, lengths=[16, 16])
    storage.update_priorities(np.arange(32), np.full(32, 0.5))
    storage.update_priorities(np.array([0]), np.array([4.0]))  # max priority is now 4
    storage.add(make_chunk(0, 32, 16), "runner0/env0", "new", 0)  # evicts keys 0..15
    storage.update_priorities(np.array([3]), np.array([100.0]))  # stale: must not touch the new data
    step = storage.sample(20_000, 1, np.random.default_rng(4))["vector"][:, 0, 1]
    assert np.mean(step >= 32) == pytest.approx(16 * 4 / (16 * 4 + 16 * 0.5), abs=0.02)
    with pytest.raises(ValueError, match="priority"):
        ReplayStorage(capacity=8).update_priorities(np.array([0]), np.array([1.0]))


def test_memory_per_stored_image_step_is_close_to_raw():
    storage = ReplayStorage(capacity=640)
    raw = 64 * 64 * 3
    for i in range(12):
        storage.add(make_chunk(i % 3, 64 * (i // 3), 64, image_shape=(64, 64, 3)), f"s{i % 3}", f"c{i}", 0)
    assert storage.size == 640
    assert storage.nbytes / storage.size <= 1.1 * raw
    assert storage.sample(2, 3, np.random.default_rng(0))["image"].dtype == np.uint8


def test_rejects_chunks_that_do_not_fit_the_schema():
    storage = ReplayStorage(capacity=16)
    storage.add(make_chunk(0, 0, 4), "s0", "a", 0)
    bad_dtype = make_chunk(0, 4, 4) | {"reward": np.zeros(4, np.float64)}
    bad_length = make_chunk(0, 4, 4) | {"reward": np.zeros(3, np.float32)}
    missing = {k: v for k, v in make_chunk(0, 4, 4).items() if k != "action"}
    reserved = make_chunk(0, 4, 4) | {"weight_version": np.zeros(4, np.int64)}
    for chunk, chunk_id in [(bad_dtype, "x1"), (bad_length, "x2"), (missing, "x3"), (reserved, "x4"),
                            (make_chunk(0, 4, 17), "x5"), (make_chunk(0, 4, 4), "a")]:
        with pytest.raises(ValueError):
            storage.add(chunk, "s0", chunk_id, 0)
    assert storage.ids() == ["a"] and storage.size == 4
