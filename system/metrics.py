"""Metrics sinks: LOGDIR/metrics.jsonl always, Weights & Biases when enabled.

One call, one row: `log(step, values)` writes a JSON object with `step` to the file and the same
values to W&B. W&B defaults to offline unless an API key is in the environment; the key itself is
read by wandb from the environment or its netrc and never passes through our code or logs.
"""
from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

from system.config import WandbConfig

RUN_ID_FILE = "wandb_run_id"
STEP_KEY = "env_step"


def wandb_mode(config: WandbConfig) -> str:
    if config.mode != "auto":
        return config.mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class MetricsLogger:
    def __init__(self, logdir: Path, config: WandbConfig, run_config: dict[str, Any], name: str):
        self.path = Path(logdir) / "metrics.jsonl"
        _drop_partial_row(self.path)
        self._file = self.path.open("a", buffering=1)
        self._wandb = None
        mode = wandb_mode(config)
        if mode != "disabled":
            import wandb

            id_file = Path(logdir) / RUN_ID_FILE
            run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
            id_file.write_text(run_id)
            self._wandb = wandb.init(
                project=config.project, entity=config.entity, group=config.group, tags=list(config.tags) or None, name=name,
                id=run_id, resume="allow", mode=mode, dir=str(logdir), config=run_config,
            )
            # Rows are keyed by env step as a field, not W&B's own step: W&B drops a row whose step
            # is below one already logged, and an evaluation is logged at the (earlier) step it
            # started at, after the training rows that followed it.
            self._wandb.define_metric(STEP_KEY)
            self._wandb.define_metric("*", step_metric=STEP_KEY)

    @property
    def wandb_dir(self) -> str | None:
        return self._wandb.dir if self._wandb is not None else None

    def log(self, step: int, values: dict[str, Any]) -> None:
        row = {"step": int(step), **{k: _clean(v) for k, v in values.items()}}
        self._file.write(json.dumps(row) + "\n")
        if self._wandb is not None:
            self._wandb.log({**{k: v for k, v in row.items() if k != "step" and v is not None}, STEP_KEY: int(step)})

    def log_media(self, step: int, key: str, media: Any) -> None:
        if self._wandb is not None:
            self._wandb.log({key: media, STEP_KEY: int(step)})

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every line stays parseable."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(logdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete rows of a run's metrics.jsonl: who watches a live run can read part of the row
    being appended, a last line without its newline."""
    path = Path(logdir) / "metrics.jsonl"
    if not path.exists():
        return []
    *complete, _partial = path.read_text().split("\n")
    return [json.loads(line) for line in complete if line.strip()]


def _drop_partial_row(path: Path) -> None:
    """Cut a last row without its newline (a process killed while writing it), so the rows a
    resumed run appends start on a line of their own."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as file:
        file.seek(-1, os.SEEK_END)
        if file.read(1) != b"\n":  # rare: only then is the whole file read
            file.seek(0)
            file.truncate(file.read().rfind(b"\n") + 1)


def best_evaluation(logdir: str | os.PathLike) -> tuple[float, int] | None:
    """(return, env step) of the run's best greedy evaluation so far, across resumes (the earliest
    of equals): a policy can get worse after its best, so the last evaluation alone undersells a run."""
    evals = [(row["eval/return"], row["step"]) for row in read_metrics(logdir) if row.get("eval/return") is not None]
    return max(evals, key=lambda e: (e[0], -e[1])) if evals else None
