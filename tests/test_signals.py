"""SIGTERM and SIGINT of a real `harmonyray train | resume` process: an orderly stop with a
checkpoint, one line that says how to resume, exit 128+signum within run.shutdown_timeout, a second
signal exits at once, and nothing the job started (Ray's GCS, raylet, node agents, workers, W&B's
service) outlives it.

Each job gets a Ray temp dir of its own (RAY_TMPDIR): its processes are the ones whose environment
or command line holds it, so Ray clusters of other tests on this machine are never counted.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from test_resume_kill import stored_chunks
from test_runtime import TINY

from system.checkpoint import list_checkpoints, load_checkpoint
from system.config import ConfigError, load_config
from system.metrics import read_metrics

CLI = [sys.executable, "-m", "system.cli"]
SHUTDOWN_TIMEOUT = 30
MARGIN = 10  # interpreter start-up of nothing, exit of a loaded 2-core machine
OVERRIDES = [*TINY, "runners.count=1", "replay.shards=1", "train.prefill=64", "run.steps=1000000", "wandb.mode=offline",
             f"run.shutdown_timeout={SHUTDOWN_TIMEOUT}"]
NOT_IN_STDERR = ("Traceback", "SIGTERM received", "PC: @", "Aborted", "Check failed")


class Job:
    """A CLI process in a session of its own, with its own Ray temp dir; stderr goes to a file."""

    def __init__(self, args: list[str], workdir: Path):
        self.ray_tmp = tempfile.mkdtemp(prefix="hr-sig-", dir="/tmp")  # short: Ray's socket paths must fit
        self.stderr_path = workdir / f"stderr-{len(list(workdir.glob('stderr-*')))}.txt"
        # Not the wandb service of this pytest process (test_resume_kill says why)
        env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | {"WANDB_MODE": "offline", "RAY_TMPDIR": self.ray_tmp}
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def processes(self) -> list[psutil.Process]:
        """Live processes of this job other than the CLI itself: its Ray cluster and W&B service.
        Ray's node agents retitle themselves over their command line and environment (both read
        back blank), so they are known by their log files in the session dir, which they keep open."""
        found = []
        for proc in psutil.process_iter(["status", "cmdline"]):
            try:
                if proc.pid == self.proc.pid or proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                if (self.ray_tmp in " ".join(proc.info["cmdline"] or []) or proc.environ().get("RAY_TMPDIR") == self.ray_tmp
                        or any(f.path.startswith(self.ray_tmp) for f in proc.open_files())):
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def wait_until(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the job ended ({self.proc.returncode}) before {what}:\n{self.stderr()[-3000:]}"
            if condition():
                return
            time.sleep(0.5)
        raise AssertionError(f"no {what} within {timeout} s:\n{self.stderr()[-3000:]}")

    def wait_exit(self, timeout: float) -> tuple[int, float]:
        start = time.monotonic()
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - start

    def assert_nothing_left(self) -> None:
        deadline = time.monotonic() + 10
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [f"{p.pid} {' '.join(p.cmdline())[:100]}" for p in self.processes()]
        assert not left, f"processes of the job outlived it: {left}"

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for proc in self.processes():  # what a failed test left, so that it does not spoil others
            try:
                proc.kill()
            except psutil.Error:
                pass
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def trained_rows(logdir: Path, after: int = 0, past_updates: int = 0) -> list[dict]:
    return [r for r in read_metrics(logdir)[after:] if r.get("learner/updates", 0) > past_updates]


def resume_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("harmonyray:")]


@pytest.fixture(scope="module")
def sigterm_run(tmp_path_factory):
    """`train` (with its progress bar), SIGTERM to the driver alone once the learner trains."""
    workdir = tmp_path_factory.mktemp("signals")
    logdir = workdir / "run"
    job = Job(["train", "--config", "cartpole", "--logdir", str(logdir), *OVERRIDES], workdir)
    try:
        job.wait_until(lambda: trained_rows(logdir), 180, "learner update")
        names = [" ".join(p.cmdline()).split()[0].rsplit("/", 1)[-1] for p in job.processes()]
        assert {"raylet", "gcs_server", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "wandb-core"} <= set(names), \
            f"the job's own processes are found (else 'nothing left' would prove nothing): {names}"
        steps_before = read_metrics(logdir)[-1]["step"]
        job.proc.send_signal(signal.SIGTERM)
        code, seconds = job.wait_exit(SHUTDOWN_TIMEOUT + MARGIN)
        yield {"job": job, "logdir": logdir, "code": code, "seconds": seconds, "steps_before": steps_before}
    finally:
        job.cleanup()


def test_sigterm_stops_with_a_checkpoint_one_line_and_exit_143(sigterm_run):
    job, logdir = sigterm_run["job"], sigterm_run["logdir"]
    stderr = job.stderr()
    assert sigterm_run["code"] == 143, f"exit {sigterm_run['code']} after {sigterm_run['seconds']:.1f} s:\n{stderr[-3000:]}"
    assert sigterm_run["seconds"] <= SHUTDOWN_TIMEOUT + MARGIN
    for text in NOT_IN_STDERR:
        assert text not in stderr, f"{text!r} in stderr:\n{stderr[-3000:]}"
    lines = resume_lines(stderr)
    assert len(lines) == 1, lines
    match = re.fullmatch(rf"harmonyray: interrupted by SIGTERM at ([\d,]+) env steps; checkpoint written; "
                         rf"resume with: harmonyray resume {re.escape(str(logdir))}", lines[0])
    assert match, lines[0]

    steps = int(match.group(1).replace(",", ""))
    checkpoint = load_checkpoint(list_checkpoints(logdir)[-1])
    rows = read_metrics(logdir)
    assert checkpoint["counters"]["env_steps"] == steps == rows[-1]["step"] >= sigterm_run["steps_before"], \
        "the checkpoint counts every step collected up to the signal (the final metrics row)"
    assert checkpoint["agent"]["updates"] > 0 and checkpoint["limiter"]["sampled"] > 0
    inserted = checkpoint["limiter"]["inserted"]
    assert len(stored_chunks(logdir)) * 8 >= inserted, "every chunk the limiter counted is on disk"
    assert abs(inserted - steps) <= checkpoint["counters"]["episodes"] + 8 * 6, "the runner flushed what it had collected"
    assert not any("eval/return" in r for r in rows), "no final evaluation after a signal"
    job.assert_nothing_left()


def test_resume_after_sigterm_continues_and_a_second_sigint_exits_at_once(sigterm_run):
    """`resume` goes on from the checkpoint the signal wrote; then Ctrl-C twice (SIGINT to the whole
    process group, as a terminal sends it): the second exits at once with 130, leaving nothing."""
    logdir = sigterm_run["logdir"]
    assert sigterm_run["code"] == 143
    checkpoint = load_checkpoint(list_checkpoints(logdir)[-1])
    steps, updates = checkpoint["counters"]["env_steps"], checkpoint["agent"]["updates"]
    rows_before = len(read_metrics(logdir))
    job = Job(["resume", str(logdir), "--no-progress", f"run.shutdown_timeout={SHUTDOWN_TIMEOUT}"], logdir.parent)
    try:
        job.wait_until(lambda: trained_rows(logdir, rows_before, updates), 180, "learner update past the checkpoint")
        rows = read_metrics(logdir)[rows_before:]
        assert min(r["step"] for r in rows) >= steps, "env steps go on from the checkpoint"
        assert rows[0]["replay/inserted_steps"] >= checkpoint["limiter"]["inserted"], "the limiter resumed its counters"
        assert len(job.processes()) >= 4

        os.killpg(job.proc.pid, signal.SIGINT)
        time.sleep(1.0)  # the orderly shutdown has begun (it flushes the runner for seconds)
        os.killpg(job.proc.pid, signal.SIGINT)
        code, seconds = job.wait_exit(SHUTDOWN_TIMEOUT + MARGIN)
        stderr = job.stderr()
        assert code == 130, f"exit {code}:\n{stderr[-3000:]}"
        assert seconds < 5, f"the second signal exits at once, not after {seconds:.1f} s"
        for text in NOT_IN_STDERR:
            assert text not in stderr, f"{text!r} in stderr:\n{stderr[-3000:]}"
        lines = resume_lines(stderr)
        assert len(lines) == 1 and lines[0].startswith("harmonyray: SIGINT again during the shutdown: exited at once at ") \
            and lines[0].endswith(f"resume with: harmonyray resume {logdir}"), lines
        job.assert_nothing_left()
    finally:
        job.cleanup()


def test_a_shutdown_that_overruns_its_timeout_is_ended(tmp_path):
    """The watchdog: a main thread stuck after the signal (a hung actor call, say) does not hold the
    process past run.shutdown_timeout; what it started dies with it."""
    script = (
        "import os, signal, subprocess, sys, time\n"
        "from system.interrupt import StopSignals\n"
        "stop = StopSignals(timeout=1.0, logdir='runs/x')\n"
        "stop.install()\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "while True:\n"
        "    time.sleep(0.1)\n"
    )
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 143, proc.stderr
    assert time.monotonic() - start < 10
    assert resume_lines(proc.stderr) == ["harmonyray: interrupted by SIGTERM; the shutdown ran past run.shutdown_timeout=1s: "
                                         "exited at 0 env steps; no checkpoint written; resume with: harmonyray resume runs/x"]
    child = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 10  # SIGKILLed, but a loaded machine takes a moment to end it
    while psutil.pid_exists(child) and time.monotonic() < deadline:
        try:
            if psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    else:
        assert not psutil.pid_exists(child), "the process the run started was killed with it"


def test_shutdown_timeout_must_be_positive():
    with pytest.raises(ConfigError, match=r"run.shutdown_timeout must be > 0 seconds \(got 0"):
        load_config("cartpole", ["run.shutdown_timeout=0"])
    assert load_config("cartpole").run.shutdown_timeout == 60.0
