"""Node loss on a simulated multi-node cluster (head + 2 workers on this machine): the runners and
replay shards of a removed worker are re-created on the other one, and no acknowledged chunk is lost."""
from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

import ray
from test_runtime import tiny_config

from system.driver import Run, make_logdir
from system.metrics import read_metrics

T = TypeVar("T")


def when_back(call: Callable[[], T], ready: Callable[[T], bool] = lambda _: True, within_s: float = 120) -> T:
    """The result of `call` once its actor answers (Ray raises ActorUnavailableError while it
    restarts one) and `ready` holds; fails after `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            result = call()
            if ready(result):
                return result
            why = f"not ready: {result}"
        except ray.exceptions.ActorUnavailableError as error:
            why = repr(error)
        assert time.monotonic() < deadline, f"not back within {within_s:g} s ({why})"
        time.sleep(0.5)


def test_runners_and_shards_of_a_lost_node_come_back_on_the_others(ray_multinode, tmp_path):
    cluster, workers = ray_multinode
    config = tiny_config(
        "run.steps=1200", "runners.count=2", "runners.resources={collector: 0.4}", "runners.restart_delay=0.5",
        "learner.resources={head: 1}", "learner.num_cpus=0.5", "run.eval_episodes=0",
        "replay.shards=2", "replay.resources={collector: 0.01}",  # soft SPREAD over the workers, no node pinned
    )
    logdir = make_logdir(config, str(tmp_path / "run"))
    run = Run(config, logdir, resume=False, progress=False)
    acknowledged: set[str] = set()
    lost: dict[str, object] = {}

    def remove_a_worker() -> None:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and not any(r["step"] >= 200 for r in read_metrics(logdir)):
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
    assert summary.env_steps >= 1200 and summary.updates > 0
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert lost["node"] not in alive
    # the run may end while Ray is still re-creating a lost actor on the other worker: wait for it
    runner_nodes = {when_back(lambda: ray.get(runner.where.remote(), timeout=30)) for runner in run.runners}
    stats = when_back(run.replay.stats, ready=lambda s: s["shards_up"] == 2)
    assert runner_nodes <= alive
    assert {s["node_id"] for s in stats["shards"]} <= alive, "the lost shards were re-created elsewhere"
    assert sum(s["reloaded_chunks"] for s in stats["shards"]) > 0, "a re-created shard reloaded its chunk files"
    for runner in run.runners:
        acknowledged.update(ray.get(runner.inserted_ids.remote(), timeout=120))
    assert acknowledged and acknowledged <= set(run.replay.ids()), "every acknowledged chunk survived the node"
    rows = read_metrics(logdir)
    failures = [r["runner/failures"] for r in rows if "runner/failures" in r]
    assert failures and max(failures) >= lost["runners"], "the supervisor saw the lost runners"
