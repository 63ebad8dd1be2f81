"""HarmonyRay versus RLlib's DreamerV3 (torch) on the same machine, one after the other.

Both sides get the same environment, model size, batch (B x T), train ratio, learning rates,
prefill (B x T random steps) and torch threads, and both run in one process with a local
learner: RLlib with `num_env_runners=0, num_learners=0`, HarmonyRay with its single-process loop
(system/local_loop.py, the same train step the Learner actor runs). Presets:

    cartpole   CartPole-v1 vector obs, XS (deter/hidden 256, CNN-less), ratio 1024, B=16, T=64
    pong       Atari Pong 64x64 RGB, action repeat 4, S (deter/hidden 512), ratio 1024, B=16, T=64

At ratio 1024 and B x T = 1024 both do one update per env step after the prefill, and an update
takes seconds on a CPU (RLlib XS ~1.6 s; S ~13 s), so a whole learning run is out of reach here:
wall time is measured per env step over a short window (`--window` steps after `--warmup`
learning steps; cartpole 200 / 20, pong 10 / 3 by default) and scaled to 1,000 env steps. Returns
are recorded by this script from the finished episodes (RLlib's `episode_return_mean` is NaN in
iterations where no episode ended); `steps_to_threshold` is the env step at which the mean of the
last 10 training-episode returns first reached `--threshold`, or null within `--budget-steps`.

RLlib is installed by this script into its own venv (default ~/.cache/harmonyray/rllib-venv):
torch first (the same version as ours: the CPU wheel here), then `ray[rllib]` at our Ray version,
ale-py + opencv for Pong, and pillow (imported by its DreamerV3). It is never a dependency of the project (it pins gymnasium 1.2.2).

Usage: python -m bench.vs_rllib [--env cartpole|pong ...] [--window N] [--warmup N] [--plot PATH]
The last line is JSON: per env, wall and CPU seconds per 1k env steps for both, ratio and
cpu_ratio (HarmonyRay / RLlib; goal <= 0.5), steps_to_threshold for both. The CPU seconds are the
process's own (all its threads; RLlib's env runner and learner live in its driver process here):
on a machine shared with other jobs they move much less than the wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "cartpole": {"size": "XS", "threshold": 450.0, "window": 200, "warmup": 20},
    "pong": {"size": "S", "threshold": 0.0, "window": 10, "warmup": 3},
}
DEFAULT_VENV = Path.home() / ".cache" / "harmonyray" / "rllib-venv"
ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ shared by both sides
class Clock:
    """Time of every env step and the return of every finished episode, as this script sees them."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []  # this process's CPU seconds (all threads): robust to a shared machine
        self.episodes: list[tuple[int, float]] = []  # (env step at the end, return)
        self._ret = 0.0

    def step(self, reward: float, done: bool, at: tuple[float, float] | None = None) -> None:
        wall, cpu = at or (time.perf_counter(), time.process_time())
        self.times.append(wall)
        self.cpu.append(cpu)
        self._ret += reward
        if done:
            self.episodes.append((len(self.times), self._ret))
            self._ret = 0.0

    def summary(self, prefill: int, warmup: int, window: int, threshold: float | None, updates: int) -> dict[str, Any]:
        """Seconds per 1k env steps over steps (prefill + warmup, prefill + warmup + window]."""
        first, last = prefill + warmup, prefill + warmup + window
        measured = len(self.times) >= last
        rate = (self.times[last - 1] - self.times[first - 1]) / window * 1000 if measured else None
        cpu = (self.cpu[last - 1] - self.cpu[first - 1]) / window * 1000 if measured else None
        hit = None
        for i in range(len(self.episodes)):
            recent = [r for _, r in self.episodes[max(0, i - 9): i + 1]]
            if threshold is not None and i >= 9 and sum(recent) / len(recent) >= threshold:
                hit = self.episodes[i][0]
                break
        return {
            "env_steps": len(self.times), "updates": updates, "prefill": prefill, "warmup": warmup, "window": window,
            "seconds_per_1k_steps": round(rate, 1) if rate is not None else None,
            "seconds_per_step": round(rate / 1000, 3) if rate is not None else None,
            "cpu_seconds_per_1k_steps": round(cpu, 1) if cpu is not None else None,
            "steps_to_threshold": hit, "episodes": len(self.episodes),
            "returns": [(s, round(r, 2)) for s, r in self.episodes],
            "wall_seconds": round(self.times[-1] - self.times[0], 1) if self.times else 0.0,
        }


def read_clock(path: Path) -> Clock:
    clock = Clock()
    if path.exists():
        for line in path.read_text().splitlines():
            wall, cpu, reward, done = line.split()
            clock.step(float(reward), done == "1", (float(wall), float(cpu)))
    return clock


# ------------------------------------------------------------------ RLlib side (its own venv)
def rllib_worker(args: argparse.Namespace) -> None:
    """Runs inside the RLlib venv: DreamerV3Config with our settings, env steps timed by a wrapper."""
    import gymnasium as gym
    import ray
    import torch
    from ray.rllib.algorithms.dreamerv3 import DreamerV3Config
    from ray.tune.registry import register_env

    torch.set_num_threads(args.threads)
    # RLlib ships the env creator to its env runner pickled (a copy of anything it closes over),
    # so the wrapper appends "wall cpu reward done" per step to a file that this side reads back.
    log = Path(tempfile.mkdtemp()) / "steps.txt"

    class Timed(gym.Wrapper):
        def __init__(self, env: gym.Env, path: str) -> None:
            super().__init__(env)
            self._file = open(path, "a", buffering=1)

        def step(self, action):
            obs, reward, terminated, truncated, info = self.env.step(action)
            self._file.write(f"{time.perf_counter()} {time.process_time()} {float(reward)} {int(terminated or truncated)}\n")
            return obs, reward, terminated, truncated, info

    def make(config: dict) -> gym.Env:
        if config["env"] == "cartpole":
            return Timed(gym.make("CartPole-v1"), config["log"])
        import ale_py
        from ray.rllib.env.wrappers.atari_wrappers import wrap_atari_for_new_api_stack

        gym.register_envs(ale_py)
        env = gym.make("ALE/Pong-v5", frameskip=1, repeat_action_probability=0.0, full_action_space=False)
        return Timed(wrap_atari_for_new_api_stack(env, dim=64, frameskip=4, framestack=None, grayscale=False), config["log"])

    register_env("bench-env", make)
    # address="local": a new cluster even when another one on this machine is discoverable
    ray.init(address="local", num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    config = (
        DreamerV3Config()
        .environment("bench-env", env_config={"env": args.env, "log": str(log)})
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1)
        .learners(num_learners=0)
        .training(model_size=args.size, training_ratio=args.ratio, batch_size_B=args.batch, batch_length_T=args.seq_len,
                  world_model_lr=1e-4, actor_lr=3e-5, critic_lr=3e-5, horizon_H=15, gamma=0.997)
    )
    algo = config.build_algo()
    prefill, iterations, clock = args.batch * args.seq_len, 0, Clock()
    while len(clock.times) < args.budget:
        algo.train()
        iterations += 1
        clock = read_clock(log)
        if iterations % 10 == 0:
            print(f"rllib: {len(clock.times)} env steps, {clock.times[-1] - clock.times[0]:.0f} s", file=sys.stderr, flush=True)
    updates = max(0, len(clock.times) - prefill) * args.ratio // prefill  # one B x T batch per `prefill / ratio` steps
    algo.stop()
    ray.shutdown()
    shutil.rmtree(log.parent, ignore_errors=True)
    print(json.dumps(clock.summary(prefill, args.warmup, args.window, args.threshold, int(updates))))


def ensure_rllib_venv(venv: Path) -> Path:
    """Create the RLlib venv once (torch first, so pip keeps the CPU wheel), marked by a stamp."""
    torch_version = metadata.version("torch").split("+")[0]
    ray_version = metadata.version("ray")
    want = f"torch=={torch_version} ray[rllib]=={ray_version} ale-py opencv-python-headless pillow"
    python, stamp = venv / "bin" / "python", venv / ".harmonyray-installed"
    if python.exists() and stamp.exists() and stamp.read_text() == want:
        return python
    print(f"installing RLlib into {venv} ({want}); this downloads packages once", file=sys.stderr, flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, f"torch=={torch_version}"], check=True)
    subprocess.run([*pip, f"ray[rllib]=={ray_version}", "ale-py", "opencv-python-headless", "pillow"], check=True)  # PIL: DreamerV3's summaries import it
    stamp.write_text(want)
    return python


def run_rllib(python: Path, env: str, args: argparse.Namespace, spec: dict[str, Any]) -> dict[str, Any]:
    command = [str(python), "-m", "bench.vs_rllib", "--worker", "--env", env, "--size", spec["size"],
               "--ratio", str(args.ratio), "--batch", str(args.batch), "--seq-len", str(args.seq_len),
               "--threads", str(args.threads), "--budget", str(spec["budget"]), "--warmup", str(spec["warmup"]),
               "--window", str(spec["window"]), "--threshold", str(spec["threshold"])]
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0"}
    done = subprocess.run(command, cwd=ROOT, env=environ, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the RLlib run on {env} failed (exit {done.returncode}); its errors are above")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ HarmonyRay side
def run_harmonyray(env: str, args: argparse.Namespace, spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from system.config import load_config
    from system.local_loop import LocalResult, run_local

    torch.set_num_threads(args.threads)
    prefill = args.batch * args.seq_len
    preset, name = ("cartpole", "gym:CartPole-v1") if env == "cartpole" else ("atari100k", "atari:Pong")
    size = {"XS": 256, "S": 512}[spec["size"]]
    config = load_config(preset, [
        f"env.name={name}", f"agent.model.size={spec['size']}", f"agent.model.deter={size}", f"agent.model.hidden={size}",
        "agent.model.stoch=32", "agent.model.classes=32", "agent.world_model.lr=1e-4",
        "agent.behavior.actor_lr=3e-5", "agent.behavior.critic_lr=3e-5", "agent.behavior.slow_critic_fraction=0.02", "agent.device=cpu",
        f"train.train_ratio={args.ratio}", f"train.batch_size={args.batch}", f"train.seq_len={args.seq_len}",
        f"train.prefill={prefill}", f"run.steps={spec['budget']}", "run.eval_every=0",
    ])
    clock = Clock()
    seen = [0, 0]  # env steps and episodes already on the clock

    def stop(result: LocalResult) -> bool:
        now = (time.perf_counter(), time.process_time())
        ends = {step: e.ret for step, e in result.episodes[seen[1]:]}
        for step in range(seen[0] + 1, result.env_steps + 1):  # one env: one step per loop turn
            clock.step(0.0, False, now)
            if step in ends:
                clock.episodes.append((step, ends[step]))
        seen[:] = [result.env_steps, len(result.episodes)]
        if result.env_steps % 20 == 0 and result.env_steps > prefill:
            print(f"harmonyray: {result.env_steps} env steps, {result.seconds:.0f} s", file=sys.stderr, flush=True)
        return False

    result = run_local(config, stop=stop)
    return clock.summary(prefill, spec["warmup"], spec["window"], spec["threshold"], result.updates)


# ------------------------------------------------------------------ driver
def plot(path: str, results: dict[str, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(results)
    fig, axes = plt.subplots(1, 1 + len(envs), figsize=(5 * (1 + len(envs)), 4))
    groups = [(e, key, f"{e}\n{label}") for e in envs for key, label in (("seconds_per_1k_steps", "wall"), ("cpu_seconds_per_1k_steps", "CPU"))]
    for i, system in enumerate(("harmonyray", "rllib")):
        values = [results[e][system][key] or 0 for e, key, _ in groups]
        axes[0].bar([j + 0.4 * i - 0.2 for j in range(len(groups))], values, width=0.4, label=system)
    axes[0].set_xticks(range(len(groups)), [label for _, _, label in groups])
    axes[0].set(title="seconds per 1,000 env steps (lower is better)", yscale="log")
    axes[0].legend()
    for ax, env in zip(axes[1:], envs):
        for system in ("harmonyray", "rllib"):
            returns = results[env][system]["returns"]
            ax.plot([s for s, _ in returns], [r for _, r in returns], ".-", label=system)
        ax.set(title=f"{env}: training-episode returns", xlabel="env steps", ylabel="return")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", nargs="+", default=["cartpole", "pong"], choices=list(PRESETS))
    parser.add_argument("--ratio", type=int, default=1024, help="train ratio (replayed steps per env step)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for each side (1: robust on a shared machine, where spinning OpenMP threads waste CPU)")
    parser.add_argument("--window", type=int, help="measured env steps (default per env: cartpole 200, pong 10)")
    parser.add_argument("--warmup", type=int, help="learning env steps skipped before the window")
    parser.add_argument("--threshold", type=float, help="return threshold (default per env: cartpole 450, pong 0)")
    parser.add_argument("--budget-steps", type=int, help="env steps per run (default: prefill + warmup + window)")
    parser.add_argument("--skip", choices=["rllib", "harmonyray"], help="run one side only")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="where RLlib is installed")
    parser.add_argument("--plot", help="write a PNG with the timings and the returns")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.env = args.env[0]
        rllib_worker(args)
        return
    prefill = args.batch * args.seq_len
    for name, value in (("--window", args.window), ("--warmup", args.warmup), ("--budget-steps", args.budget_steps), ("--ratio", args.ratio)):
        if value is not None and value < (1 if name in ("--window", "--ratio") else 0):
            parser.error(f"{name} must be positive")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: install the `dev` extra (pip install -e '.[dev]')")
    python = ensure_rllib_venv(args.venv) if args.skip != "rllib" else None
    results: dict[str, dict[str, Any]] = {}
    for env in args.env:
        spec = dict(PRESETS[env])
        spec.update({k: v for k, v in (("window", args.window), ("warmup", args.warmup), ("threshold", args.threshold)) if v is not None})
        spec["budget"] = max(args.budget_steps or 0, prefill + spec["warmup"] + spec["window"])
        results[env] = {"model_size": spec["size"], "budget_steps": spec["budget"], "threshold": spec["threshold"]}
        if args.skip != "harmonyray":
            results[env]["harmonyray"] = run_harmonyray(env, args, spec)
            print(f"{env} harmonyray: {results[env]['harmonyray']['seconds_per_1k_steps']} s per 1k env steps", file=sys.stderr, flush=True)
        if python is not None:
            results[env]["rllib"] = run_rllib(python, env, args, spec)
            print(f"{env} rllib: {results[env]['rllib']['seconds_per_1k_steps']} s per 1k env steps", file=sys.stderr, flush=True)
        if "rllib" in results[env] and "harmonyray" in results[env]:
            for key, name in (("seconds_per_1k_steps", "ratio"), ("cpu_seconds_per_1k_steps", "cpu_ratio")):
                ours, theirs = results[env]["harmonyray"][key], results[env]["rllib"][key]
                results[env][name] = round(ours / theirs, 3) if ours and theirs else None
    if args.plot and all("rllib" in r and "harmonyray" in r for r in results.values()):
        plot(args.plot, results)
    for env in results.values():  # the per-episode lists go to the plot, not the JSON line
        for system in ("harmonyray", "rllib"):
            env.get(system, {}).pop("returns", None)
    print(json.dumps({"train_ratio": args.ratio, "batch": [args.batch, args.seq_len], "threads": args.threads, **results}))


if __name__ == "__main__":
    main()
