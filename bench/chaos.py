"""Chaos: a training run while runner and replay-shard processes are killed and a shard hangs.

Usage: python -m bench.chaos [--minutes 10] [--seed 0] [--preset cartpole] [key=value ...]

Runs the preset (CartPole by default) for `--minutes` of wall time on the embedded cluster while a
monkey thread SIGKILLs a random runner or shard process every 20-40 s and, once, SIGSTOPs a shard
for 60 s before SIGCONT. The run then ends the way a preempted job does (SIGTERM: orderly shutdown
and checkpoint). Before every kill the monkey notes the chunk ids the runners have had acknowledged;
at the end every one of them must be stored.

Two times per fault: `collect_s`, until collection (env steps inserted by all runners, as the limiter
counts them) moved a chunk further; `restore_s`, until the faulted process served again (a killed
runner's next incarnation had a chunk acknowledged; a killed shard's restarted process, or the
stopped one after SIGCONT, stored a chunk). The final JSON line: kills, stalls, acked_chunks,
stored_chunks, lost_acked (must be 0), ratio_error (replay ratio vs configured, relative),
finished, final_return (last evaluation), worst_collect_s (goal: <= 10), worst_restore_s,
throughput_ratio (env steps/s while faults are injected against the same run before the first).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ray

from system.cluster import check_resources, start_ray
from system.config import load_config
from system.driver import Run, make_logdir
from system.interrupt import Interrupted
from system.metrics import read_metrics

CALL_S = 10.0  # timeout of the monkey's own calls
RECOVERY_LIMIT_S = 60.0
STOP_S = 60.0


class Monkey:
    """Injects the faults into a running `Run` and keeps the books on them."""

    def __init__(self, run: Run, minutes: float, seed: int):
        self.run, self.rng = run, random.Random(seed)
        self.deadline = time.monotonic() + 60 * minutes
        self.acked: set[str] = set()
        self.kills = self.stalls = 0
        self.recoveries: list[tuple[str, float, float]] = []  # fault, collect_s, restore_s
        self.rate_before = self.rate_during = 0.0
        self.error: str | None = None

    def loop(self) -> None:
        try:
            self._inject()
        except Exception as error:  # reported in the JSON line; the run still ends orderly
            self.error = f"{type(error).__name__}: {error}"
        os.kill(os.getpid(), signal.SIGTERM)  # end the run as a preempted job ends

    def _inject(self) -> None:
        while self.run.limiter is None or self.run.replay is None or not self.run.runners:  # being set up
            time.sleep(0.5)
        while self._inserted() <= self.run.config.train.prefill and time.monotonic() < self.deadline:
            time.sleep(1.0)  # prefill: the learner starts, weights reach the runners
        first = time.monotonic()
        steps_first = self._inserted()
        time.sleep(20.0)
        self.rate_before = (self._inserted() - steps_first) / (time.monotonic() - first)
        faults_from, steps_from = time.monotonic(), self._inserted()
        stop_at = faults_from + self.rng.uniform(30, 60)  # the hang comes after a kill or two
        while time.monotonic() + 40 < self.deadline:
            if stop_at is not None and time.monotonic() >= stop_at:
                stop_at = None
                self._stop_a_shard()
            else:
                self._kill_one()
            time.sleep(self.rng.uniform(20, 40))
        self.rate_during = (self._inserted() - steps_from) / max(time.monotonic() - faults_from, 1e-9)
        time.sleep(max(0.0, self.deadline - time.monotonic()))
        self.note_acked()

    # ------------------------------------------------------------------ faults
    def _kill_one(self) -> None:
        runners, shards = self.run.runners, self.run.replay.shards
        index = self.rng.randrange(len(runners) + len(shards))
        self.note_acked()
        if index < len(runners):
            pid = ray.get(runners[index].pid.remote(), timeout=CALL_S)
            before = set(self.acked)
            inserted = self._inserted()
            os.kill(pid, signal.SIGKILL)
            self.kills += 1
            self._recovered(f"killed runner {index}", inserted, lambda: self._runner_acked_new(index, before))
        else:
            shard = shards[index - len(runners)]
            stats = ray.get(shard.stats.remote(), timeout=CALL_S)
            inserted = self._inserted()
            os.kill(stats["pid"], signal.SIGKILL)
            self.kills += 1
            self._recovered(f"killed shard {index - len(runners)}", inserted, lambda: self._shard_stored_again(shard, stats["pid"], 0))

    def _stop_a_shard(self) -> None:
        index = self.rng.randrange(len(self.run.replay.shards))
        shard = self.run.replay.shards[index]
        stats = ray.get(shard.stats.remote(), timeout=CALL_S)
        inserted = self._inserted()
        os.kill(stats["pid"], signal.SIGSTOP)
        self.stalls += 1
        started = time.monotonic()
        try:
            collect_s = self._wait_for(lambda: self._inserted() > inserted + self.run.config.runners.chunk_length)
            time.sleep(max(0.0, started + STOP_S - time.monotonic()))
        finally:
            os.kill(stats["pid"], signal.SIGCONT)
        restore_s = self._wait_for(lambda: self._shard_stored_again(shard, None, stats["inserted_steps"]))
        self._record(f"stopped shard {index} for {STOP_S:g} s", collect_s, restore_s)

    def _recovered(self, what: str, inserted: int, restored: Any) -> None:
        """Wait for collection to move and the faulted process to serve again; record both times."""
        started = time.monotonic()
        collect_s = self._wait_for(lambda: self._inserted() > inserted + self.run.config.runners.chunk_length)
        restore_s = self._wait_for(restored, started)
        self._record(what, collect_s, restore_s)

    def _record(self, what: str, collect_s: float, restore_s: float) -> None:
        self.recoveries.append((what, collect_s, restore_s))
        print(json.dumps({"fault": what, "collect_s": round(collect_s, 2), "restore_s": round(restore_s, 2)}), file=sys.stderr, flush=True)

    @staticmethod
    def _wait_for(done: Any, started: float | None = None) -> float:
        """Seconds from `started` (default: now) until done() holds, polled; RECOVERY_LIMIT_S at most."""
        started = time.monotonic() if started is None else started
        while time.monotonic() - started < RECOVERY_LIMIT_S:
            try:
                if done():
                    break
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                pass  # restarting: ask again
            time.sleep(0.25)
        return time.monotonic() - started

    # ------------------------------------------------------------- book-keeping
    def _runner_acked_new(self, index: int, before: set[str]) -> bool:
        ids = set(ray.get(self.run.runners[index].inserted_ids.remote(), timeout=2.0))
        return bool(ids - before)

    @staticmethod
    def _shard_stored_again(shard: Any, old_pid: int | None, inserted_steps: int) -> bool:
        """A new process (unless old_pid is None) that stored more than inserted_steps."""
        stats = ray.get(shard.stats.remote(), timeout=2.0)
        return stats["pid"] != old_pid and stats["inserted_steps"] > inserted_steps

    def _inserted(self) -> int:
        return ray.get(self.run.limiter.inserted.remote(), timeout=CALL_S)

    def note_acked(self) -> None:
        for runner in self.run.runners:
            try:
                self.acked.update(ray.get(runner.inserted_ids.remote(), timeout=CALL_S))
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                continue  # restarting: what it had acknowledged was noted before its kill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="cartpole")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    config = load_config(args.preset, [f"run.steps={10**9}", "run.eval_every=2500", "run.shutdown_timeout=300",
                                       "wandb.mode=disabled", f"run.seed={args.seed}", *args.overrides])
    start_ray(config.ray)
    check_resources(config)
    logdir = make_logdir(config, str(Path(tempfile.mkdtemp(prefix="chaos-")) / "run"))
    run = Run(config, logdir, resume=False, progress=False)
    run.stop.install()
    monkey = Monkey(run, args.minutes, args.seed)
    threading.Thread(target=monkey.loop, name="chaos-monkey", daemon=True).start()
    started = time.monotonic()
    try:
        run.execute()
        finished = False  # run.steps is out of reach: only the SIGTERM ends this run
    except Interrupted as stop:
        finished = stop.signum == signal.SIGTERM and run.stop.saved_since_signal()
    monkey.note_acked()
    stored = set(run.replay.ids())
    ratio = ray.get(run.limiter.ratio.remote(), timeout=CALL_S)
    evaluations = [row["eval/return"] for row in read_metrics(logdir) if "eval/return" in row]
    run.release()
    result: dict[str, Any] = {
        "kills": monkey.kills,
        "stalls": monkey.stalls,
        "acked_chunks": len(monkey.acked),
        "stored_chunks": len(stored),
        "lost_acked": len(monkey.acked - stored),
        "ratio_error": round(abs(ratio - config.train.train_ratio) / config.train.train_ratio, 4),
        "finished": finished and monkey.error is None,
        "final_return": evaluations[-1] if evaluations else None,
        "worst_collect_s": round(max((c for _, c, _ in monkey.recoveries), default=0.0), 2),
        "worst_restore_s": round(max((r for _, _, r in monkey.recoveries), default=0.0), 2),
        "faults": [[what, round(c, 2), round(r, 2)] for what, c, r in monkey.recoveries],
        "throughput_ratio": round(monkey.rate_during / monkey.rate_before, 3) if monkey.rate_before else None,
        "minutes": round((time.monotonic() - started) / 60, 2),
        "logdir": str(logdir),
    }
    if monkey.error:
        result["monkey_error"] = monkey.error
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
