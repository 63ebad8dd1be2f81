"""`harmonyray sweep`: the trials a grid and seeds make, and bad grids refused before anything
starts. The sweep itself (trials two at a time, kill -9, --resume on two nodes) is run in
tests/test_multinode.py, on that module's simulated cluster."""
from __future__ import annotations

import json

import pytest

from system.cli import main
from system.config import load_config
from system.sweep import SUMMARY_FILE, SweepSpec, finished, parse_grid, plan


def test_a_grid_times_seeds_makes_one_trial_each_named_grouped_and_tagged(tmp_path):
    spec = SweepSpec("cartpole", parse_grid(["agent.harmony.mode=rectified,off", "train.train_ratio=32,64"]), seeds=3,
                     overrides=["run.seed=10", "run.steps=5000"])
    trials = plan(spec, tmp_path / "sweep-a")
    assert len(trials) == 2 * 2 * 3
    first = trials[0]
    assert first.name == "agent.harmony.mode=rectified,train.train_ratio=32,seed=10"
    assert first.logdir == tmp_path / "sweep-a" / first.name
    assert [t.config.run.seed for t in trials[:3]] == [10, 11, 12], "seeds count up from run.seed"
    assert {t.config.run.steps for t in trials} == {5000}
    assert {(t.config.agent.harmony.mode, t.config.train.train_ratio) for t in trials} == {
        ("rectified", 32.0), ("rectified", 64.0), ("off", 32.0), ("off", 64.0)}
    assert {t.config.wandb.group for t in trials} == {"sweep-a"}, "one W&B group per sweep"
    assert trials[-1].config.wandb.tags == ["agent.harmony.mode=off", "train.train_ratio=64"], "tagged with the grid values"


def test_a_sweep_spec_survives_its_file(tmp_path):
    spec = SweepSpec("cartpole", parse_grid(["agent.harmony.mode=rectified,off"]), seeds=2, overrides=["run.steps=500"], max_concurrent=2)
    spec.save(tmp_path)
    assert SweepSpec.load(tmp_path) == spec


def test_a_trial_is_finished_at_its_steps_and_a_resume_with_more_steps_continues_it(tmp_path):
    spec = SweepSpec("cartpole", parse_grid(["agent.harmony.mode=rectified,off"]), overrides=["run.steps=700", "train.prefill=600"])
    first, second = plan(spec, tmp_path)
    first.logdir.mkdir()
    (first.logdir / SUMMARY_FILE).write_text(json.dumps({"env_steps": 704, "eval_return": 80.0}))
    assert finished(first) and not finished(second), "a summary of a run that reached run.steps; none yet"
    longer, _ = plan(spec, tmp_path, extra=["run.steps=1000"])  # `--resume DIR run.steps=1000`
    assert not finished(longer), "resumed to run on from its checkpoint"
    (first.logdir / SUMMARY_FILE).write_text(json.dumps({"env_steps": 1003}))
    assert finished(longer)


@pytest.mark.parametrize("grid, message", [
    (["agent.harmony.mod=rectified,off"], "agent.harmony.mod"),  # no such key
    (["train.train_ratio=32,lots"], "train.train_ratio"),  # a value of the wrong type
    (["run.seed=1,2"], "--seeds"),
    (["ray.num_cpus=1,2"], "ray.num_cpus"),
    (["agent.harmony.mode"], "KEY=V1,V2"),
    (["train.batch_size=8", "train.batch_size=16"], "twice"),
])
def test_a_bad_grid_exits_2_with_one_line_naming_it_before_anything_starts(grid, message, tmp_path, capsys):
    root = tmp_path / "sweep"
    argv = ["sweep", "--config", "cartpole", "--logdir", str(root), "--seeds", "2"]
    for item in grid:
        argv += ["--grid", item]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("harmonyray: error:") and message in err, err
    assert not root.exists(), "nothing written"


def test_resume_needs_a_sweep_folder_and_takes_its_own_settings(tmp_path, capsys):
    assert main(["sweep", "--resume", str(tmp_path)]) == 2
    assert "not a sweep folder" in capsys.readouterr().err
    assert main(["sweep", "--resume", str(tmp_path), "--grid", "train.batch_size=8,16"]) == 2
    assert "--resume DIR takes the sweep's own" in capsys.readouterr().err


def test_a_trial_the_embedded_cluster_can_never_hold_is_refused_before_anything_starts(ray_local, tmp_path, capsys):
    root = tmp_path / "sweep"
    argv = ["sweep", "--config", "cartpole", "--logdir", str(root), "--grid", "agent.harmony.mode=rectified,off",
            "runners.count=3", "runners.num_cpus=1"]  # 3 + the learner's 1 CPU on this 2-CPU cluster
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "asks for CPU: 4 (the cluster has 2)" in err, err
    assert not root.exists(), "nothing written"


def test_every_actor_of_a_run_inside_its_own_placement_group_is_pinned_to_its_bundle(ray_local):
    """A sweep trial's run: learners, then runners, then shards with resources each get their own
    bundle (one free to take any could take another's); the singletons sit in bundle 0."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from system.cluster import learner_options, on_driver_node, run_bundles, runner_options, shard_placement

    config = load_config("cartpole", ["learner.num_learners=2", "learner.num_cpus=0.25", "runners.count=2", "runners.num_cpus=0.25",
                                      "replay.shards=2", "replay.num_cpus=0.1"])
    bundles = run_bundles(config)
    assert bundles == [{"CPU": 0.25}] * 4 + [{"CPU": 0.1}] * 2
    group = placement_group(bundles)
    try:
        assert ray.get(group.ready(), timeout=60)

        @ray.remote(num_cpus=0)
        def where() -> dict[str, list[int]]:
            def index(options: dict) -> int:
                return options["scheduling_strategy"].placement_group_bundle_index
            return {"learners": [index(learner_options(config, r)) for r in range(2)],
                    "runners": [index(runner_options(config, i)) for i in range(2)],
                    "shards": [index(shard_placement(config, i)) for i in range(2)],
                    "singletons": [index(on_driver_node())]}

        inside = where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(group, 0, placement_group_capture_child_tasks=True))
        assert ray.get(inside.remote(), timeout=60) == {"learners": [0, 1], "runners": [2, 3], "shards": [4, 5], "singletons": [0]}
        assert runner_options(config, 1)["scheduling_strategy"] == "SPREAD", "outside a placement group: placed as before"
    finally:
        remove_placement_group(group)
