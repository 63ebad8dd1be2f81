"""The run's configuration: one typed schema, YAML presets in `configs/`, `key=value` overrides.

OmegaConf checks every preset and override against the dataclasses below, so an unknown key or a
value of the wrong type fails before anything starts, with a message that names it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from learner.config import AgentConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A configuration the user must fix; the message says what and how."""


@dataclass
class RunConfig:
    steps: int = 100_000  # env (policy) steps to collect, over all runners
    seed: int = 0
    logdir: str = "runs/{preset}-{time}"
    log_every: float = 10.0  # seconds between metric lines
    checkpoint_every: float = 300.0  # seconds between checkpoints
    keep_checkpoints: int = 3
    eval_every: int = 0  # env steps between evaluations (0: only at the end)
    eval_episodes: int = 5
    eval_video: bool = True  # at each evaluation: a greedy episode and open-loop predictions (image envs)
    max_nonfinite_updates: int = 10  # consecutive skipped updates before the run stops


@dataclass
class EnvConfig:
    name: str = "gym:CartPole-v1"
    options: dict[str, Any] = field(default_factory=dict)
    # The tasks of the benchmark a preset belongs to (one run trains `name`; sweep over these).
    benchmark: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    train_ratio: float = 512.0  # replayed steps per env step (policy steps, not frames)
    batch_size: int = 16
    seq_len: int = 64
    prefill: int = 5000  # env steps with a random policy before learning starts
    publish_every: int = 5  # updates between weight broadcasts
    tolerance: float = 4.0  # batches the learner may run ahead of (or behind) the ratio
    prefetch: int = 2  # batch requests kept in flight by the learner


@dataclass
class ReplayConfig:
    shards: int = 2
    capacity: int = 1_000_000  # steps, over all shards
    sampling: str = "uniform"  # uniform | recency | priority
    num_cpus: float = 0.0
    memory_gb: float = 0.0  # memory Ray reserves per shard (0: none); shards spread over nodes
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per shard


@dataclass
class RunnersConfig:
    count: int = 2
    envs: int = 1  # environments per runner
    chunk_length: int = 64
    insert_batch: int = 4  # most chunks one replay insert call carries (1: every chunk alone)
    insert_linger: float = 0.25  # seconds a runner waits for more chunks before inserting fewer
    num_cpus: float = 1.0
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per runner
    max_restarts: int = 3
    step_timeout: float = 60.0  # seconds before a hung environment is restarted (0: no timeout)
    max_failures: int = 6  # failures in a row (crashes, envs that keep failing) before a runner is given up on
    restart_delay: float = 2.0  # seconds before a failed runner starts again; doubles with each failure in a row


@dataclass
class LearnerConfig:
    num_gpus: float = -1.0  # -1: one GPU when the cluster has one, else CPU
    num_cpus: float = 1.0
    threads: int = 0  # torch threads (0: the CPUs given)
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class RayConfig:
    address: str | None = None  # None: start an embedded local cluster; "auto" or host:port to join
    num_cpus: int | None = None  # for the embedded cluster (default: all cores)
    dashboard: bool = False  # when on, it binds to 127.0.0.1 only


@dataclass
class WandbConfig:
    mode: str = "auto"  # auto (online with an API key, else offline) | online | offline | disabled
    project: str = "harmonyray"
    entity: str | None = None
    group: str | None = None


@dataclass
class Config:
    preset: str = "custom"
    run: RunConfig = field(default_factory=RunConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    runners: RunnersConfig = field(default_factory=RunnersConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


def presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A preset name (`cartpole`) or a YAML path, merged over the defaults, then the overrides."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown config {name_or_path!r}: give a YAML path or one of the presets {', '.join(presets())}")
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not key=value (e.g. run.steps=20000)")
    try:
        preset = OmegaConf.load(path)
        merged = OmegaConf.merge(OmegaConf.structured(Config), {"preset": path.stem}, preset, OmegaConf.from_dotlist(list(overrides)))
        config: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(f"config {path.name}: {_first_line(error)}") from None
    validate(config)
    return config


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a saved config (e.g. LOGDIR/config.yaml), checked like any other."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), data))
    except OmegaConfBaseException as error:
        raise ConfigError(f"saved config: {_first_line(error)}") from None


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """`key=value` overrides on top of an existing config (e.g. `run.steps=60000` on resume)."""
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not key=value (e.g. run.steps=20000)")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(config), OmegaConf.from_dotlist(list(overrides)))
        result: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(f"override: {_first_line(error)}") from None
    validate(result)
    return result


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def validate(config: Config) -> None:
    """Checks across keys that the schema's types cannot express."""
    if config.agent.harmony.mode == "False":  # YAML 1.1 reads a bare `off` as false, stored as "False"
        config.agent.harmony.mode = "off"
    checks = [
        (config.run.steps > 0, "run.steps must be positive"),
        (config.train.train_ratio > 0, "train.train_ratio must be positive"),
        (config.train.batch_size > 0 and config.train.seq_len > 1, "train.batch_size must be >= 1 and train.seq_len >= 2"),
        (config.train.prefill >= config.train.batch_size * config.train.seq_len, f"train.prefill ({config.train.prefill}) must be at least one batch, train.batch_size x train.seq_len = {config.train.batch_size * config.train.seq_len} steps"),
        (config.train.seq_len <= config.replay.capacity // max(1, config.replay.shards), f"train.seq_len ({config.train.seq_len}) is longer than a replay shard holds (replay.capacity / replay.shards = {config.replay.capacity // max(1, config.replay.shards)} steps): raise replay.capacity or lower replay.shards"),
        (not (config.agent.device.startswith("cuda") and config.learner.num_gpus == 0), "agent.device asks for CUDA but learner.num_gpus=0: set learner.num_gpus=1 (or -1, auto) on a GPU cluster, or agent.device=auto"),
        (config.runners.step_timeout >= 0 and config.runners.restart_delay >= 0 and config.runners.max_failures >= 1, "runners.step_timeout and runners.restart_delay must be >= 0 and runners.max_failures >= 1"),
        (config.train.prefill < config.run.steps, f"train.prefill ({config.train.prefill}) must be below run.steps ({config.run.steps}) or no update ever runs"),
        (config.replay.capacity >= config.train.prefill, "replay.capacity must hold at least train.prefill steps"),
        (config.replay.shards >= 1 and config.runners.count >= 1 and config.runners.envs >= 1, "replay.shards, runners.count and runners.envs must be >= 1"),
        (config.runners.chunk_length >= 1 and config.runners.insert_batch >= 1 and config.runners.insert_linger >= 0, "runners.chunk_length and runners.insert_batch must be >= 1 and runners.insert_linger >= 0"),
        (config.replay.sampling in ("uniform", "recency", "priority"), "replay.sampling must be uniform, recency or priority"),
        (config.wandb.mode in ("auto", "online", "offline", "disabled"), "wandb.mode must be auto, online, offline or disabled"),
        (config.agent.harmony.mode in ("rectified", "unrectified", "naive", "fixed", "off"), "agent.harmony.mode must be rectified, unrectified, naive, fixed or off"),
        (config.agent.behavior.imagined_continue in ("mode", "probability"), "agent.behavior.imagined_continue must be mode or probability"),
        (config.agent.behavior.actor_grad in ("auto", "reinforce", "backprop"), "agent.behavior.actor_grad must be auto, reinforce or backprop"),
        (config.agent.precision in ("auto", "bf16", "fp32"), "agent.precision must be auto, bf16 or fp32"),
        (config.agent.world_model.terminal_weight > 0, "agent.world_model.terminal_weight must be positive (1 = DreamerV3)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    try:
        config.agent.model.resolved()
    except ValueError as error:
        raise ConfigError(f"agent.model.size: {error}") from None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]
