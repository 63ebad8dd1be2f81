"""A short training run on a simulated multi-node cluster (head + 2 workers on this machine):
runners, shards and two data-parallel learners land where their configured resources are, and the
learners train as one group across nodes, giving freed memory back as configured.
(tests/test_resume_kill.py resumes a sweep there.)"""
from __future__ import annotations

from test_runtime import tiny_config

from system.driver import Run, make_logdir
from system.metrics import read_metrics


def test_runners_spread_over_workers_and_learners_follow_their_resource(ray_multinode, tmp_path):
    _, workers = ray_multinode
    config = tiny_config(
        "run.steps=1000", "runners.count=2", "runners.resources={collector: 1}",
        "learner.num_learners=2", "learner.resources={trainer: 1}", "learner.num_cpus=0.5", "run.eval_episodes=0",
        "replay.resources={worker1: 0.5}", "replay.memory_gb=0.1", "learner.keep_freed_memory=false",
    )
    logdir = make_logdir(config, str(tmp_path / "run"))
    run = Run(config, logdir, resume=False, progress=False)
    summary = run.execute_and_release()  # the learners' placement group too: the cluster is shared with later tests
    worker_ids = {w.node_id for w in workers}
    assert set(run.placement["runners"]) == worker_ids, "one runner on each worker node"
    assert sorted(run.placement["learners"]) == sorted(worker_ids), "one learner on each worker offering `trainer`: the group spans two nodes"
    assert set(run.placement["shards"]) == {workers[1].node_id}, "shards where their resource is"
    assert not any("freed host memory kept" in d for d in run.placement["learner_devices"]), "memory-tight nodes: malloc as it was"
    assert summary.env_steps >= 1000 and summary.updates > 0
    rows = read_metrics(logdir)
    assert max(r.get("runner/min_weight_version", 0) for r in rows) > 0, "weights reached the runners on both workers"
    assert max(r.get("learner/world_size", 0) for r in rows) == 2
