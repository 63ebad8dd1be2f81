"""SamplesPerInsertLimiter as a real async Ray actor: prefill, ratio, no deadlock, shutdown, resume."""
from __future__ import annotations

import threading
import time

import pytest

from replay.rate_limiter import make_limiter_actor, min_tolerance

CHUNK, BATCH = 8, 32  # steps per insert, steps per sample


def run_pair(ray, limiter, inserts: int, batch: int = 1) -> tuple[threading.Thread, threading.Thread]:
    """A producer doing `inserts` chunk inserts (asking for up to `batch` at once, as a runner's
    sender does) and a consumer sampling until the limiter closes."""

    def produce():
        done = 0
        while done < inserts:
            asked = min(batch, inserts - done)
            granted = ray.get(limiter.acquire_inserts.remote([CHUNK] * asked, 20.0), timeout=120)
            assert 1 <= granted <= asked, "producer starved"
            done += granted

    def consume():
        while ray.get(limiter.acquire_sample.remote(BATCH, 20.0), timeout=120):
            pass

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for t in threads:
        t.start()
    return threads[0], threads[1]


def test_tolerance_below_the_no_deadlock_bound_is_a_value_error(ray_local):
    assert min_tolerance(4.0, CHUNK, BATCH) == 4 * CHUNK + BATCH
    with pytest.raises(ValueError, match="deadlock"):
        make_limiter_actor(4.0, 0, tolerance=63, max_insert_steps=CHUNK, max_sample_steps=BATCH, name=None)


@pytest.mark.parametrize(("samples_per_insert", "batch"), [(0.5, 1), (4.0, 1), (4.0, 6)])
def test_ratio_held_within_ten_percent_at_the_smallest_tolerance(ray_local, samples_per_insert, batch):
    tolerance = min_tolerance(samples_per_insert, CHUNK, BATCH)  # smallest allowed: must not deadlock
    limiter = make_limiter_actor(samples_per_insert, 64, tolerance, CHUNK, BATCH, name=None)
    producer, consumer = run_pair(ray_local, limiter, inserts=250, batch=batch)
    producer.join(timeout=40)
    assert not producer.is_alive(), "deadlock: the producer never finished"
    time.sleep(0.2)  # let the consumer take what it is still owed
    inserted, ratio = ray_local.get([limiter.inserted.remote(), limiter.ratio.remote()], timeout=120)
    ray_local.get(limiter.close.remote(), timeout=120)
    consumer.join(timeout=10)
    assert not consumer.is_alive(), "close() did not release the waiting consumer"
    assert inserted == 250 * CHUNK
    assert ratio == pytest.approx(samples_per_insert, rel=0.1)


def test_prefill_never_blocks_and_sampling_waits_for_min_size(ray_local):
    limiter = make_limiter_actor(1.0, 100, min_tolerance(1.0, CHUNK, BATCH), CHUNK, BATCH, name=None)
    assert not ray_local.get(limiter.acquire_sample.remote(BATCH, 0.2), timeout=120)
    for _ in range(13):  # 104 steps, far beyond the tolerance of 40, without a single sample
        assert ray_local.get(limiter.acquire_insert.remote(CHUNK, 0), timeout=120)
    # The ratio counts from min_size: runners may get 40 replayed steps' worth (40 env steps) ahead.
    for _ in range(4):  # 112 ... 136 inserted: 1.0 * (136 - 100) <= 40
        assert ray_local.get(limiter.acquire_insert.remote(CHUNK, 0), timeout=120)
    assert not ray_local.get(limiter.acquire_insert.remote(CHUNK, 0.2), timeout=120), "prefill is over: inserts wait"
    assert ray_local.get(limiter.acquire_sample.remote(BATCH, 0), timeout=120)
    assert ray_local.get(limiter.acquire_insert.remote(CHUNK, 0), timeout=120), "a sample makes room for an insert"
    with pytest.raises(Exception, match="outside"):
        ray_local.get(limiter.acquire_sample.remote(BATCH + 1), timeout=120)


def test_a_batch_of_inserts_gets_the_prefix_the_ratio_allows(ray_local):
    limiter = make_limiter_actor(1.0, 100, min_tolerance(1.0, CHUNK, BATCH), CHUNK, BATCH, name=None)
    assert ray_local.get(limiter.acquire_inserts.remote([CHUNK] * 13, 0), timeout=120) == 13  # prefill: all of it
    # 104 inserted: each further chunk is judged alone, 1.0 * (inserted - 100) <= 40: 112 ... 136
    assert ray_local.get(limiter.acquire_inserts.remote([CHUNK] * 10, 0), timeout=120) == 4
    assert ray_local.get(limiter.acquire_inserts.remote([CHUNK] * 2, 0.2), timeout=120) == 0, "none allowed: wait, then nothing"
    assert ray_local.get(limiter.acquire_sample.remote(BATCH, 0), timeout=120)
    # 32 sampled: 144 - 100 - 32 = 12 ... 168 - 100 - 32 = 36 pass, 176 would be 44 > 40
    assert ray_local.get(limiter.acquire_inserts.remote([CHUNK] * 6, 0), timeout=120) == 4
    assert ray_local.get(limiter.inserted.remote(), timeout=120) == 168
    with pytest.raises(Exception, match="outside"):
        ray_local.get(limiter.acquire_inserts.remote([CHUNK, CHUNK + 1], 0), timeout=120)
    assert ray_local.get(limiter.inserted.remote(), timeout=120) == 168, "a refused batch counts nothing"


def test_close_releases_waiters_and_state_round_trips(ray_local):
    limiter = make_limiter_actor(2.0, 64, min_tolerance(2.0, CHUNK, BATCH), CHUNK, BATCH, name=None)
    waiting = limiter.acquire_sample.remote(BATCH)  # no timeout: only close() can end it
    time.sleep(0.2)
    ray_local.get(limiter.close.remote(), timeout=120)
    assert ray_local.get(waiting, timeout=5) is False
    assert ray_local.get(limiter.acquire_insert.remote(CHUNK), timeout=120) is False

    resumed = make_limiter_actor(2.0, 64, min_tolerance(2.0, CHUNK, BATCH), CHUNK, BATCH, name=None)
    ray_local.get(resumed.load_state.remote({"inserted": 1064, "sampled": 2000}), timeout=120)
    assert ray_local.get(resumed.state.remote(), timeout=120) == {"inserted": 1064, "sampled": 2000}
    assert ray_local.get(resumed.ratio.remote(), timeout=120) == 2.0
    assert ray_local.get(resumed.acquire_sample.remote(BATCH, 0), timeout=120)  # resumed runs skip prefill
