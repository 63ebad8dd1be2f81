"""Environment suites behind one call: `make_env("suite:task", seed, **options)`.

Suites: gym (any gymnasium id), atari (Atari100k protocol), catch (a small pixel task), crafter,
metaworld, minecraft (hunt-cow), fake-minecraft (hunt-cow on a stand-in for MineDojo).
Each imports its simulator only when an env of it is made.
"""
import os

# Headless MuJoCo rendering (Meta-World, gymnasium MuJoCo pixels): must be chosen before mujoco is
# imported anywhere in the process. A value set by the user (osmesa, glfw) is kept.
os.environ.setdefault("MUJOCO_GL", "egl")

from actors.envs.atari import ATARI100K_GAMES, human_normalized_score  # noqa: E402
from actors.envs.crafter_suite import crafter_score, crafter_success_rates  # noqa: E402
from actors.envs.errors import MissingDependencyError, UnknownEnvError  # noqa: E402
from actors.envs.registry import default_collection, env_slot, list_suites, make_env  # noqa: E402

__all__ = [
    "ATARI100K_GAMES",
    "MissingDependencyError",
    "UnknownEnvError",
    "crafter_score",
    "crafter_success_rates",
    "default_collection",
    "env_slot",
    "human_normalized_score",
    "list_suites",
    "make_env",
]
