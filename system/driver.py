"""The run driver: the whole system's wiring in one place.

    runners (actors/) --chunks--> replay shards (replay/) --batches--> learner (learner/)
        ^                                                                  |
        +---------------- weight board <--- ray.put(weights) -------------+

The driver starts Ray, places the actors, then watches: it logs metrics, writes checkpoints,
restarts what crashed, and stops everything once `run.steps` env steps are collected.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import ray
import yaml
from tqdm import tqdm

from actors.envs import UnknownEnvError, make_env
from actors.evaluator import Evaluator
from actors.runner import EnvRunner
from actors.specs import specs_from_spaces
from actors.streams import summarize_episodes
from learner.agent import Agent
from learner.broadcast import make_weight_board
from learner.learner_actor import Learner
from learner.spaces import ActionSpec, ObservationShapeError, ObservationSpec
from replay import ReplayService, make_limiter_actor, min_tolerance
from system.checkpoint import CheckpointError, latest_checkpoint, save_checkpoint
from system.cluster import ClusterError, check_resources, learner_options, on_driver_node, runner_device, runner_options, shard_placement, start_ray
from system.config import Config, ConfigError, apply_overrides, config_from_dict, to_yaml
from system.interrupt import StopSignals
from system.metrics import MetricsLogger, best_evaluation
from system.video import save_videos
from system.supervisor import RunnerSupervisor

CONFIG_FILE = "config.yaml"
READY_GET_S = 60.0  # fetching a result ray.wait found ready: only its transfer is left
PLACEMENT_TIMEOUT_S = 600.0  # for an actor to start: an autoscaler may have to add its node first


@dataclass
class RunSummary:
    logdir: str
    env_steps: int
    updates: int
    replay_ratio: float
    eval_return: float | None
    seconds: float
    best_eval_return: float | None = None  # the best evaluation of the run, and when it came
    best_eval_step: int | None = None


def make_logdir(config: Config, logdir: str | None) -> Path:
    template = logdir or config.run.logdir
    path = Path(template.format(preset=config.preset, time=datetime.now().strftime("%Y%m%d-%H%M%S")))
    if (path / CONFIG_FILE).exists():
        raise ConfigError(f"logdir {path} already holds a run: use `harmonyray resume {path}` or another --logdir")
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(to_yaml(config))
    return path


def load_run_config(logdir: Path) -> Config:
    path = Path(logdir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{logdir} is not a HarmonyRay run directory (no {CONFIG_FILE})")
    return config_from_dict(yaml.safe_load(path.read_text()))


def probe_env(config: Config) -> tuple[ObservationSpec, ActionSpec]:
    """Build the environment once here, so a bad name or option fails before any actor starts."""
    try:
        env = make_env(config.env.name, seed=config.run.seed, **config.env.options)
    except (TypeError, ValueError) as error:
        if isinstance(error, (UnknownEnvError, ObservationShapeError)):
            raise
        raise ConfigError(f"env {config.env.name}: {str(error).splitlines()[0]}") from None
    try:
        return specs_from_spaces(env.observation_space, env.action_space)
    finally:
        env.close()


def start_runner(config: Config, index: int, replay: ReplayService, board: ray.actor.ActorHandle, **options: Any) -> ray.actor.ActorHandle:
    """EnvRunner `index` as a run starts it; `options` override its Ray actor options."""
    return ray.remote(EnvRunner).options(**{**runner_options(config), **options}).remote(
        index, config.env.name, dict(config.env.options), config.runners.envs, config.runners.chunk_length,
        config.run.seed, config.agent, replay, board, step_timeout=config.runners.step_timeout,
        insert_batch=config.runners.insert_batch, insert_linger=config.runners.insert_linger,
        call_timeout=config.replay.call_timeout, collection=config.runners.collection,
        gather_wait=config.runners.gather_wait, device=runner_device(config),
    )


class Run:
    """One training run (new or resumed) on a started Ray cluster."""

    def __init__(self, config: Config, logdir: Path, resume: bool, progress: bool = True, stop: StopSignals | None = None):
        self.config, self.logdir, self.progress = config, logdir, progress
        # set by SIGTERM/SIGINT where the CLI installed it: the watch loop stops, the shutdown is bounded
        self.stop = stop or StopSignals(config.run.shutdown_timeout, logdir)
        self.checkpoint = latest_checkpoint(logdir) if resume else None
        self.obs_spec, self.act_spec = probe_env(config)
        if self.checkpoint and self.checkpoint.get("model") != self._model_signature():
            raise CheckpointError(
                f"the checkpoint in {logdir} was written for another model or environment "
                f"({self.checkpoint.get('model')}); resume with the run's own config or start a new run"
            )
        counters = self.checkpoint["counters"] if self.checkpoint else {}
        self.env_steps_base = int(counters.get("env_steps", 0))
        self.stop.env_steps = self.env_steps_base
        if self.checkpoint:
            self.stop.saved(self.env_steps_base)
        self.episodes_base = int(counters.get("episodes", 0))
        self.runner_steps: dict[int, int] = {}  # per runner, steps of earlier incarnations
        self.last_seen: dict[int, int] = {}  # per runner, steps its current incarnation reported
        self.incarnation: dict[int, str] = {}  # per runner, the id of its current process
        self._shards_down: set[int] = set()  # replay shards that did not answer the last stats call
        self.logger: MetricsLogger | None = None
        self._evaluator: ray.actor.ActorHandle | None = None
        self._eval_ref: ray.ObjectRef | None = None
        self._eval_step = 0
        self._video_refs: dict[str, ray.ObjectRef] = {}  # videos of the evaluation in flight
        # the run's actors, made by `execute`
        self.runners: list[ray.actor.ActorHandle] = []
        self.replay: ReplayService | None = None
        self.learner = self.limiter = self.board = None

    def _model_signature(self) -> dict[str, Any]:
        """What a checkpoint's tensors depend on: network sizes and observation/action shapes."""
        return {
            "dims": self.config.agent.model.resolved(),
            "reward_bins": self.config.agent.model.reward_bins,
            "observations": {k: list(v) for k, v in self.obs_spec.shapes.items()},
            "actions": [self.act_spec.kind, list(self.act_spec.sizes)],
        }

    def execute(self) -> RunSummary:
        config, train = self.config, self.config.train
        if self.stop.requested:  # a signal came while the run was being set up: start nothing
            raise self.stop.interrupted()
        start = time.perf_counter()
        batch_steps = train.batch_size * train.seq_len
        tolerance = max(train.tolerance * batch_steps, min_tolerance(train.train_ratio, config.runners.chunk_length, batch_steps))
        self.limiter = make_limiter_actor(train.train_ratio, train.prefill, tolerance, config.runners.chunk_length, batch_steps, name=None, placement=on_driver_node())
        if self.checkpoint:
            ray.get(self.limiter.load_state.remote(self.checkpoint["limiter"]), timeout=PLACEMENT_TIMEOUT_S)
        self.replay = ReplayService.create(
            config.replay.shards, str(self.logdir / "replay"), config.replay.capacity,
            limiter=self.limiter, mode=config.replay.sampling, seed=config.run.seed,
            num_cpus=config.replay.num_cpus, placement=shard_placement(config), call_timeout_s=config.replay.call_timeout,
        )
        self.board = make_weight_board(**on_driver_node())
        self.learner = ray.remote(Learner).options(**learner_options(config)).remote(
            self.obs_spec, self.act_spec, config.agent, self.replay, self.board,
            train.batch_size, train.seq_len, train.publish_every, train.prefetch,
            config.learner.threads or int(max(1, config.learner.num_cpus)), config.run.max_nonfinite_updates,
            self.checkpoint["agent"] if self.checkpoint else None,
            priority=config.replay.sampling == "priority",
        )
        self.runners = [self._make_runner(i) for i in range(config.runners.count)]
        self._report_placement()
        self.logger = MetricsLogger(self.logdir, config.wandb, dataclasses.asdict(config), name=self.logdir.name)
        learner_ref = self.learner.run.remote()
        self.supervisor = RunnerSupervisor(self.runners, self._make_runner, config.runners.max_failures, config.runners.restart_delay)
        self.supervisor.start()
        runner_refs = self.supervisor.refs  # the supervisor keeps it current
        try:
            env_steps, updates, ratio = self._watch(learner_ref, runner_refs, start)
        finally:
            stopped = self._shutdown(runner_refs, learner_ref)
        env_steps, updates, ratio = stopped or (env_steps, updates, ratio)
        eval_return = self._evaluate(env_steps)  # none after a signal
        self.logger.close()
        if self.stop.requested:  # the orderly shutdown is over: the CLI says where to resume and exits
            raise self.stop.interrupted()
        best_return, best_step = best_evaluation(self.logdir) or (None, None)
        return RunSummary(str(self.logdir), env_steps, updates, ratio, eval_return, time.perf_counter() - start, best_return, best_step)

    def execute_and_release(self) -> RunSummary:
        """`execute`, then free the run's actors and their CPUs at once (a later run in the same
        process would otherwise wait for the garbage collector). Everything is on disk by then."""
        try:
            return self.execute()
        finally:
            self.release()

    def release(self) -> None:
        shards = self.replay.shards if self.replay is not None else []
        for actor in [*self.runners, self.learner, self._evaluator, *shards, self.limiter, self.board]:
            if actor is not None:
                ray.kill(actor, no_restart=True)

    # ------------------------------------------------------------------ setup
    def _make_runner(self, index: int) -> ray.actor.ActorHandle:
        return start_runner(self.config, index, self.replay, self.board)

    def _report_placement(self) -> None:
        try:
            learner_node = ray.get(self.learner.where.remote(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise ClusterError(f"the learner did not start within {PLACEMENT_TIMEOUT_S:g} s: the cluster has no node with "
                               "what learner.num_gpus, learner.num_cpus and learner.resources ask for") from None
        runner_nodes = [_node_or_error(r) for r in self.runners]  # one that cannot start is reported, not fatal
        device = ray.get(self.learner.device.remote(), timeout=PLACEMENT_TIMEOUT_S)
        shard_nodes = [s.get("node_id", "?") for s in self.replay.stats()["shards"]]
        lines = [f"learner on node {learner_node[:8]} ({device})"]
        lines += [f"runner {i} on node {node[:8]}" for i, node in enumerate(runner_nodes)]
        lines += [f"replay shard {i} on node {node[:8]}" for i, node in enumerate(shard_nodes)]
        print("placement:\n  " + "\n  ".join(lines), file=sys.stderr, flush=True)
        self.placement = {"learner": learner_node, "runners": runner_nodes, "shards": shard_nodes, "learner_device": device}

    # ------------------------------------------------------------------ watch
    def _watch(self, learner_ref: ray.ObjectRef, runner_refs: dict[int, ray.ObjectRef], start: float) -> tuple[int, int, float]:
        config = self.config
        bar = tqdm(total=config.run.steps, initial=self.env_steps_base, unit="step", disable=not self.progress, dynamic_ncols=True, file=sys.stderr)
        next_log = next_ckpt = time.perf_counter()
        next_ckpt += config.run.checkpoint_every
        next_eval = self.env_steps_base + config.run.eval_every if config.run.eval_every else None
        env_steps, updates, ratio = self.env_steps_base, 0, 0.0
        shown = {"ret": "-", "eval": "-"}  # the latest of each, kept between log steps without episodes
        while not self.stop.requested:  # SIGTERM/SIGINT: stop collecting within a tick
            time.sleep(min(1.0, config.run.log_every))
            self._check_actors(learner_ref, runner_refs)
            now = time.perf_counter()
            if now < next_log:
                continue
            next_log = now + config.run.log_every
            row, env_steps, updates, ratio = self._collect_metrics()
            self.logger.log(env_steps, row)
            self.stop.env_steps = env_steps
            bar.update(env_steps - bar.n)
            if "episode/return" in row:
                shown["ret"] = f"{row['episode/return']:.1f}"
            evaluation = self._log_finished_evaluation()
            if evaluation is not None:
                shown["eval"] = f"{evaluation['return']:.1f}"
            bar.set_postfix(**shown, upd=updates, ratio=f"{ratio:.0f}")
            if next_eval is not None and env_steps >= next_eval and self._eval_ref is None:
                next_eval = env_steps + config.run.eval_every
                self._start_evaluation(env_steps)
            if now >= next_ckpt:
                self._save_checkpoint(env_steps)
                next_ckpt = now + config.run.checkpoint_every
            if env_steps >= config.run.steps:
                break
        bar.close()
        return env_steps, updates, ratio

    def _collect_metrics(self) -> tuple[dict[str, Any], int, int, float]:
        runner_stats = self._runner_stats()
        try:
            learner_stats = ray.get(self.learner.stats.remote(), timeout=60)
        except ray.exceptions.GetTimeoutError:
            learner_stats = {}  # busy beyond a minute: report the runners and replay anyway
        replay_stats = self.replay.stats()
        self._report_shard_outages(replay_stats["shards"])
        for s in runner_stats:
            index = s["runner"]
            if self.incarnation.get(index, s["incarnation"]) != s["incarnation"]:  # restarted: counts from zero
                self.runner_steps[index] = self.runner_steps.get(index, 0) + self.last_seen.get(index, 0)
            self.incarnation[index] = s["incarnation"]
            self.last_seen[index] = s["env_steps"]
        env_steps = self.env_steps_base + sum(self.runner_steps.get(i, 0) + n for i, n in self.last_seen.items())
        episodes = [e for s in runner_stats for e in s["episodes"]]
        self.episodes_base += len(episodes)
        ratio = float(replay_stats.get("replay_ratio", 0.0))
        versions = [s["weight_version"] for s in runner_stats] or [0]
        row = {
            **learner_stats,
            **summarize_episodes(episodes),
            "runner/env_steps_per_s": sum(s["env_steps_per_s"] for s in runner_stats),
            "runner/env_restarts": sum(s["env_restarts"] for s in runner_stats),
            "runner/dropped_episodes": sum(s["dropped_episodes"] for s in runner_stats),
            "runner/env_timeouts": sum(s.get("env_timeouts", 0) for s in runner_stats),
            **{f"runner/{key}": sum(s[key] for s in runner_stats) for key in ("insert_retries", "insert_failures", "rerouted_chunks")},
            **self.supervisor.metrics(),
            "runner/rss_mb_max": max((s["rss_mb"] for s in runner_stats), default=0.0),
            "runner/rss_mb_total": sum(s["rss_mb"] for s in runner_stats),
            "runner/min_weight_version": min(versions),
            "runner/max_weight_version": max(versions),
            "replay/size": replay_stats.get("size", 0),
            "replay/ratio": ratio,
            "replay/shards_up": replay_stats.get("shards_up", 0),
            "replay/inserted_steps": replay_stats.get("limiter", {}).get("inserted", 0),
            "replay/sampled_steps": replay_stats.get("limiter", {}).get("sampled", 0),
            "episodes": self.episodes_base,
        }
        return row, env_steps, int(learner_stats.get("learner/updates", 0)), ratio

    def _report_shard_outages(self, shards: list[dict[str, Any]]) -> None:
        """One line when a replay shard stops answering, one when it is back (not one per tick)."""
        down = {s["shard"] for s in shards if "error" in s}
        for shard in sorted(down - self._shards_down):
            print(f"replay shard {shard} does not answer within {self.config.replay.call_timeout:g} s (hung, or restarting): "
                  "its streams go to the other shards, batches come from them", file=sys.stderr, flush=True)
        for shard in sorted(self._shards_down - down):
            print(f"replay shard {shard} answers again", file=sys.stderr, flush=True)
        self._shards_down = down

    def _runner_stats(self) -> list[dict[str, Any]]:
        """Stats of the runners that answer; one that is being restarted is skipped this round."""
        refs = [r.stats.remote() for r in self.runners]
        stats = []
        for ref in refs:
            try:
                stats.append(ray.get(ref, timeout=30))
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                continue
        return stats

    def _check_actors(self, learner_ref: ray.ObjectRef, runner_refs: dict[int, ray.ObjectRef]) -> None:
        """A finished learner loop is an error before the end; runners that failed are started
        again with back-off (or given up on) by the supervisor, their earlier steps kept in the count."""
        done, _ = ray.wait([learner_ref], timeout=0)
        if done:
            ray.get(learner_ref, timeout=READY_GET_S)  # raises the learner's error
            raise RuntimeError("the learner stopped before the run ended")
        self.supervisor.check()

    # --------------------------------------------------------------- shutdown
    def _shutdown(self, runner_refs: dict[int, ray.ObjectRef], learner_ref: ray.ObjectRef) -> tuple[int, int, float] | None:
        """Stop runners (they flush their queued chunks), release the learner, final checkpoint.

        After SIGTERM/SIGINT each wait gets a share of the time left (`_wait_s`), so that the
        checkpoint is still written within `run.shutdown_timeout`; a step that fails or runs out
        of time then is passed over, and a checkpoint that cannot be written is reported, not raised."""
        learner_failed = bool(ray.wait([learner_ref], timeout=0)[0])
        if learner_failed:  # nobody samples any more: release runners waiting on the limiter
            self._close_limiter(0.1)
        runners = self.supervisor.alive()
        _answers([r.stop.remote() for r in runners], timeout=self._wait_s(60, 0.15))
        _answers(list(runner_refs.values()), timeout=self._wait_s(60, 0.2))  # their `run` calls return once stopped
        _answers([r.flush.remote() for r in runners], timeout=self._wait_s(120, 0.35))  # the learner still samples meanwhile
        self._close_limiter(0.1)
        self.learner.stop.remote()
        try:
            ray.get(learner_ref, timeout=self._wait_s(120, 0.4))
        except Exception as error:  # reported, but the checkpoint below still saves what is there
            print(f"learner: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}", file=sys.stderr)
        try:
            row, env_steps, updates, ratio = self._collect_metrics()
            self.logger.log(env_steps, row)
            self.stop.env_steps = env_steps
            self._save_checkpoint(env_steps, timeout=self._wait_s(None, 1.0))
        except Exception as error:
            if not self.stop.requested:
                raise
            self.stop.save_error = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}".rstrip(": ")
            return None
        return env_steps, updates, ratio

    def _wait_s(self, default: float | None, share: float) -> float | None:
        """A shutdown wait: `default` seconds (None: no limit), or after a signal at most `share` of
        the time left for the orderly shutdown."""
        left = self.stop.remaining(share)
        if left is None:
            return default
        return left if default is None else min(default, left)

    def _close_limiter(self, share: float) -> None:
        close = self.limiter.close.remote()
        if self.stop.requested:
            _answers([close], timeout=self._wait_s(None, share))
        else:
            ray.get(close, timeout=60)

    def _save_checkpoint(self, env_steps: int, timeout: float | None = None) -> None:
        state = {
            "agent": ray.get(self.learner.checkpoint_state.remote(), timeout=timeout),
            "limiter": ray.get(self.limiter.state.remote(), timeout=timeout),
            "counters": {"env_steps": env_steps, "episodes": self.episodes_base},
            "model": self._model_signature(),
        }
        save_checkpoint(self.logdir, env_steps, state, self.config.run.keep_checkpoints)
        self.stop.saved(env_steps)

    def _start_evaluation(self, env_steps: int) -> None:
        """Greedy episodes on the evaluator actor, with the current weights, while training goes on."""
        config = self.config
        if self._evaluator is None:
            self._evaluator = ray.remote(Evaluator).options(num_cpus=0, **on_driver_node()).remote(
                config.env.name, dict(config.env.options), config.run.seed + 10_000, config.agent,
                slot=config.runners.count * config.runners.envs)
        weights = self.learner.policy_weights.remote()
        record = config.run.eval_video and bool(self.obs_spec.image_keys)
        self._eval_ref, self._eval_step = self._evaluator.evaluate.remote(weights, config.run.eval_episodes, record), env_steps
        if record:  # an episode of this evaluation, and the world model's predictions on its last batch
            self._video_refs = {"eval": self._evaluator.video.remote(), "openloop": self.learner.openloop_video.remote()}

    def _log_finished_evaluation(self, wait: bool = False) -> dict[str, float] | None:
        if self._eval_ref is None or not (wait or ray.wait([self._eval_ref], timeout=0)[0]):
            return None
        result = ray.get(self._eval_ref, timeout=READY_GET_S)
        self._eval_ref = None
        self.logger.log(self._eval_step, {f"eval/{k}": v for k, v in result.items()})
        if self._video_refs:
            refs = list(self._video_refs.values())
            ready = set(ray.wait(refs, num_returns=len(refs), timeout=120)[0])  # one that hangs is skipped
            videos = {name: ray.get(ref, timeout=READY_GET_S) for name, ref in self._video_refs.items() if ref in ready}
            self._video_refs = {}
            save_videos(self.logger, self.logdir, self._eval_step, videos)
        return result

    def _evaluate(self, env_steps: int) -> float | None:
        """The final evaluation, after training stopped; none after SIGTERM/SIGINT, which also ends
        one in progress."""
        if self.config.run.eval_episodes <= 0 or self.stop.requested:
            return None
        if not self._await_evaluation():
            return None
        self._log_finished_evaluation(wait=True)
        self._start_evaluation(env_steps)
        if not self._await_evaluation():
            return None
        return self._log_finished_evaluation(wait=True)["return"]

    def _await_evaluation(self) -> bool:
        """Wait for the evaluation in flight (if any); False when a signal asked the run to stop."""
        while self._eval_ref is not None and not ray.wait([self._eval_ref], timeout=0.5)[0]:
            if self.stop.requested:
                return False
        return not self.stop.requested


def _node_or_error(runner: ray.actor.ActorHandle) -> str:
    try:
        return ray.get(runner.where.remote(), timeout=120)
    except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as error:
        return f"none yet ({type(error).__name__})"


def _answers(refs: list[ray.ObjectRef], timeout: float) -> list[Any]:
    """The answers of the actors that give one within the timeout (a dead runner gives none)."""
    if not refs:
        return []
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    out = []
    for ref in ready:
        try:
            out.append(ray.get(ref, timeout=READY_GET_S))
        except ray.exceptions.RayError:
            continue
    return out


def train(config: Config, logdir: str | None = None, progress: bool = True, stop: StopSignals | None = None) -> RunSummary:
    """A new run. With `stop` (the CLI's), SIGTERM/SIGINT end it with a checkpoint: `Interrupted`."""
    probe_env(config)  # a bad environment fails here, before the logdir exists
    start_ray(config.ray)  # and so do an unreachable cluster and a GPU it does not have
    check_resources(config)
    path = make_logdir(config, logdir)
    _handle_signals(stop, config, path)
    return Run(config, path, resume=False, progress=progress, stop=stop).execute_and_release()


def resume(logdir: str, overrides: list[str] | None = None, progress: bool = True, stop: StopSignals | None = None) -> RunSummary:
    path = Path(logdir)
    config = load_run_config(path)
    if overrides:
        config = apply_overrides(config, overrides)
    start_ray(config.ray)
    check_resources(config)
    _handle_signals(stop, config, path)
    return Run(config, path, resume=True, progress=progress, stop=stop).execute_and_release()


def _handle_signals(stop: StopSignals | None, config: Config, logdir: Path) -> None:
    """From here on SIGTERM/SIGINT stop the run in order. Only now: `ray.init` and Ray's core worker
    install SIGTERM handlers of their own, which these replace (system/interrupt.py says why)."""
    if stop is not None:
        stop.timeout, stop.logdir = config.run.shutdown_timeout, logdir
        stop.install()


def evaluate_logdir(logdir: Path, episodes: int | None = None) -> dict[str, float]:
    """Greedy episodes with the weights of a run's last checkpoint."""
    config = load_run_config(logdir)
    checkpoint = latest_checkpoint(logdir)
    if checkpoint is None:
        raise CheckpointError(f"{logdir} has no checkpoint to evaluate")
    obs_spec, act_spec = probe_env(config)
    agent = Agent(obs_spec, act_spec, config.agent, device="cpu")
    agent.world_model.load_state_dict(checkpoint["agent"]["world_model"])
    agent.actor_critic.load_state_dict(checkpoint["agent"]["actor_critic"])
    agent.updates = int(checkpoint["agent"]["updates"])
    evaluator = Evaluator(config.env.name, dict(config.env.options), config.run.seed + 20_000, config.agent)
    return evaluator.evaluate(agent.policy_weights(), episodes or config.run.eval_episodes)
