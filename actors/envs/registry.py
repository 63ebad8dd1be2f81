"""One entry point, `make_env("suite:task")`, so configs name environments as plain strings.

Suite modules are imported on first use: each pulls in its own simulator (ALE, MuJoCo, Crafter,
MineDojo), and a machine that runs one suite need not install the others.
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

import gymnasium

from actors.envs.errors import UnknownEnvError

# suite name -> module whose `make(task, *, seed, **options)` builds the env
_SUITES: dict[str, str] = {
    "atari": "actors.envs.atari",
    "catch": "actors.envs.catch",  # a pixel toy task with no simulator to install
    "crafter": "actors.envs.crafter_suite",
    "fake-minecraft": "actors.envs.fake_minecraft",  # hunt-cow on a MineDojo stand-in (no Minecraft)
    "gym": "actors.envs.gym_suite",
    "metaworld": "actors.envs.metaworld_suite",
    "minecraft": "actors.envs.minecraft",
}


# How runners collect from each suite when `runners.collection` is auto (actors/async_collector.py):
# async for simulators whose steps take tens of milliseconds and whose resets take seconds; lockstep,
# the default, for fast in-process envs, where one batched policy call per vector step is cheapest.
_ASYNC_SUITES = ("minecraft", "fake-minecraft")


def default_collection(name: str) -> str:
    """`lockstep` or `async`: how runners best collect from env `name` ("suite:task")."""
    return "async" if name.partition(":")[0] in _ASYNC_SUITES else "lockstep"


def list_suites() -> list[str]:
    """The suite prefixes `make_env` accepts, sorted."""
    return sorted(_SUITES)


def env_slot(runner: int, envs_per_runner: int, env: int) -> int:
    """The index of env `env` of runner `runner` among all of a run's envs (runner x envs + env).

    Runners pass it to `make_env` as `slot`; the evaluator takes the slot after the last runner's.
    """
    if runner < 0 or envs_per_runner < 1 or not 0 <= env < envs_per_runner:
        raise ValueError(f"no env slot for runner {runner}, env {env} of {envs_per_runner}")
    return runner * envs_per_runner + env


def make_env(name: str, seed: int = 0, *, slot: int | None = None, **options: object) -> gymnasium.Env:
    """Build the environment `name` ("suite:task"), seeded by `seed` at its first reset.

    Every env observes a `gymnasium.spaces.Dict` (`image` uint8 HxWxC and/or `vector` float32),
    acts through Discrete, MultiDiscrete or Box[-1, 1], separates `terminated` from `truncated`,
    and puts `info["episode_stats"]` (a dict of floats) on the step that ends an episode.

    `slot` (see `env_slot`) tells parallel envs apart: suites that start a server per env
    (MineDojo) take their `instance`, hence their ports, from it, offset by a user-given `instance`.
    """
    suite, sep, task = name.partition(":")
    if not sep or not task:
        raise UnknownEnvError(
            f"env name {name!r} must be 'suite:task' (e.g. gym:CartPole-v1); "
            f"suites: {', '.join(list_suites())}"
        )
    if suite not in _SUITES:
        raise UnknownEnvError(
            f"unknown suite {suite!r} in {name!r}; suites: {', '.join(list_suites())}"
        )
    factory: Callable[..., gymnasium.Env] = importlib.import_module(_SUITES[suite]).make
    _check_options(name, factory, options)
    return factory(task, seed=seed, **with_slot(factory, options, slot))


def with_slot(factory: Callable[..., gymnasium.Env], options: dict, slot: int | None) -> dict:
    """`options` with `instance` = its given value (an offset, default 0) + `slot`, for factories
    that take an `instance`; other suites need no slot and get `options` unchanged."""
    if slot is None or "instance" not in _keyword_options(factory):
        return options
    return {**options, "instance": int(options.get("instance", 0)) + slot}


def _check_options(name: str, factory: Callable[..., gymnasium.Env], options: dict) -> None:
    """Reject misspelt options by name before any simulator starts."""
    valid = _keyword_options(factory)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(
            f"{name}: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(valid) or 'none'}"
        )


def _keyword_options(factory: Callable[..., gymnasium.Env]) -> list[str]:
    return [
        param.name
        for param in inspect.signature(factory).parameters.values()
        if param.kind is inspect.Parameter.KEYWORD_ONLY and param.name != "seed"
    ]
