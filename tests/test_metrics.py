"""Metrics rows reach metrics.jsonl and W&B (offline), in whatever step order they come."""
from __future__ import annotations

import time
from pathlib import Path

from system.config import WandbConfig
from system.metrics import RUN_ID_FILE, MetricsLogger, best_evaluation, read_metrics


def test_an_evaluation_logged_after_later_training_rows_still_reaches_wandb_and_a_resumed_run_the_same_run(tmp_path: Path) -> None:
    # The driver logs a periodic evaluation at the env step it started at, after the training
    # rows logged while it ran: W&B drops rows whose own step goes backwards.
    wandb = WandbConfig(mode="offline", group="sweep-a", tags=["agent.harmony.mode=off"])  # as a sweep's trial sets them
    logger = MetricsLogger(tmp_path, wandb, {"preset": "test"}, name="test")
    logger.log(1000, {"episode/return": 20.0})
    logger.log(500, {"eval/return": 123.5})
    logger.log(1500, {"episode/return": float("nan")})
    logger.close()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1000, 500, 1500]
    assert rows[1]["eval/return"] == 123.5 and rows[2]["episode/return"] is None
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + 30  # wandb's service process may still be writing the file
    while b"eval/return" not in (written := run_file.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b"eval/return" in written and written.count(b"env_step") >= 3
    assert b"sweep-a" in written and b"agent.harmony.mode=off" in written, "the run's W&B group and tags"
    run_id = (tmp_path / RUN_ID_FILE).read_text().strip()
    resumed = MetricsLogger(tmp_path, wandb, {"preset": "test"}, name="test")  # what a resumed run does
    resumed.log(2000, {"episode/return": 30.0})
    resumed.close()
    assert (tmp_path / RUN_ID_FILE).read_text().strip() == run_id
    # one folder per start, named by the second it started (W&B appends -1 to a second folder of
    # the same second); the run file inside is named by the run id
    files = {f.name for f in tmp_path.glob("wandb/offline-run-*/run-*.wandb")}
    assert files == {f"run-{run_id}.wandb"}, "the resumed run logs to the same W&B run id"


def test_best_evaluation_spans_the_whole_file_and_keeps_the_earliest_of_equals(tmp_path: Path) -> None:
    assert best_evaluation(tmp_path) is None  # no run yet
    logger = MetricsLogger(tmp_path, WandbConfig(mode="disabled"), {"preset": "test"}, name="test")
    for step, value in [(100, 20.0), (200, 500.0), (300, 120.0), (400, 500.0)]:
        logger.log(step, {"eval/return": value, "eval/length": value})
        logger.log(step + 50, {"episode/return": 999.0})  # training returns are not evaluations
    logger.close()
    assert best_evaluation(tmp_path) == (500.0, 200)
    resumed = MetricsLogger(tmp_path, WandbConfig(mode="disabled"), {"preset": "test"}, name="test")
    resumed.log(500, {"eval/return": 501.0})  # a resumed run appends to the same file
    resumed.close()
    assert best_evaluation(tmp_path) == (501.0, 500)


def test_a_row_being_written_is_not_read_and_a_resumed_run_cuts_one_left_by_a_kill(tmp_path: Path) -> None:
    """A watcher of a live run reads only complete rows; a row a killed process left half-written
    is cut when the run resumes, so the rows it appends stay parseable."""
    logger = MetricsLogger(tmp_path, WandbConfig(mode="disabled"), {"preset": "test"}, name="test")
    logger.log(100, {"episode/return": 10.0})
    logger.close()
    with (tmp_path / "metrics.jsonl").open("a") as file:
        file.write('{"step": 200, "episode/ret')  # the writer is mid-row (or was killed there)
    assert [row["step"] for row in read_metrics(tmp_path)] == [100]
    resumed = MetricsLogger(tmp_path, WandbConfig(mode="disabled"), {"preset": "test"}, name="test")
    resumed.log(300, {"episode/return": 30.0})
    resumed.close()
    assert [row["step"] for row in read_metrics(tmp_path)] == [100, 300]
