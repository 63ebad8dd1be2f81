"""Node loss on a simulated multi-node cluster (head + 2 workers on this machine): the runners and
replay shards of a removed worker are re-created on the other one, and no acknowledged chunk is lost."""
from __future__ import annotations

import threading
import time

import ray
from test_runtime import tiny_config

from system.driver import Run, make_logdir
from system.metrics import read_metrics


def test_runners_and_shards_of_a_lost_node_come_back_on_the_others(ray_multinode, tmp_path):
    cluster, workers = ray_multinode
    config = tiny_config(
        "run.steps=800", "train.train_ratio=4", "runners.count=2", "runners.resources={collector: 0.4}", "runners.restart_delay=0.5",
        "learner.resources={head: 1}", "learner.num_cpus=0.5", "run.eval_episodes=0",
        "replay.shards=2", "replay.resources={collector: 0.01}",  # soft SPREAD over the workers, no node pinned
    )
    logdir = make_logdir(config, str(tmp_path / "run"))
    run = Run(config, logdir, resume=False, progress=False)
    acknowledged: set[str] = set()
    lost: dict[str, object] = {}

    def remove_a_worker() -> None:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and not any(r["step"] >= 400 for r in read_metrics(logdir)):
            time.sleep(0.2)
        placement = run.placement
        # the worker holding the most of our actors (SPREAD puts a runner and a shard on each)
        victim = max(workers, key=lambda w: placement["runners"].count(w.node_id) + placement["shards"].count(w.node_id))
        for runner in run.runners:
            acknowledged.update(ray.get(runner.inserted_ids.remote(), timeout=120))
        lost.update(node=victim.node_id, runners=placement["runners"].count(victim.node_id),
                    shards=placement["shards"].count(victim.node_id), at=time.monotonic())
        cluster.remove_node(victim)

    remover = threading.Thread(target=remove_a_worker)
    remover.start()
    summary = run.execute()
    remover.join()

    assert lost["runners"] >= 1 and lost["shards"] >= 1, f"the removed worker held a runner and a shard: {lost}"
    assert summary.env_steps >= 800 and summary.updates > 0
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert lost["node"] not in alive
    runner_nodes = set(ray.get([r.where.remote() for r in run.runners], timeout=120))
    stats = run.replay.stats()
    assert runner_nodes <= alive and stats["shards_up"] == 2
    assert {s["node_id"] for s in stats["shards"]} <= alive, "the lost shards were re-created elsewhere"
    assert sum(s["reloaded_chunks"] for s in stats["shards"]) > 0, "a re-created shard reloaded its chunk files"
    for runner in run.runners:
        acknowledged.update(ray.get(runner.inserted_ids.remote(), timeout=120))
    assert acknowledged and acknowledged <= set(run.replay.ids()), "every acknowledged chunk survived the node"
    rows = read_metrics(logdir)
    after = [r for r in rows if r["step"] > 500 and "runner/env_steps_per_s" in r]
    assert after and max(r["runner/failures"] for r in after) >= lost["runners"], "the supervisor saw the lost runners"
