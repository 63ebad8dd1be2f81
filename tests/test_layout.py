"""The top-level layout is the design: what each folder may import (README.md, "Layout")."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("actors", "learner", "replay", "system")

# What each package may import from the others (a module, or a package and all it holds).
ALLOWED = {
    "learner": set(),  # models, losses and the Learner actor: nothing of environments, replay or the run
    "replay": set(),  # chunks and batches of arrays: nothing of models or environments
    # runners act with the policy-only agent and insert chunks through the replay client
    "actors": {"learner.policy_agent", "learner.config", "learner.spaces", "replay"},
    "system": {"actors", "learner", "replay"},  # composes them: the only place that knows the whole
}
FORBIDDEN_THIRD_PARTY = {"replay": {"torch"}, "actors": set(), "learner": set(), "system": set()}


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def allowed(package: str, module: str) -> bool:
    return any(module == rule or module.startswith(rule + ".") for rule in ALLOWED[package] | {package})


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_the_layout_allows(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in imports_of(path):
            top = module.split(".")[0]
            if top in PACKAGES and not allowed(package, module):
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
            if top in FORBIDDEN_THIRD_PARTY[package]:
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from system.driver import train\n    import learner.agent\n")
    found = imports_of(module)
    assert found == {"system.driver", "learner.agent"}
    assert not allowed("actors", "system.driver") and not allowed("actors", "learner.agent")
    assert allowed("actors", "learner.policy_agent") and allowed("actors", "replay.chunk")


def run_fresh_python(code: str) -> None:
    """Run `code` in a new interpreter in the project root (nothing imported yet): it must exit 0."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_model_and_the_train_step_benchmark_import_with_torch_and_numpy_alone() -> None:
    """bench/gpu.sh runs bench/train_step.py on GPU machines that have torch and numpy only."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.partition('.')[0] in ('ray', 'gymnasium', 'omegaconf', 'yaml', 'scipy', 'wandb', 'matplotlib'):\n"
        "            raise ImportError(f'{name} is not on a GPU machine')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import learner.agent, learner.distributed, learner.policy_agent, bench.train_step\n"
    )
    run_fresh_python(code)


def test_the_actor_processes_start_without_importing_the_compiler() -> None:
    """Every runner, shard and learner is a process of its own: importing Inductor and Dynamo
    (~1.7 s of CPU) belongs to the first compile, not to each process's start."""
    code = (
        "import sys\n"
        "import actors.runner, actors.evaluator, learner.learner_actor, replay.shard, system.driver\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('torch._inductor', 'torch._dynamo')))\n"
        "assert not loaded, loaded[:5]\n"
    )
    run_fresh_python(code)


def test_the_command_line_answers_config_report_and_bad_input_without_torch_or_ray() -> None:
    """`harmonyray config`, `report` and a bad preset answer without loading torch, Ray or the
    environment suites (seconds of start-up): those load only for the commands that run."""
    code = (
        "import contextlib, io, sys, tempfile\n"
        "from system.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:\n"
        "    assert main(['config']) == 0\n"
        "    assert main(['train', '--config', 'no-such-preset']) == 2\n"
        "    assert main(['report', tempfile.mkdtemp()]) == 2\n"
        "assert 'unknown config' in err.getvalue() and 'holds no runs' in err.getvalue(), err.getvalue()\n"
        "loaded = sorted(m for m in ('torch', 'ray', 'gymnasium') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    run_fresh_python(code)


def test_the_tests_run_beside_the_ray_tests_start_neither_ray_nor_a_run() -> None:
    """`make test` runs the modules of conftest.WITHOUT_RAY in a second xdist worker, next to the
    Ray tests: a Ray cluster or a run started there would double the load the Ray tests see."""
    from conftest import WITHOUT_RAY

    starts_ray = ("ray", "system.driver", "system.cli", "system.sweep", "system.launch", "replay.service")
    for name in WITHOUT_RAY:
        found = [m for m in imports_of(ROOT / "tests" / name) if any(m == s or m.startswith(s + ".") for s in starts_ray)]
        assert not found, f"tests/{name} imports {found}: move it out of WITHOUT_RAY in tests/conftest.py"


def test_make_test_keeps_the_ray_tests_on_one_worker(request: pytest.FixtureRequest) -> None:
    """`make test` (`--dist loadgroup`) relies on pytest-xdist reading conftest's groups: when it
    cannot (pytest 9.2 with pytest-xdist 3.8 drops the group from the node id), the Ray tests
    spread over both workers, each starting its own Ray cluster on the same 2 cores."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("runs under make test's `--dist loadgroup` workers")
    assert request.node.nodeid.endswith("@local"), (
        f"pytest-xdist ignored the test groups ({request.node.nodeid}): install the pytest that pyproject.toml pins (pip install -e '.[dev]')"
    )
