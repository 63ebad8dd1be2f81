"""The minecraft preset end to end on the fake `minedojo` package (tests/fakes): the real
`minecraft:hunt-cow` adapter, asynchronous runners with two envs each on a node that offers the
`minecraft` resource (conftest's cluster), the learner and the evaluator, with a tiny model."""
from __future__ import annotations

import sys

import pytest
from conftest import FAKES
from test_presets import TINY

from system.config import load_config
from system.driver import train
from system.metrics import read_metrics


@pytest.fixture
def fake_minedojo(free_ray):
    """`import minedojo` finds the fake in this process too (the driver builds the env once), on
    the shared cluster with its CPUs free (conftest's `free_ray`)."""
    sys.path.insert(0, FAKES)
    yield
    sys.path.remove(FAKES)
    for name in [name for name in sys.modules if name.partition(".")[0] == "minedojo"]:
        del sys.modules[name]  # other tests expect it missing


def test_minecraft_preset_runs_on_the_fake(fake_minedojo, tmp_path) -> None:
    # 300 steps: the limiter lets the runner collect ~250 (prefill, tolerance, chunks in flight)
    # before the learner's 2nd update publishes weights; past that it needs ~8 updates, so it is
    # still collecting (and polling the board) after the first weights are out
    config = load_config("minecraft", [*TINY, "runners.envs=2", "env.options.length=60", "run.eval_video=false", "run.steps=300"])
    assert config.runners.resources_per_env == {"minecraft": 1.0} and config.runners.collection == "auto"
    summary = train(config, str(tmp_path / "run"), progress=False)
    assert summary.env_steps >= 200 and summary.updates > 0 and summary.eval_return is not None
    rows = [row for row in read_metrics(tmp_path / "run") if "runner/rss_mb_max" in row]
    assert rows and rows[-1]["runner/rss_mb_max"] > 100, "the runner's memory is reported"
    assert rows[-1]["runner/min_weight_version"] > 0, "the runner acts with published weights"
