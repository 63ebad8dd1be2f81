"""The run's configuration: one typed schema, YAML presets in `configs/`, `key=value` overrides.

OmegaConf checks every preset and override against the dataclasses below, so an unknown key or a
value of the wrong type fails before anything starts, with one line that names the dotted key and
what it expects (`run.steps: expected an integer, got 'lots'`); `validate` does the same for values
out of range or not among the choices.
"""
from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from collections.abc import Callable
from functools import cache, partial
from pathlib import Path
from typing import Any

import yaml
from omegaconf import Container, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from learner.config import SCALING_RULES, AgentConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A configuration the user must fix; the message says what and how."""


@dataclass
class RunConfig:
    steps: int = 100_000  # env (policy) steps to collect, over all runners
    seed: int = 0  # base seed: the runners' envs, exploration and torch, replay sampling and the evaluator derive theirs from it
    logdir: str = "runs/{preset}-{time}"  # run directory when --logdir is not given; {preset} and {time} are filled in
    log_every: float = 10.0  # seconds between metric lines
    checkpoint_every: float = 300.0  # seconds between checkpoints
    keep_checkpoints: int = 3  # newest checkpoints kept (0: all)
    eval_every: int = 0  # env steps between evaluations (0: only at the end)
    eval_episodes: int = 5  # greedy episodes per evaluation
    eval_video: bool = True  # at each evaluation: a greedy episode and open-loop predictions (image envs)
    max_nonfinite_updates: int = 10  # consecutive skipped updates before the run stops
    shutdown_timeout: float = 60.0  # seconds from SIGTERM/SIGINT to exit: stop, checkpoint, close W&B and Ray


@dataclass
class EnvConfig:
    name: str = "gym:CartPole-v1"  # suite:task, e.g. gym:CartPole-v1, atari:Pong, catch:8x8, crafter:reward, metaworld:hammer-v3, minecraft:hunt-cow
    options: dict[str, Any] = field(default_factory=dict)  # keyword options of the env suite (e.g. {camera: corner2} for Meta-World; actors/envs)


@dataclass
class TrainConfig:
    train_ratio: float = 512.0  # replayed steps per env step (policy steps, not frames)
    batch_size: int = 16  # sequences per update
    seq_len: int = 64  # steps per replayed sequence
    prefill: int = 5000  # env steps with a random policy before learning starts
    publish_every: int = 5  # updates between weight broadcasts
    tolerance: float = 4.0  # batches the learner may run ahead of (or behind) the ratio
    prefetch: int = 2  # batch requests kept in flight by the learner


@dataclass
class ReplayConfig:
    shards: int = 2  # replay actors; `capacity` is split among them
    capacity: int = 1_000_000  # steps, over all shards
    sampling: str = "uniform"  # uniform | recency | priority
    recency_half_life: float | None = None  # recency: env steps (over all shards) after which a step is half as likely to start a sequence (None: a quarter of the capacity)
    priority_exponent: float = 0.6  # priority: a sequence start is drawn in proportion to its priority to this power (0: uniform)
    num_cpus: float = 0.0  # CPUs Ray reserves per shard
    memory_gb: float = 0.0  # memory Ray reserves per shard (0: none); shards spread over nodes
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per shard
    call_timeout: float = 5.0  # seconds a replay call may take before its shard counts as hung


@dataclass
class RunnersConfig:
    count: int = 2  # runner actors, each stepping `envs` environments
    envs: int = 1  # environments per runner
    chunk_length: int = 64  # steps per chunk a runner cuts its experience into for replay
    insert_batch: int = 4  # most chunks one replay insert call carries (1: every chunk alone)
    insert_linger: float = 0.25  # seconds a runner waits for more chunks before inserting fewer
    num_cpus: float = 1.0  # CPUs Ray reserves per runner
    num_gpus: float = 0.0  # a share of a GPU per runner: its policy then acts there
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per runner
    # Custom Ray resources per environment, times `envs` on top of `resources`: a node that
    # advertises {minecraft: 12} then hosts at most 12 Minecraft instances, however runners split them.
    resources_per_env: dict[str, float] = field(default_factory=dict)
    # lockstep: every env steps at once (fast in-process envs); async: each env steps as soon as its
    # last step returned (slow, crashy simulators); auto: the env suite's default (actors/envs).
    collection: str = "auto"
    gather_wait: float = 0.001  # async: seconds to wait, after one env is ready, for more to act on in one batch
    max_restarts: int = 3  # times Ray restarts a runner actor that died, also on another node when its node is lost
    step_timeout: float = 60.0  # seconds before a hung environment is restarted (0: no timeout)
    max_failures: int = 6  # failures in a row (crashes, envs that keep failing) before a runner is given up on
    restart_delay: float = 2.0  # seconds before a failed runner starts again; doubles with each failure in a row


@dataclass
class LearnerConfig:
    # Data-parallel learners: N ranks, each sampling its own batch, gradients averaged by DDP (NCCL on
    # GPUs, gloo on CPUs), placed together as one placement group; the resources below are per learner.
    num_learners: int = 1
    # How N learners scale the batch and learning rates: rllib (each samples train.batch_size, learning
    # rates x sqrt(N)), linear (each samples train.batch_size, learning rates x N) or split (train.batch_size
    # is split over them, learning rates unchanged: one learner's optimisation, N times the compute)
    scaling: str = "rllib"
    # Times a run restores its learners from the last checkpoint after one died (killed, out of memory,
    # node lost) before it stops (exit 1, resumable); an error the training loop raised stops it at once
    max_restarts: int = 2
    num_gpus: float = -1.0  # -1: one GPU when the cluster has one, else CPU
    num_cpus: float = 1.0  # CPUs Ray reserves for the learner
    threads: int = 0  # torch threads (0: the CPUs given)
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources for the learner
    # On a CPU, malloc keeps freed memory for the next update (glibc): S image updates 15-26 % shorter,
    # but the process holds its peak (~3.5 GiB for S image); false gives it back (memory-tight nodes)
    keep_freed_memory: bool = True


@dataclass
class RayConfig:
    address: str | None = None  # None: start an embedded local cluster; "auto" or host:port to join
    num_cpus: int | None = None  # for the embedded cluster (default: all cores)
    resources: dict[str, float] = field(default_factory=dict)  # custom resources the embedded cluster offers (e.g. {minecraft: 4})
    dashboard: bool = False  # when on, it binds to 127.0.0.1 only


@dataclass
class WandbConfig:
    mode: str = "auto"  # auto (online with an API key, else offline) | online | offline | disabled
    project: str = "harmonyray"  # W&B project
    entity: str | None = None  # W&B team or user (null: your default)
    group: str | None = None  # W&B group the run joins (null: none)
    tags: list[str] = field(default_factory=list)  # labels of the W&B run (a sweep sets its grid values, e.g. agent.harmony.mode=off)


@dataclass
class Config:
    preset: str = "custom"  # the preset's (or YAML file's) name, set by the loader; {preset} in run.logdir
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
    """The preset names: YAML files directly in configs/ (the pieces they extend live in subfolders)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


# Reserved top-level key of a YAML config: the configs it is merged over, in order, as paths
# relative to configs/ without `.yaml` (`extends: pieces/base`, or a list). So a preset says only
# what differs from the pieces, and a YAML file of one's own may extend a preset.
EXTENDS = "extends"


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
    files = [*_composition(path), (_label(path), _parse_overrides(overrides))]
    merged = OmegaConf.merge(OmegaConf.structured(Config), {"preset": path.stem})
    for label, data in files:  # one at a time, so that an error names the file it is in
        merged = _checked(partial(OmegaConf.merge, merged, data), f"config {label}", [data])
    config: Config = _checked(partial(OmegaConf.to_object, merged), f"config {_label(path)}", [data for _, data in files])
    validate(config)
    return config


def _checked(step: Callable[[], Any], where: str, sources: list[Any]) -> Any:
    """`step()`, an OmegaConf merge or conversion of `sources`, its error as one line that says where and names the key."""
    try:
        return step()
    except (OmegaConfBaseException, TypeError) as error:  # TypeError: a list where the schema has a mapping
        raise ConfigError(f"{where}: {_explain(error, sources)}") from None


def _composition(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[str, Any]]:
    """(label, contents) of every file a config is merged from: what it extends, first, then itself."""
    chain = (*chain, path.resolve())
    data = _load_yaml(path)
    names = data.pop(EXTENDS, None) if isinstance(data, DictConfig) else None
    if names is None:
        return [(_label(path), data)]
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, (list, ListConfig)) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"config {_label(path)}: {EXTENDS}: expected a config name or a list of them (e.g. pieces/base), got {_show(names)}")
    files: list[tuple[str, Any]] = []
    for name in names:
        base = CONFIG_DIR / f"{name}.yaml"
        if not base.is_file():
            known = sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.rglob("*.yaml"))
            raise ConfigError(f"config {_label(path)}: {EXTENDS}: no config {name!r} (configs/{name}.yaml); configs/ has {', '.join(known)}")
        if base.resolve() in chain:
            raise ConfigError(f"config {_label(path)}: {EXTENDS}: {name!r} makes a cycle ({' -> '.join(_label(p) for p in chain)} -> {_label(base)})")
        files += _composition(base, chain)
    return [*files, (_label(path), data)]


def _label(path: Path) -> str:
    """A config file as messages name it: relative to configs/ when it is there (`pieces/base.yaml`)."""
    try:
        return str(path.resolve().relative_to(CONFIG_DIR))
    except ValueError:
        return path.name


# Keys that runs saved before the schema dropped them (nothing read them): ignored when read back.
RETIRED_KEYS = ("env.benchmark",)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a saved config (e.g. LOGDIR/config.yaml), checked like any other."""
    if not isinstance(data, dict):
        raise ConfigError(f"saved config: expected a mapping (Config has: {', '.join(_hints(Config))}), got {_show(data)}")
    try:
        saved = OmegaConf.create(data)
        for key in RETIRED_KEYS:
            section, name = key.rsplit(".", 1)
            if isinstance(OmegaConf.select(saved, section), DictConfig):
                OmegaConf.select(saved, section).pop(name, None)
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), saved))
    except (OmegaConfBaseException, TypeError) as error:
        raise ConfigError(f"saved config: {_explain(error, [data])}") from None


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """`key=value` overrides on top of an existing config (e.g. `run.steps=60000` on resume)."""
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not key=value (e.g. run.steps=20000)")
    sources: list[Any] = []
    try:
        sources.append(_parse_overrides(overrides))
        merged = OmegaConf.merge(OmegaConf.structured(config), *sources)
        result: Config = OmegaConf.to_object(merged)
    except (OmegaConfBaseException, TypeError) as error:
        raise ConfigError(f"override: {_explain(error, sources)}") from None
    validate(result)
    return result


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def validate(config: Config) -> None:
    """Checks across keys that the schema's types cannot express; each message names its dotted keys and what they must be."""
    if config.agent.harmony.mode == "False":  # YAML 1.1 reads a bare `off` as false, stored as "False"
        config.agent.harmony.mode = "off"
    config.agent.compile = {"True": "on", "False": "off"}.get(config.agent.compile, config.agent.compile)  # same for on/off
    checks = [
        (config.run.steps > 0, f"run.steps must be positive (got {config.run.steps})"),
        (config.run.shutdown_timeout > 0, f"run.shutdown_timeout must be > 0 seconds (got {config.run.shutdown_timeout})"),
        (config.train.train_ratio > 0, f"train.train_ratio must be positive (got {config.train.train_ratio})"),
        (config.train.batch_size > 0, f"train.batch_size must be >= 1 (got {config.train.batch_size})"),
        (config.train.seq_len > 1, f"train.seq_len must be >= 2 (got {config.train.seq_len})"),
        (config.train.prefill >= config.train.batch_size * config.train.seq_len, f"train.prefill ({config.train.prefill}) must be at least one batch, train.batch_size x train.seq_len = {config.train.batch_size * config.train.seq_len} steps"),
        (config.train.seq_len <= config.replay.capacity // max(1, config.replay.shards), f"train.seq_len ({config.train.seq_len}) is longer than a replay shard holds (replay.capacity / replay.shards = {config.replay.capacity // max(1, config.replay.shards)} steps): raise replay.capacity or lower replay.shards"),
        (config.learner.num_learners >= 1, f"learner.num_learners must be >= 1 (got {config.learner.num_learners})"),
        (config.learner.max_restarts >= 0, f"learner.max_restarts must be >= 0 (got {config.learner.max_restarts})"),
        (config.learner.scaling in SCALING_RULES, f"learner.scaling must be one of {', '.join(SCALING_RULES)} (got {config.learner.scaling!r})"),
        (config.learner.scaling != "split" or config.train.batch_size % config.learner.num_learners == 0,
         f"learner.scaling=split divides train.batch_size ({config.train.batch_size}) over learner.num_learners ({config.learner.num_learners}): make it a multiple, or use scaling=rllib"),
        (config.learner.num_learners == 1 or config.learner.num_cpus > 0 or config.learner.num_gpus != 0 or bool(config.learner.resources),
         "learner.num_learners > 1 places the learners as a group of resource bundles: give each learner.num_cpus > 0 (or GPUs, or resources)"),
        (not (config.agent.device.startswith("cuda") and config.learner.num_gpus == 0), "agent.device asks for CUDA but learner.num_gpus=0: set learner.num_gpus=1 (or -1, auto) on a GPU cluster, or agent.device=auto"),
        (config.runners.step_timeout >= 0, f"runners.step_timeout must be >= 0 (0: no timeout; got {config.runners.step_timeout})"),
        (config.runners.restart_delay >= 0, f"runners.restart_delay must be >= 0 (got {config.runners.restart_delay})"),
        (config.runners.max_failures >= 1, f"runners.max_failures must be >= 1 (got {config.runners.max_failures})"),
        (config.train.prefill < config.run.steps, f"train.prefill ({config.train.prefill}) must be below run.steps ({config.run.steps}) or no update ever runs"),
        (config.replay.capacity >= config.train.prefill, f"replay.capacity ({config.replay.capacity}) must hold at least train.prefill ({config.train.prefill}) steps"),
        (config.replay.shards >= 1, f"replay.shards must be >= 1 (got {config.replay.shards})"),
        (config.runners.count >= 1, f"runners.count must be >= 1 (got {config.runners.count})"),
        (config.runners.envs >= 1, f"runners.envs must be >= 1 (got {config.runners.envs})"),
        (config.runners.chunk_length >= 1, f"runners.chunk_length must be >= 1 (got {config.runners.chunk_length})"),
        (config.runners.insert_batch >= 1, f"runners.insert_batch must be >= 1 (got {config.runners.insert_batch})"),
        (config.runners.insert_linger >= 0, f"runners.insert_linger must be >= 0 (got {config.runners.insert_linger})"),
        (config.runners.collection in ("auto", "lockstep", "async"), f"runners.collection must be auto, lockstep or async (got {config.runners.collection!r})"),
        (config.runners.gather_wait >= 0, f"runners.gather_wait must be >= 0 seconds (got {config.runners.gather_wait})"),
        (config.runners.num_gpus >= 0, f"runners.num_gpus must be >= 0 (got {config.runners.num_gpus})"),
        (config.replay.recency_half_life is None or config.replay.recency_half_life > 0, f"replay.recency_half_life must be > 0 env steps, or null for a quarter of the capacity (got {config.replay.recency_half_life})"),
        (config.replay.priority_exponent >= 0, f"replay.priority_exponent must be >= 0 (got {config.replay.priority_exponent})"),
        (config.replay.call_timeout > 0, f"replay.call_timeout must be > 0 seconds (got {config.replay.call_timeout})"),
        (config.replay.sampling in ("uniform", "recency", "priority"), f"replay.sampling must be uniform, recency or priority (got {config.replay.sampling!r})"),
        (config.wandb.mode in ("auto", "online", "offline", "disabled"), f"wandb.mode must be auto, online, offline or disabled (got {config.wandb.mode!r})"),
        (config.agent.harmony.mode in ("rectified", "unrectified", "naive", "fixed", "off"), f"agent.harmony.mode must be rectified, unrectified, naive, fixed or off (got {config.agent.harmony.mode!r})"),
        (config.agent.harmony.lr is None or config.agent.harmony.lr > 0, f"agent.harmony.lr must be > 0, or null for the world model's (got {config.agent.harmony.lr})"),
        (config.agent.behavior.imagined_continue in ("mode", "probability"), f"agent.behavior.imagined_continue must be mode or probability (got {config.agent.behavior.imagined_continue!r})"),
        (config.agent.behavior.actor_grad in ("auto", "reinforce", "backprop"), f"agent.behavior.actor_grad must be auto, reinforce or backprop (got {config.agent.behavior.actor_grad!r})"),
        (config.agent.precision in ("auto", "bf16", "fp32"), "agent.precision must be auto, bf16 or fp32"),
        (config.agent.compile in ("auto", "on", "off"), "agent.compile must be auto, on or off"),
        (config.agent.compile_window >= 1, f"agent.compile_window must be >= 1 step (got {config.agent.compile_window})"),
        (config.agent.world_model.terminal_weight > 0, f"agent.world_model.terminal_weight must be positive (1 = DreamerV3; got {config.agent.world_model.terminal_weight})"),
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


def _load_yaml(path: Path) -> Any:
    try:
        return OmegaConf.load(path)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config {_label(path)}: not valid YAML{where}: {getattr(error, 'problem', None) or _first_line(error)}") from None
    except OSError as error:  # also a scalar document: OmegaConf takes only a mapping or a list
        raise ConfigError(f"config {_label(path)}: expected a mapping of sections ({', '.join(_hints(Config))}): {_first_line(error)}") from None


def _parse_overrides(overrides: list[str] | tuple[str, ...]) -> Any:
    """The `key=value` overrides as a config; a value that is not YAML is named with its key."""
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except yaml.YAMLError as error:
        for override in overrides:
            try:
                OmegaConf.from_dotlist([override])
            except yaml.YAMLError as culprit:
                key, value = override.split("=", 1)
                raise ConfigError(f"override {key}: value {value!r} is not valid YAML ({getattr(culprit, 'problem', None) or _first_line(culprit)})") from None
        raise ConfigError(f"overrides: not valid YAML: {_first_line(error)}") from None


def _explain(error: Exception, sources: list[Any]) -> str:
    """One line for an OmegaConf error: the full dotted key and what it expects.

    `sources` are the configs merged over the schema: OmegaConf names no key for a section given a
    scalar (`run=3`) or a mapping given a list, so that key is found there.
    """
    key = _dotted_key(error) if isinstance(error, OmegaConfBaseException) else None
    if key is None:
        found = _find_wrong_container([_plain(s) for s in sources])
        if found is None:
            return _first_line(error)
        key, value = found
        return f"{key or 'the config'}: expected {_expected(_type_at(key))}, got {_show(value)}"
    parts = _key_parts(key)
    parent, _ = _unwrap_optional(_type_at(".".join(parts[:-1])) if len(parts) > 1 else Config)
    if isinstance(error, ConfigKeyError) and is_dataclass(parent) and parts[-1] not in _hints(parent):
        names = list(_hints(parent))
        close = difflib.get_close_matches(parts[-1], names, n=1)
        hint = f"; did you mean {'.'.join([*parts[:-1], close[0]])}?" if close else ""
        return f"unknown key {key}{hint} ({parent.__name__} has: {', '.join(names)})"
    expected = _type_at(key)
    if isinstance(error, ValidationError) and expected is not None:
        return f"{key}: expected {_expected(expected)}, got {_show(error.value)}"
    return f"{key}: {_first_line(error)}"


def _dotted_key(error: OmegaConfBaseException) -> str | None:
    """The full dotted key of the error; OmegaConf may give only the leaf, so the parents are put back."""
    if error.full_key in (None, ""):
        return None
    key = str(error.full_key)
    owner = error.object_type
    if owner is not None and is_dataclass(owner) and owner is not Config:
        parts = _key_parts(key)
        parent = _unwrap_optional(_type_at(".".join(parts[:-1])) if len(parts) > 1 else Config)[0]
        prefix = _section_paths().get(owner)
        if parent is not owner and prefix and error.key is not None:
            return f"{prefix}.{error.key}"
    return key


def _key_parts(key: str) -> list[str]:
    return re.findall(r"[^.\[\]]+", key)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@cache
def _section_paths() -> dict[type, str]:
    """Each dataclass of the schema and its dotted path (`ModelConfig`: `agent.model`), when used once."""
    paths: dict[type, str] = {}
    seen: set[type] = set()

    def walk(cls: type, prefix: str) -> None:
        for name, hint in _hints(cls).items():
            inner, _ = _unwrap_optional(hint)
            if is_dataclass(inner):
                path = f"{prefix}{name}"
                if inner in seen:
                    paths.pop(inner, None)
                else:
                    seen.add(inner)
                    paths[inner] = path
                walk(inner, f"{path}.")

    walk(Config, "")
    return paths


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """`int | None` -> (int, True)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return hint, False


def _type_at(key: str) -> Any:
    """The schema's annotation for a dotted key (`run.steps`: int), or None where the schema has none."""
    hint: Any = Config
    for part in _key_parts(key):
        hint, _ = _unwrap_optional(hint)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if is_dataclass(hint):
            if part not in _hints(hint):
                return None
            hint = _hints(hint)[part]
        elif origin is dict:
            hint = args[1] if args else Any
        elif origin is list:
            hint = args[0] if args else Any
        elif hint is Any:
            return Any
        else:
            return None
    return hint


_NOUNS = {bool: ("true or false", "true or false"), int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings")}


def _expected(hint: Any, plural: bool = False) -> str:
    """What a key of this annotation takes, in words: int -> "an integer"."""
    hint, optional = _unwrap_optional(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _NOUNS:
        text = _NOUNS[hint][plural]
    elif is_dataclass(hint):
        text = ("mappings" if plural else "a mapping") + f" ({hint.__name__} has: {', '.join(f.name for f in fields(hint))})"
    elif origin is dict:
        text = "mappings" if plural else "a mapping"
        if args and args[1] is not Any:
            text += f" of names to {_expected(args[1], plural=True)}"
    elif origin is list:
        text = "lists" if plural else "a list"
        if args and args[0] is not Any:
            text += f" of {_expected(args[0], plural=True)}"
    elif hint is Any or hint is None:
        text = "any values" if plural else "any value"
    else:
        text = getattr(hint, "__name__", str(hint))
    return f"{text} or null" if optional else text


def _show(value: Any) -> str:
    """A value as the user wrote it, on one short line."""
    if isinstance(value, Container):
        try:
            value = OmegaConf.to_container(value, resolve=False)
        except OmegaConfBaseException:
            pass
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(source: Any) -> Any:
    if isinstance(source, Container):
        try:
            return OmegaConf.to_container(source, resolve=False)
        except OmegaConfBaseException:
            return None
    return source


def _find_wrong_container(sources: list[Any]) -> tuple[str, Any] | None:
    """The first (dotted key, value) where the schema has a mapping (or list) but a source gives something else."""

    def walk(data: Any, hint: Any, prefix: str) -> tuple[str, Any] | None:
        hint, optional = _unwrap_optional(hint)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if data is None and optional:
            return None
        if is_dataclass(hint) or origin is dict:
            if not isinstance(data, dict):
                return (prefix, data)
            for name, value in data.items():
                inner = (_hints(hint).get(name) if is_dataclass(hint) else args[1] if args else Any)
                found = None if inner is None else walk(value, inner, f"{prefix}.{name}" if prefix else str(name))
                if found is not None:
                    return found
        elif origin is list and isinstance(data, dict):
            return (prefix, data)
        return None

    for source in sources:
        found = walk(source, Config, "")
        if found is not None:
            return found
    return None
