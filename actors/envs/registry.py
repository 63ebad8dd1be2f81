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
    "crafter": "actors.envs.crafter_suite",
    "gym": "actors.envs.gym_suite",
    "metaworld": "actors.envs.metaworld_suite",
    "minecraft": "actors.envs.minecraft",
}


def list_suites() -> list[str]:
    """The suite prefixes `make_env` accepts, sorted."""
    return sorted(_SUITES)


def make_env(name: str, seed: int = 0, **options: object) -> gymnasium.Env:
    """Build the environment `name` ("suite:task"), seeded by `seed` at its first reset.

    Every env observes a `gymnasium.spaces.Dict` (`image` uint8 HxWxC and/or `vector` float32),
    acts through Discrete, MultiDiscrete or Box[-1, 1], separates `terminated` from `truncated`,
    and puts `info["episode_stats"]` (a dict of floats) on the step that ends an episode.
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
    return factory(task, seed=seed, **options)


def _check_options(name: str, factory: Callable[..., gymnasium.Env], options: dict) -> None:
    """Reject misspelt options by name before any simulator starts."""
    valid = [
        param.name
        for param in inspect.signature(factory).parameters.values()
        if param.kind is inspect.Parameter.KEYWORD_ONLY and param.name != "seed"
    ]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(
            f"{name}: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(valid) or 'none'}"
        )
