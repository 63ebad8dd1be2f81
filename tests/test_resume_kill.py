"""kill -9 of the whole training job, then `harmonyray resume LOGDIR`: counters, rate limiter, replay
contents and the W&B run continue from the last checkpoint."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_runtime import TINY

from system.checkpoint import list_checkpoints, load_checkpoint
from system.metrics import RUN_ID_FILE, read_metrics

CHUNK = 8  # runners.chunk_length in TINY
CLI = [sys.executable, "-m", "system.cli"]


def stored_chunks(logdir: Path) -> set[str]:
    """Chunk ids the replay shards have written durably (a file with its final name is complete)."""
    return {re.sub(r"^\d{12}-", "", p.stem) for p in (logdir / "replay").glob("shard_*/*.npz")}


def session_processes(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.split("\n")
    return [int(line.split()[0]) for line in out if line.split() and int(line.split()[1]) == sid]


def test_kill_9_of_the_job_then_resume_continues_where_the_checkpoint_left(tmp_path):
    logdir = tmp_path / "run"
    overrides = [*TINY, "train.train_ratio=4", "run.steps=1000000", "run.checkpoint_every=2", "run.eval_episodes=0", "wandb.mode=offline"]
    # Not the wandb service of this pytest process (set once any test used W&B): the killed job's
    # run would stay "in use" there, as it would not for a user's fresh shell.
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | {"WANDB_MODE": "offline"}
    job = subprocess.Popen([*CLI, "train", "--config", "cartpole", "--logdir", str(logdir), "--no-progress", *overrides],
                           start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and job.poll() is None:
            ckpts = list_checkpoints(logdir)
            if ckpts and int(ckpts[-1].stem.split("-")[1]) >= 400:  # past the prefill: the learner trains
                break
            time.sleep(0.5)
        assert job.poll() is None, job.stderr.read().decode()[-2000:]
        time.sleep(1.0)  # past the checkpoint, so the kill also loses work that only the replay files keep
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the driver and the Ray cluster it started: the whole job
        job.wait()
    job.stderr.close()
    for _ in range(60):  # Ray's own processes follow their driver
        if not session_processes(job.pid):
            break
        time.sleep(0.5)
    assert not session_processes(job.pid), "nothing of the killed job is left running"

    checkpoint = load_checkpoint(list_checkpoints(logdir)[-1])
    at_kill = stored_chunks(logdir)
    rows_at_kill = len(read_metrics(logdir))
    run_id = (logdir / RUN_ID_FILE).read_text().strip()
    steps, limiter = checkpoint["counters"]["env_steps"], checkpoint["limiter"]
    assert limiter["sampled"] > 0 and len(at_kill) * CHUNK >= limiter["inserted"]

    resumed = subprocess.run([*CLI, "resume", str(logdir), "--no-progress", f"run.steps={steps + 100}"],
                             capture_output=True, text=True, timeout=240, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["env_steps"] >= steps + 100
    rows = read_metrics(logdir)[rows_at_kill:]
    assert rows and min(r["step"] for r in rows) >= steps, "env steps go on from the checkpoint, not from zero"
    trained = [r for r in rows if "learner/updates" in r]
    assert trained and min(r["learner/updates"] for r in trained) >= checkpoint["agent"]["updates"]
    first = rows[0]
    assert first["replay/inserted_steps"] >= limiter["inserted"] and first["replay/sampled_steps"] >= limiter["sampled"], \
        "the limiter resumed its counters (a fresh one would start from zero and prefill again)"
    assert first["replay/size"] >= len(at_kill) * CHUNK, "the shards reloaded every chunk stored before the kill"
    assert at_kill <= stored_chunks(logdir)
    assert (logdir / RUN_ID_FILE).read_text().strip() == run_id
    runs = sorted((logdir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 2, "the resumed job logs to the same W&B run id"
