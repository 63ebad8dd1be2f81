"""`harmonyray report DIR`: runs found by their files, grouped by the settings that differ, statistics
over seeds, a CSV, a Markdown table and learning curves. The runs are written by the run's own
writers (make_logdir's config.yaml, MetricsLogger's metrics.jsonl)."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from system.config import WandbConfig, load_config
from system.driver import make_logdir
from system.metrics import MetricsLogger
from system.report import find_runs, group_runs, setting_keys, write_report

# final greedy returns per (harmony mode, seed); each run evaluates at 1k, 2k and 3k env steps
FINAL = {("rectified", 0): 300.0, ("rectified", 1): 340.0, ("rectified", 2): 500.0, ("off", 0): 100.0, ("off", 1): 140.0, ("off", 2): 120.0}


def write_run(root: Path, mode: str, seed: int) -> None:
    config = load_config("cartpole", [f"agent.harmony.mode={mode}", f"run.seed={seed}", "wandb.mode=disabled"])
    logdir = make_logdir(config, str(root / f"{mode}-{seed}"))
    logger = MetricsLogger(logdir, config.wandb, {}, name=logdir.name)
    final = FINAL[(mode, seed)]
    for step, value in ((1000, final / 4), (2000, final * 1.2), (3000, final)):  # the best is not the last
        logger.log(step - 500, {"episode/return": 1.0})
        logger.log(step, {"eval/return": value})
    logger.close()


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    for mode, seed in FINAL:
        write_run(tmp_path, mode, seed)
    (tmp_path / "not-a-run").mkdir()  # ignored: no config.yaml
    return tmp_path


def test_runs_are_grouped_by_the_settings_that_differ_and_seeds_pooled(sweep: Path) -> None:
    runs = find_runs(sweep)
    assert len(runs) == 6
    assert setting_keys(runs) == ["agent.harmony.mode"], "the seed and the logdir are not settings"
    groups = group_runs(runs, setting_keys(runs))
    assert sorted(groups) == ["agent.harmony.mode=off", "agent.harmony.mode=rectified"]
    assert all(len(g) == 3 for g in groups.values())


def test_report_statistics_table_and_curves(sweep: Path) -> None:
    rows = {(r.group, r.metric): r for r in write_report(sweep)}
    final = rows[("agent.harmony.mode=rectified", "final eval/return")]
    values = [300.0, 340.0, 500.0]
    assert final.seeds == 3 and final.mean == pytest.approx(np.mean(values)) and final.median == 340.0
    assert final.iqm == pytest.approx(stats.trim_mean(values, 0.25))
    assert 300.0 <= final.low < final.mean < final.high <= 500.0, "a bootstrap interval of the mean, within the seeds' range"
    best = rows[("agent.harmony.mode=off", "best eval/return")]
    assert best.mean == pytest.approx(np.mean([120.0, 168.0, 144.0]))
    with open(sweep / "report.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and {row["group"] for row in table} == {"agent.harmony.mode=off", "agent.harmony.mode=rectified"}
    markdown = (sweep / "report.md").read_text()
    assert "| agent.harmony.mode=rectified | final eval/return | 3 | 380.00 | 340.00 |" in markdown
    with Image.open(sweep / "curves.png") as image:
        assert image.size[0] > 300 and image.size[1] > 200


def test_cli_report_prints_the_table_and_a_folder_without_runs_is_one_line(sweep: Path, tmp_path_factory) -> None:
    cli = [sys.executable, "-m", "system.cli", "report"]
    done = subprocess.run([*cli, str(sweep)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| agent.harmony.mode=off | final eval/return | 3 | 120.00 |" in done.stdout
    empty = tmp_path_factory.mktemp("empty")
    failed = subprocess.run([*cli, str(empty)], capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and failed.stderr.strip().count("\n") == 0 and "holds no runs" in failed.stderr


def test_runs_without_evaluations_say_so_instead_of_an_empty_table(tmp_path: Path) -> None:
    config = load_config("cartpole", ["wandb.mode=disabled"])
    logger = MetricsLogger(make_logdir(config, str(tmp_path / "run")), config.wandb, {}, name="run")
    logger.log(500, {"episode/return": 1.0})  # training rows only: the run ended before any evaluation
    logger.close()
    assert write_report(tmp_path) == []
    assert "No run has a greedy evaluation yet" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "curves.png").is_file()


def test_learnt_sigmas_are_reported_against_their_equilibrium(tmp_path: Path) -> None:
    """Rectified runs log sigma and loss per task: the report pools the last 20 % of each run's
    steps and compares the mean sigma with sigma* of the mean loss; runs without sigmas add nothing."""
    for mode, seed in (("rectified", 0), ("rectified", 1), ("off", 0)):
        config = load_config("cartpole", [f"agent.harmony.mode={mode}", f"run.seed={seed}", "wandb.mode=disabled"])
        logger = MetricsLogger(make_logdir(config, str(tmp_path / f"{mode}-{seed}")), config.wandb, {}, name=f"{mode}-{seed}")
        for step in range(100, 1001, 100):
            learnt = {"harmony/reward/sigma": 0.1 * step / 100 + seed, "harmony/reward/loss": 2.0 + seed} if mode == "rectified" else {}
            logger.log(step, {"harmony/observation/loss": 10.0, "harmony/observation/weighted": 10.0, **learnt})
        logger.log(1000, {"eval/return": 1.0})
        logger.close()
    write_report(tmp_path)
    with open(tmp_path / "sigmas.csv") as f:
        (row,) = list(csv.DictReader(f))  # the reward task of the rectified group only
    assert (row["group"], row["task"]) == ("agent.harmony.mode=rectified", "reward")
    sigmas = [0.1 * step / 100 + seed for seed in (0, 1) for step in (800, 900, 1000)]  # steps >= 80 % of 1,000
    loss = 2.5
    equilibrium = (loss + np.sqrt(loss**2 + 4 * loss)) / 2
    assert float(row["loss"]) == pytest.approx(loss) and float(row["sigma"]) == pytest.approx(np.mean(sigmas), rel=1e-5)
    assert float(row["equilibrium"]) == pytest.approx(equilibrium, rel=1e-5)
    assert float(row["ratio"]) == pytest.approx(np.mean(sigmas) / equilibrium, rel=1e-5)
    assert f"| agent.harmony.mode=rectified | reward | 2.5 | {np.mean(sigmas):.4g} | {equilibrium:.4g} |" in (tmp_path / "report.md").read_text()
    with Image.open(tmp_path / "sigmas.png") as image:
        assert image.size[0] > 300


def test_runs_without_learnt_sigmas_write_no_sigma_table(sweep: Path) -> None:
    write_report(sweep)
    assert not (sweep / "sigmas.csv").exists() and not (sweep / "sigmas.png").exists()
    assert "sigma*" not in (sweep / "report.md").read_text()


def test_groups_name_null_and_booleans_as_overrides_write_them(tmp_path: Path) -> None:
    for lr, seed in ((None, 0), (0.01, 0)):
        config = load_config("cartpole", ["agent.harmony.mode=rectified", f"agent.harmony.lr={'null' if lr is None else lr}", f"run.seed={seed}", "wandb.mode=disabled"])
        logger = MetricsLogger(make_logdir(config, str(tmp_path / f"{lr}-{seed}")), config.wandb, {}, name="run")
        logger.log(1000, {"eval/return": 1.0})
        logger.close()
    runs = find_runs(tmp_path)
    assert sorted(group_runs(runs, setting_keys(runs))) == ["agent.harmony.lr=0.01", "agent.harmony.lr=null"]
