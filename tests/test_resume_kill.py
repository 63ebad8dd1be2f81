"""kill -9 of a whole job, then resume: the job is a sweep (`harmonyray sweep`, 2 harmony modes x 2
seeds, two trials at a time, each trial a normal run) with the Ray cluster it started. Afterwards
nothing of it runs; `harmonyray sweep --resume` on another cluster (the simulated 3-node one)
leaves the finished trials alone, and the interrupted run goes on from its last checkpoint: env
steps, updates and the rate limiter's counters continue, the replay shards reload every chunk
stored before the kill, and the report has a row per setting. (The W&B run id a resumed run
keeps: tests/test_metrics.py.)"""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import ray
from test_runtime import TINY

from system.checkpoint import list_checkpoints, load_checkpoint
from system.cli import main
from system.metrics import read_metrics
from system.sweep import SUMMARY_FILE

CHUNK = 8  # runners.chunk_length in TINY
PREFILL = 100
STEPS = 300
CLI = [sys.executable, "-m", "system.cli"]


def stored_chunks(logdir: Path) -> set[str]:
    """Chunk ids the replay shards have written durably (a file with its final name is complete)."""
    return {re.sub(r"^\d{12}-", "", p.stem) for p in (logdir / "replay").glob("shard_*/*.npz")}


def session_processes(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.split("\n")
    return [int(line.split()[0]) for line in out if line.split() and int(line.split()[1]) == sid]


def checkpoint_steps(logdir: Path) -> int:
    checkpoints = list_checkpoints(logdir)
    return int(checkpoints[-1].stem.split("-")[1]) if checkpoints else 0


def test_kill_9_of_a_sweep_then_resume_keeps_finished_trials_and_continues_the_others(ray_multinode, tmp_path, capsys):
    root = tmp_path / "sweep"
    overrides = [*TINY, f"run.steps={STEPS}", f"train.prefill={PREFILL}", "replay.shards=1", "runners.count=1", "learner.num_cpus=0.5",
                 "run.checkpoint_every=1", "run.eval_episodes=1", "ray.num_cpus=2"]  # 1 CPU per trial: two at a time
    # Not the wandb service of this pytest process: the killed job's would stay "in use" there.
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    job = subprocess.Popen([*CLI, "sweep", "--config", "cartpole", "--grid", "agent.harmony.mode=rectified,off", "--seeds", "2",
                            "--max-concurrent", "2", "--logdir", str(root), *overrides],
                           start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    most_at_once = 0
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and job.poll() is None:
            started = [d for d in root.glob("*seed=*") if (d / "config.yaml").is_file()]
            running = [d for d in started if not (d / SUMMARY_FILE).is_file()]
            most_at_once = max(most_at_once, len(running))
            if len(started) - len(running) >= 2 and any(checkpoint_steps(d) >= PREFILL + 100 for d in running):
                break  # two finished, and a third has a checkpoint past the prefill: its learner trains
            time.sleep(0.2)
        assert job.poll() is None, job.stderr.read().decode()[-3000:]
        time.sleep(0.5)  # past the checkpoint, so the kill also loses work that only the replay files keep
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the sweep's driver, its trials and the Ray cluster it started
        job.wait()
    job.stderr.close()
    for _ in range(60):  # Ray's own processes follow their driver
        if not session_processes(job.pid):
            break
        time.sleep(0.5)
    assert not session_processes(job.pid), "nothing of the killed job is left running"
    assert most_at_once == 2, "two trials at a time"

    done = {d.name: (d / SUMMARY_FILE).stat().st_mtime_ns for d in root.glob("*seed=*") if (d / SUMMARY_FILE).is_file()}
    interrupted = max((d for d in root.glob("*seed=*") if d.name not in done), key=checkpoint_steps)
    assert len(done) == 2 and checkpoint_steps(interrupted) > PREFILL
    checkpoint = load_checkpoint(list_checkpoints(interrupted)[-1])
    steps, limiter = checkpoint["counters"]["env_steps"], checkpoint["limiter"]
    at_kill, rows_at_kill = stored_chunks(interrupted), len(read_metrics(interrupted))
    assert limiter["sampled"] > 0 and len(at_kill) * CHUNK >= limiter["inserted"]

    assert main(["sweep", "--resume", str(root)]) == 0  # on this process's cluster: 3 nodes of 1 CPU
    out, err = capsys.readouterr()
    assert "2 finished before, 2 to run" in err
    trials = sorted(root.glob("*seed=*"))
    assert len(trials) == 4 and all((d / SUMMARY_FILE).is_file() for d in trials)
    assert {d.name: (d / SUMMARY_FILE).stat().st_mtime_ns for d in trials if d.name in done} == done, "finished trials not run again"

    rows = read_metrics(interrupted)[rows_at_kill:]
    assert rows and min(r["step"] for r in rows) >= steps, "env steps go on from the checkpoint, not from zero"
    assert json.loads((interrupted / SUMMARY_FILE).read_text())["env_steps"] >= STEPS
    trained = [r for r in rows if "learner/updates" in r]
    assert trained and min(r["learner/updates"] for r in trained) >= checkpoint["agent"]["updates"]
    first = rows[0]
    assert first["replay/inserted_steps"] >= limiter["inserted"] and first["replay/sampled_steps"] >= limiter["sampled"], \
        "the limiter resumed its counters (a fresh one would start from zero and prefill again)"
    assert first["replay/size"] >= len(at_kill) * CHUNK, "the shard reloaded every chunk stored before the kill"
    assert at_kill <= stored_chunks(interrupted)

    nodes = [json.loads(f.read_text().splitlines()[-1])["node_id"] for f in root.glob(".tune/attempt-2/*/result.json")]
    assert len(nodes) == 2 and len(set(nodes)) == 2, "the two resumed trials at once, each in its own placement group on its own node"
    with open(root / "report.csv") as f:
        groups = {row["group"] for row in csv.DictReader(f)}
    assert groups == {"agent.harmony.mode=off", "agent.harmony.mode=rectified"}
    assert "| agent.harmony.mode=rectified | final eval/return | 2 |" in out, "the report is printed, both seeds in it"
