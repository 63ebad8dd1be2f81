"""Shard persistence (in-process, no Ray): durable files, reload in order, corrupt files set aside."""
from __future__ import annotations

import re

import numpy as np
import pytest

from replay.chunk import Chunk
from replay.shard import ReplayShard
from test_replay_storage import check_sequences, make_chunk


def insert_chunks(shard: ReplayShard, count: int, length: int = 8, first: int = 0) -> list[str]:
    ids = []
    for i in range(first, first + count):
        chunk_id = f"runner{i % 2}/env0#{i}"  # '/' must not leak into the file name
        ack = shard.insert(make_chunk(i % 2, length * (i // 2), length), f"runner{i % 2}/env0", chunk_id, i)
        assert ack.chunk_id == chunk_id
        ids.append(chunk_id)
    return ids


def chunk_files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".npz"))


def test_round_trip_reloads_newest_chunks_in_order(tmp_path):
    shard = ReplayShard(0, str(tmp_path), capacity=40)
    ids = insert_chunks(shard, 9)  # 72 steps into 40: the 4 oldest chunks are evicted
    assert shard.ids() == ids[4:] and shard.size() == 40
    names = chunk_files(tmp_path)
    assert len(names) == 5 and all(re.fullmatch(r"\d{12}-runner\d_env0_\d\.npz", n) for n in names)
    assert [int(n[:12]) for n in names] == list(range(4, 9))

    reloaded = ReplayShard(0, str(tmp_path), capacity=40, seed=0)
    assert reloaded.ids() == ids[4:] and reloaded.size() == 40
    assert reloaded.stats()["reloaded_chunks"] == 5 and reloaded.stats()["corrupt_files"] == []
    batch = reloaded.sample(500, 12)  # longer than a chunk: streams were relinked across files
    check_sequences(batch, 12)
    assert set(np.unique(batch["weight_version"])) <= set(range(4, 9))
    reloaded.insert(make_chunk(1, 40, 8), "runner1/env0", "after", 9)
    assert reloaded.ids() == ids[5:] + ["after"] and int(chunk_files(tmp_path)[-1][:12]) == 9


def test_corrupt_and_half_written_files_are_skipped_and_reported(tmp_path):
    ids = insert_chunks(ReplayShard(0, str(tmp_path), capacity=100), 6)
    names = chunk_files(tmp_path)
    truncated, garbage = tmp_path / names[2], tmp_path / names[4]
    truncated.write_bytes(truncated.read_bytes()[:1000])
    garbage.write_bytes(b"not a zip file")
    (tmp_path / f".{names[5]}.tmp").write_bytes(b"half written")  # crash before the rename

    shard = ReplayShard(0, str(tmp_path), capacity=100)
    assert shard.ids() == [ids[i] for i in (0, 1, 3, 5)]
    assert sorted(shard.stats()["corrupt_files"]) == sorted([names[2], names[4]])
    assert not list(tmp_path.glob(".*.tmp")) and len(list(tmp_path.glob("*.corrupt"))) == 2
    insert_chunks(shard, 1, first=6)
    assert len(shard.ids()) == 5


def test_insert_is_idempotent_by_chunk_id(tmp_path):
    shard = ReplayShard(0, str(tmp_path), capacity=100)
    chunk = make_chunk(0, 0, 8)
    first, again = (shard.insert(chunk, "s0", "same", 0) for _ in range(2))
    assert first == again and shard.ids() == ["same"] and shard.size() == 8
    assert len(chunk_files(tmp_path)) == 1


def test_reloaded_shard_never_reuses_step_keys(tmp_path):
    shard = ReplayShard(0, str(tmp_path), capacity=100, mode="priority")
    insert_chunks(shard, 4)
    old_keys = shard.sample_part(64, 1, with_keys=True).keys
    reloaded = ReplayShard(0, str(tmp_path), capacity=100, mode="priority")
    new_keys = reloaded.sample_part(64, 1, with_keys=True).keys
    assert new_keys.min() > old_keys.max()


def test_a_batch_insert_stores_in_order_and_reloads_like_single_inserts(tmp_path):
    single, batched = ReplayShard(0, str(tmp_path / "single"), capacity=40), ReplayShard(0, str(tmp_path / "batched"), capacity=40)
    inserts = [Chunk(make_chunk(i % 2, 8 * (i // 2), 8), f"runner{i % 2}/env0", f"c{i}", i) for i in range(7)]
    for insert in inserts:
        single.insert(insert.data, insert.stream, insert.chunk_id, insert.weight_version)
    acks = batched.insert_many([*inserts[:4], inserts[1]])  # a repeated id is acknowledged, not stored twice
    acks += batched.insert_many(inserts[4:])
    assert [a.chunk_id for a in acks] == ["c0", "c1", "c2", "c3", "c1", "c4", "c5", "c6"]
    assert batched.ids() == single.ids() == ["c2", "c3", "c4", "c5", "c6"]  # 56 steps into 40: FIFO eviction
    assert chunk_files(tmp_path / "batched") == chunk_files(tmp_path / "single")
    reloaded = ReplayShard(0, str(tmp_path / "batched"), capacity=40, seed=3)
    assert reloaded.ids() == single.ids()
    same_sampler = ReplayShard(0, str(tmp_path / "single"), capacity=40, seed=3)
    ours, theirs = reloaded.sample_part(16, 8, with_keys=True), same_sampler.sample_part(16, 8, with_keys=True)
    np.testing.assert_array_equal(ours.keys, theirs.keys)  # the same step keys, so priorities line up
    for key in ours.batch:
        np.testing.assert_array_equal(ours.batch[key], theirs.batch[key])
    check_sequences(ours.batch, 8)


def test_a_batch_with_one_bad_chunk_stores_nothing(tmp_path):
    shard = ReplayShard(0, str(tmp_path), capacity=100)
    good = make_chunk(0, 0, 8)
    bad = {**make_chunk(0, 8, 8), "reward": np.zeros(8, np.float64)}  # dtype differs within the batch
    with pytest.raises(ValueError, match="differ"):
        shard.insert_many([Chunk(good, "s0", "good", 0), Chunk(bad, "s0", "bad", 0)])
    assert shard.ids() == [] and chunk_files(tmp_path) == []
