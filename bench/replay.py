"""Insert and sample throughput of the sharded ReplayService versus the in-process ReplayStorage.

Both run in the same process on the same data (64x64x3 uint8 images, DreamerV3-style chunks), so
the printed ratio is the cost of sharding: actor calls, fsynced chunk files, object-store transfers.
The last line printed is one JSON object with every number.

    .venv/bin/python bench/replay.py            # about a minute
    .venv/bin/python bench/replay.py --quick    # a few seconds
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# This script is named like the package it measures: take its own folder off the import path (Python
# puts it first) and make sure the repository root is there, so `import replay` finds the package.
_BENCH_DIR, _ROOT = Path(__file__).resolve().parent, Path(__file__).resolve().parents[1]
sys.path[:] = [str(_ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != _BENCH_DIR]

import numpy as np  # noqa: E402
import ray  # noqa: E402

from replay import ReplayService, ReplayStorage  # noqa: E402

IMAGE_SHAPE = (64, 64, 3)


def make_chunks(count: int, length: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """A few distinct random chunks, reused under fresh ids (generating one per insert would dominate)."""
    return [
        {
            "image": rng.integers(0, 256, (length, *IMAGE_SHAPE), dtype=np.uint8),
            "action": rng.integers(0, 18, length, dtype=np.int64),
            "reward": rng.standard_normal(length).astype(np.float32),
            "is_first": np.arange(length) == 0,
            "is_last": np.zeros(length, bool),
            "is_terminal": np.zeros(length, bool),
        }
        for _ in range(count)
    ]


def timed_batches(sample, seconds: float) -> float:
    """Batches per second drawn by sample() over about `seconds` (after one warm-up call)."""
    sample()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sample()
        count += 1
    return count / (time.perf_counter() - start)


def learner_wait_ms(sample, train_ms: float, steps: int) -> float:
    """Mean wait for the next batch of a learner that spends train_ms per batch off the CPU (as on a GPU)."""
    sample()
    waited = 0.0
    for _ in range(steps):
        start = time.perf_counter()
        sample()
        waited += time.perf_counter() - start
        time.sleep(train_ms / 1000)
    return waited / steps * 1000


def bench_inprocess(chunks, num_inserts: int, args, rng) -> dict[str, float]:
    storage = ReplayStorage(args.capacity)
    start = time.perf_counter()
    for i in range(num_inserts):
        storage.add(chunks[i % len(chunks)], f"env{i % args.streams}", f"c{i}", i)
    insert_s = time.perf_counter() - start
    batches_s = timed_batches(lambda: storage.sample(args.batch, args.seq_len, rng), args.seconds)
    return {"insert_s": insert_s, "batches_s": batches_s, "bytes_per_step": storage.nbytes / storage.size}


def bench_service(chunks, num_inserts: int, args, root: str) -> dict[str, float]:
    service = ReplayService.create(args.shards, root, args.capacity, seed=0)
    ray.get([shard.size.remote() for shard in service.shards], timeout=600)  # wait for the actors to start

    def runner(worker: int) -> None:
        for i in range(worker, num_inserts, args.inserters):
            service.insert(chunks[i % len(chunks)], f"env{i % args.streams}", f"c{i}", i)

    start = time.perf_counter()
    with ThreadPoolExecutor(args.inserters) as pool:
        list(pool.map(runner, range(args.inserters)))
    insert_s = time.perf_counter() - start

    sampler = service.sampler(args.batch, args.seq_len, prefetch=args.prefetch)

    def prefetched() -> None:
        next(sampler)

    def direct() -> None:
        service.sample(args.batch, args.seq_len)

    learner_steps = max(int(args.seconds * 1000 / args.train_ms), 5)
    prefetched_rate = timed_batches(prefetched, args.seconds)
    prefetch_wait = learner_wait_ms(prefetched, args.train_ms, learner_steps)
    sampler.close()
    direct_rate = timed_batches(direct, args.seconds)
    direct_wait = learner_wait_ms(direct, args.train_ms, learner_steps)
    stats = service.stats()
    for shard in service.shards:
        ray.kill(shard)
    return {
        "insert_s": insert_s,
        "batches_s": prefetched_rate,
        "noprefetch_batches_s": direct_rate,
        "prefetch_wait_ms": prefetch_wait,
        "noprefetch_wait_ms": direct_wait,
        "bytes_per_step": stats["nbytes"] / stats["size"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small buffer, 1 s per sampling phase")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--capacity", type=int, help="total steps (default 32768, quick 4096)")
    parser.add_argument("--chunk-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--inserters", type=int, default=4, help="concurrent runner threads")
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--seconds", type=float, help="per sampling phase (default 8, quick 1)")
    parser.add_argument("--train-ms", type=float, default=50.0, help="simulated GPU time per learner step")
    args = parser.parse_args()
    args.capacity = args.capacity or (4096 if args.quick else 32768)
    args.seconds = args.seconds or (1.0 if args.quick else 8.0)

    rng = np.random.default_rng(0)
    chunks = make_chunks(8, args.chunk_len, rng)
    chunk_mb = sum(a.nbytes for a in chunks[0].values()) / 1e6
    num_inserts = args.capacity * 5 // 4 // args.chunk_len  # a quarter more than fits: eviction included
    batch_mb = args.batch * args.seq_len * chunk_mb / args.chunk_len

    local = bench_inprocess(chunks, num_inserts, args, rng)
    ray.init(include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="replay-bench-") as root:
        sharded = bench_service(chunks, num_inserts, args, root)
    ray.shutdown()

    result = {
        "shards": args.shards,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "insert_mb_s": num_inserts * chunk_mb / sharded["insert_s"],
        "inprocess_insert_mb_s": num_inserts * chunk_mb / local["insert_s"],
        "sample_batches_s": sharded["batches_s"],
        "sample_mb_s": sharded["batches_s"] * batch_mb,
        "noprefetch_sample_batches_s": sharded["noprefetch_batches_s"],
        "inprocess_sample_batches_s": local["batches_s"],
        "learner_wait_ms": sharded["prefetch_wait_ms"],
        "noprefetch_learner_wait_ms": sharded["noprefetch_wait_ms"],
        "ratio": sharded["batches_s"] / local["batches_s"],
        "insert_ratio": local["insert_s"] / sharded["insert_s"],
        "bytes_per_step": sharded["bytes_per_step"],
        "inprocess_bytes_per_step": local["bytes_per_step"],
        "raw_bytes_per_step": chunk_mb * 1e6 / args.chunk_len,
    }
    print(f"{'':28}{'sharded':>12}{'in-process':>12}")
    print(f"{'insert MB/s':28}{result['insert_mb_s']:12.1f}{result['inprocess_insert_mb_s']:12.1f}")
    print(f"{'sample batches/s (B=%d,T=%d)' % (args.batch, args.seq_len):28}"
          f"{result['sample_batches_s']:12.1f}{result['inprocess_sample_batches_s']:12.1f}")
    print(f"{'  without prefetch':28}{result['noprefetch_sample_batches_s']:12.1f}")
    print(f"learner wait per batch with {args.train_ms:.0f} ms of GPU work: "
          f"{result['learner_wait_ms']:.2f} ms with prefetch={args.prefetch}, "
          f"{result['noprefetch_learner_wait_ms']:.2f} ms without")
    print(f"sharded / in-process sample throughput: {result['ratio']:.2f}")
    print(f"bytes per stored 64x64x3 step: {result['bytes_per_step']:.0f} "
          f"(raw {result['raw_bytes_per_step']:.0f}, image alone {np.prod(IMAGE_SHAPE)})")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
