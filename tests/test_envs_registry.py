"""make_env's naming, option checking and error messages, and the package's import boundaries."""
from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

from actors.envs import MissingDependencyError, UnknownEnvError, list_suites, make_env
from actors.envs.errors import import_optional

ENVS_DIR = pathlib.Path(__file__).resolve().parents[1] / "actors" / "envs"


def test_list_suites() -> None:
    assert list_suites() == ["atari", "catch", "crafter", "fake-minecraft", "gym", "metaworld", "minecraft"]


def test_unknown_suite_lists_valid_suites() -> None:
    suites = "atari, catch, crafter, fake-minecraft, gym, metaworld, minecraft"
    with pytest.raises(UnknownEnvError, match=f"unknown suite 'dmc'.*{suites}"):
        make_env("dmc:walker_walk")


@pytest.mark.parametrize("name", ["CartPole-v1", "gym:", ":CartPole-v1"])
def test_name_without_suite_or_task(name: str) -> None:
    with pytest.raises(UnknownEnvError, match="must be 'suite:task'|unknown suite"):
        make_env(name)


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("gym:NoSuchEnv-v0", "unknown gymnasium id 'NoSuchEnv-v0'.*pprint_registry"),
        ("atari:NoSuchGame", "unknown Atari game 'NoSuchGame'.*get_all_rom_ids"),
        ("catch:big", "unknown catch task 'big'.*ROWSxCOLUMNS, e.g. catch:8x8"),
        ("crafter:hard", "unknown Crafter task 'hard'.*crafter:reward, crafter:noreward"),
        ("metaworld:reach-v9", "unknown Meta-World task 'reach-v9'.*ALL_V3_ENVIRONMENTS"),
        ("minecraft:hunt-pig", "unknown Minecraft task 'hunt-pig'.*minecraft:hunt-cow"),
        ("fake-minecraft:hunt-pig", "unknown Minecraft task 'hunt-pig'.*fake-minecraft:hunt-cow"),
    ],
)
def test_unknown_task_says_how_to_find_tasks(name: str, pattern: str) -> None:
    with pytest.raises(UnknownEnvError, match=pattern) as error:
        make_env(name)
    assert isinstance(error.value, ValueError)
    assert "\n" not in str(error.value)


def test_unknown_option_is_named() -> None:
    with pytest.raises(TypeError, match=r"gym:CartPole-v1: unknown option\(s\) 'pixel'.*pixels"):
        make_env("gym:CartPole-v1", pixel=True)


def test_bad_option_value() -> None:
    with pytest.raises(ValueError, match="action_repeat must be >= 1"):
        make_env("atari:Pong", action_repeat=0)


def test_missing_dependency_names_the_extra() -> None:
    with pytest.raises(MissingDependencyError) as error:
        import_optional("harmonyray_no_such_module", env="atari:Pong", package="ale-py", extra="atari")
    assert str(error.value) == "atari:Pong needs ale-py: pip install 'harmonyray[atari]'"
    assert isinstance(error.value, ImportError)


def test_importing_the_package_loads_no_simulator() -> None:
    code = (
        "import sys, actors.envs; "
        "print(sorted(m for m in ('ale_py', 'crafter', 'metaworld', 'mujoco', 'cv2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_envs_do_not_import_other_services() -> None:
    pattern = re.compile(r"^\s*(from|import)\s+(learner|replay|system)\b", re.MULTILINE)
    offenders = [path.name for path in ENVS_DIR.glob("*.py") if pattern.search(path.read_text())]
    assert offenders == []
