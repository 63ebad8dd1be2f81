"""The run driver: a run from start to end, as a table of contents of its parts.

    runners (actors/) --chunks--> replay shards (replay/) --batches--> learner (learner/)
        ^                                                                  |
        +---------------- weight board <--- ray.put(weights) -------------+

`train` and `resume` start Ray and hand a `Run` its logdir. The parts it calls: system/launch.py
starts and places the actors and releases them; system/supervisor.py owns the runner set and
restarts failed runners; system/run_metrics.py turns the actors' stats into metrics rows;
system/evaluation.py schedules evaluations; system/checkpoint.py writes checkpoints.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import ray
import yaml
from tqdm import tqdm

from actors.envs import UnknownEnvError, make_env
from actors.evaluator import Evaluator
from actors.specs import specs_from_spaces
from learner.agent import Agent
from learner.spaces import ActionSpec, ObservationShapeError, ObservationSpec
from replay import ReplayService
from system.checkpoint import CheckpointError, check_signature, latest_checkpoint, model_signature, save_checkpoint
from system.cluster import check_resources, start_ray
from system.config import Config, ConfigError, apply_overrides, config_from_dict, to_yaml
from system.evaluation import EvaluationScheduler
from system.failures import LearnerFailed
from system.interrupt import StopSignals
from system.launch import RunActors
from system.metrics import MetricsLogger, best_evaluation
from system.run_metrics import Progress, RunMetrics
from system.supervisor import answers

CONFIG_FILE = "config.yaml"
CHECKPOINT_TIMEOUT_S = 300.0  # for a periodic checkpoint's state (an XL agent with its optimiser is a few GB)
LEARNER_END_S = 10.0  # after a learner call failed, how long Ray may take to report its loop ended


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


class Run:
    """One training run (new or resumed) on a started Ray cluster.

    `execute` is the run, start to end: start the actors (system/launch.py), watch them until
    `run.steps` env steps are collected (metrics rows from system/run_metrics.py, evaluations from
    system/evaluation.py, periodic checkpoints, runner restarts by the supervisor), shut down in
    order with a final checkpoint, evaluate once more and sum up.
    """

    def __init__(self, config: Config, logdir: Path, resume: bool, progress: bool = True, stop: StopSignals | None = None,
                 specs: tuple[ObservationSpec, ActionSpec] | None = None):
        """`specs`: the env's observation and action specs, when the caller already probed it."""
        self.config, self.logdir, self.progress = config, logdir, progress
        # set by SIGTERM/SIGINT where the CLI installed it: the watch loop stops, the shutdown is bounded
        self.stop = stop or StopSignals(config.run.shutdown_timeout, logdir)
        self.checkpoint = latest_checkpoint(logdir) if resume else None
        self.obs_spec, self.act_spec = specs or probe_env(config)
        self.signature = model_signature(config.agent, self.obs_spec, self.act_spec)
        if self.checkpoint:
            check_signature(self.checkpoint, self.signature, logdir)
        counters = self.checkpoint["counters"] if self.checkpoint else {}
        self.env_steps_base = int(counters.get("env_steps", 0))
        self.stop.env_steps = self.env_steps_base
        if self.checkpoint:
            self.stop.saved(self.env_steps_base)
        self.metrics = RunMetrics(self.env_steps_base, int(counters.get("episodes", 0)), config.replay.call_timeout)
        self.learner_restores = 0  # learner groups restored from a checkpoint in this run
        self.actors = RunActors()
        self.logger: MetricsLogger | None = None
        self.evaluations: EvaluationScheduler | None = None

    # The run's actors, for tests and tools that inject faults (empty or None while being started).
    @property
    def runners(self) -> list[ray.actor.ActorHandle]:
        return self.actors.runners.runners if self.actors.runners is not None else []

    @property
    def replay(self) -> ReplayService | None:
        return self.actors.replay

    @property
    def limiter(self) -> ray.actor.ActorHandle | None:
        return self.actors.limiter

    @property
    def placement(self) -> dict[str, Any]:
        return self.actors.placement

    def execute(self) -> RunSummary:
        config = self.config
        if self.stop.requested:  # a signal came while the run was being set up: start nothing
            raise self.stop.interrupted()
        start = time.perf_counter()
        self.actors.start(config, self.logdir, self.obs_spec, self.act_spec, self.checkpoint)
        self.logger = MetricsLogger(self.logdir, config.wandb, dataclasses.asdict(config), name=self.logdir.name)
        videos = config.run.eval_video and bool(self.obs_spec.image_keys)
        self.evaluations = EvaluationScheduler(config, self.actors.learners.lead, self.logger, self.logdir, videos, self.stop, self.env_steps_base)
        self.actors.learners.run()
        self.actors.runners.start()
        try:
            progress = self._watch()
            self.evaluations.prepare_final()  # its process starts while the run shuts down
        except LearnerFailed as error:  # one line: what failed, and where the run resumes from
            saved = f"the last checkpoint ({self.stop.saved_steps:,} env steps)" if self.stop.saved_steps is not None else "its start (no checkpoint yet)"
            raise LearnerFailed(f"{error}; the run stopped: `harmonyray resume {self.logdir}` continues from {saved}, "
                                "with the same or another learner.num_learners") from None
        finally:
            stopped = self._shutdown()
        progress = stopped or progress
        eval_return = self.evaluations.final(progress.env_steps)  # none after a signal
        self.logger.close()
        if self.stop.requested:  # the orderly shutdown is over: the CLI says where to resume and exits
            raise self.stop.interrupted()
        best_return, best_step = best_evaluation(self.logdir) or (None, None)
        return RunSummary(str(self.logdir), progress.env_steps, progress.updates, progress.replay_ratio, eval_return,
                          time.perf_counter() - start, best_return, best_step)

    def execute_and_release(self) -> RunSummary:
        """`execute`, then free the run's actors and their CPUs at once (a later run in the same
        process would otherwise wait for the garbage collector). Everything is on disk by then."""
        try:
            return self.execute()
        finally:
            self.release()

    def release(self) -> None:
        self.actors.release(self.evaluations.evaluator if self.evaluations is not None else None)

    # ------------------------------------------------------------------ watch
    def _watch(self) -> Progress:
        config = self.config
        bar = tqdm(total=config.run.steps, initial=self.env_steps_base, unit="step", disable=not self.progress, dynamic_ncols=True, file=sys.stderr)
        next_log = next_ckpt = time.perf_counter()
        next_ckpt += config.run.checkpoint_every
        progress = Progress(self.env_steps_base, 0, 0.0)
        shown = {"ret": "-", "eval": "-"}  # the latest of each, kept between log steps without episodes
        while not self.stop.requested:  # SIGTERM/SIGINT: stop collecting within a tick
            time.sleep(min(1.0, config.run.log_every))
            self._survive_learner_death(self._check_actors)
            now = time.perf_counter()
            if now < next_log:
                continue
            next_log = now + config.run.log_every
            row, progress = self._log_metrics()
            bar.update(progress.env_steps - bar.n)
            if "episode/return" in row:
                shown["ret"] = f"{row['episode/return']:.1f}"
            evaluation = self.evaluations.poll()
            if evaluation is not None:
                shown["eval"] = f"{evaluation['return']:.1f}"
            bar.set_postfix(**shown, upd=progress.updates, ratio=f"{progress.replay_ratio:.0f}")
            self.evaluations.maybe_start(progress.env_steps)
            if now >= next_ckpt:
                env_steps = progress.env_steps
                self._survive_learner_death(lambda: self._periodic_checkpoint(env_steps))
                next_ckpt = now + config.run.checkpoint_every
            if progress.env_steps >= config.run.steps:
                break
        bar.close()
        return progress

    def _log_metrics(self) -> tuple[dict[str, Any], Progress]:
        """Gather every actor's stats into one row, log it, and return it with the run's progress."""
        actors = self.actors
        runner_stats = actors.runners.stats()
        learner_stats = actors.learners.stats()  # {} when busy beyond a minute: report the runners and replay anyway
        extra = {**actors.runners.metrics(), "learner/restores": self.learner_restores}
        row, progress = self.metrics.row(runner_stats, learner_stats, actors.replay.stats(), extra)
        self.logger.log(progress.env_steps, row)
        self.stop.env_steps = progress.env_steps
        return row, progress

    def _check_actors(self) -> None:
        """A finished learner loop is an error before the end (LearnerFailed); runners that failed
        are started again with back-off (or given up on) by the supervisor, their earlier steps
        kept in the count."""
        self.actors.learners.check()
        self.actors.runners.check()

    def _survive_learner_death(self, step: Callable[[], None]) -> None:
        """Run a step of the watch loop; if it finds a learner dead, restore the group from the last
        checkpoint (at most `learner.max_restarts` times a run), else let LearnerFailed stop the run."""
        try:
            step()
        except LearnerFailed as error:
            if not error.died or self.learner_restores >= self.config.learner.max_restarts:
                raise
            self._restore_learners(error)

    def _restore_learners(self, error: LearnerFailed) -> None:
        """A new learner group from the last checkpoint (the run's start if there is none yet),
        said in one line; what the old group trained since that checkpoint is trained again."""
        self.learner_restores += 1
        checkpoint = latest_checkpoint(self.logdir)
        since = f"the checkpoint at {checkpoint['counters']['env_steps']:,} env steps" if checkpoint else "fresh weights (no checkpoint yet)"
        print(f"{error}; restoring the learners from {since} (restore {self.learner_restores} of {self.config.learner.max_restarts})",
              file=sys.stderr, flush=True)
        self.actors.restore_learners(self.config, self.obs_spec, self.act_spec, checkpoint["agent"] if checkpoint else None)
        self.evaluations.learner = self.actors.learners.lead

    def _periodic_checkpoint(self, env_steps: int) -> None:
        """A checkpoint during the run; one whose state does not come in time (a busy machine, a
        slow network) is skipped with one line, not fatal: the next is tried as planned."""
        try:
            self._save_checkpoint(env_steps, timeout=CHECKPOINT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            print(f"checkpoint at {env_steps:,} env steps skipped: the actors' state did not come within "
                  f"{CHECKPOINT_TIMEOUT_S:g} s; the next one is tried as planned", file=sys.stderr, flush=True)

    def _save_checkpoint(self, env_steps: int, timeout: float | None = None) -> None:
        """Gather the actors' state and write it; a learner that died meanwhile (or whose rank 0
        waits on a dead peer past the timeout) is reported as LearnerFailed, not as Ray's error."""
        try:
            actors_state = self.actors.checkpoint_state(timeout)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            self.actors.learners.check(wait_s=LEARNER_END_S)  # LearnerFailed when a learner's loop ended
            raise
        state = {
            **actors_state,
            "counters": {"env_steps": env_steps, "episodes": self.metrics.episodes},
            "model": self.signature,
        }
        save_checkpoint(self.logdir, env_steps, state, self.config.run.keep_checkpoints)
        self.stop.saved(env_steps)

    # --------------------------------------------------------------- shutdown
    def _shutdown(self) -> Progress | None:
        """Stop runners (they flush their queued chunks), release the learners, final checkpoint.

        After SIGTERM/SIGINT each wait gets a share of the time left (`_wait_s`), so that the
        checkpoint is still written within `run.shutdown_timeout`; a step that fails or runs out
        of time then is passed over, and a checkpoint that cannot be written is reported, not raised.
        A broken learner group (a rank died) writes none: the last periodic checkpoint stands."""
        learners = self.actors.learners
        broken = learners.broken()
        if broken:  # nobody samples any more: release runners waiting on the limiter
            self._close_limiter(0.1)
        runners = self.actors.runners
        runners.stop(timeout=self._wait_s(60, 0.15))
        runners.wait_stopped(timeout=self._wait_s(60, 0.2))  # their `run` calls return once stopped
        runners.flush(timeout=self._wait_s(120, 0.35))  # the learner still samples meanwhile
        self._close_limiter(0.1)
        if broken:  # the living ranks may wait in an all-reduce nobody joins: their state is not readable
            learners.release()
            return None
        learners.stop()
        try:
            ray.get(learners.run_refs, timeout=self._wait_s(120, 0.4))
        except Exception as error:  # reported, but the checkpoint below still saves what is there
            print(f"learner: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}", file=sys.stderr)
        try:
            _, progress = self._log_metrics()
            self._save_checkpoint(progress.env_steps, timeout=self._wait_s(None, 1.0))
        except Exception as error:
            if not self.stop.requested:
                raise
            self.stop.save_error = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}".rstrip(": ")
            return None
        return progress

    def _wait_s(self, default: float | None, share: float) -> float | None:
        """A shutdown wait: `default` seconds (None: no limit), or after a signal at most `share` of
        the time left for the orderly shutdown."""
        left = self.stop.remaining(share)
        if left is None:
            return default
        return left if default is None else min(default, left)

    def _close_limiter(self, share: float) -> None:
        close = self.actors.limiter.close.remote()
        if self.stop.requested:
            answers([close], timeout=self._wait_s(None, share))
        else:
            ray.get(close, timeout=60)


def train(config: Config, logdir: str | None = None, progress: bool = True, stop: StopSignals | None = None) -> RunSummary:
    """A new run. With `stop` (the CLI's), SIGTERM/SIGINT end it with a checkpoint: `Interrupted`."""
    specs = probe_env(config)  # a bad environment fails here, before the logdir exists
    start_ray(config.ray)  # and so do an unreachable cluster and a GPU it does not have
    check_resources(config)
    path = make_logdir(config, logdir)
    _handle_signals(stop, config, path)
    return Run(config, path, resume=False, progress=progress, stop=stop, specs=specs).execute_and_release()


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
