"""Results of many runs as a researcher reads them: one row per setting, statistics over seeds.

`harmonyray report DIR` finds every run below DIR (a folder with config.yaml and metrics.jsonl),
groups the runs by the config keys whose values differ between them (the seed and the logdir
aside: runs that differ only in those are seeds of one setting), and writes, into DIR:

- report.csv and report.md: per group and metric, the number of seeds, mean, median, IQM (the mean
  of the middle 50 %) and a 95 % percentile-bootstrap interval of the mean (scipy.stats), for the
  final and the best greedy evaluation return and, where the env reports one, its own score
  (Atari's human-normalised score, Crafter's score, Meta-World's success rate);
- curves.png: per group, the mean evaluation return against env steps, with the same interval
  over seeds at each step (runs are put on a common grid of steps by linear interpolation);
- where runs learn harmonizer sigmas (`agent.harmony.mode: rectified`), sigmas.csv, a table in
  report.md and sigmas.png: per group and task, the mean sigma over the last 20 % of each run's
  steps against the closed-form equilibrium of the mean loss there, sigma* = (L + sqrt(L^2 + 4L)) / 2
  (a ratio near 1: the sigmas had settled; far below: the run ended before they could).
"""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import stats

from system.config import ConfigError
from system.metrics import read_metrics

RETURN = "eval/return"
ENV_SCORES = ("eval/human_normalized_score", "eval/crafter_score", "eval/success")  # where the env defines one
NOT_A_SETTING = ("run.seed", "run.logdir", "wandb.group", "wandb.tags")  # runs that differ only here are seeds of one setting
CONFIDENCE = 0.95
RESAMPLES = 2000
CURVE_POINTS = 50
SIGMA = re.compile(r"harmony/(\w+)/sigma")  # a learnt sigma; its task's loss is harmony/<task>/loss
SETTLED_FRACTION = 0.2  # sigmas are judged over this last share of a run's steps


@dataclass
class RunResult:
    logdir: Path
    config: dict[str, Any]  # flattened: dotted key -> value
    evaluations: dict[str, list[tuple[int, float]]]  # metric -> [(env step, value)], in step order
    harmony: list[dict[str, float]] = field(default_factory=list)  # rows with a learnt sigma: step, harmony/<task>/sigma and /loss

    def final(self, metric: str) -> float | None:
        points = self.evaluations.get(metric)
        return points[-1][1] if points else None

    def best(self, metric: str) -> float | None:
        points = self.evaluations.get(metric)
        return max(v for _, v in points) if points else None


@dataclass
class Summary:
    group: str  # "key=value, key=value" (or "all runs")
    metric: str  # e.g. "final eval/return"
    seeds: int
    mean: float
    median: float
    iqm: float
    low: float  # the bootstrap interval of the mean
    high: float


def find_runs(root: Path) -> list[RunResult]:
    """Every run below `root`, sorted by path."""
    runs = []
    for config_file in sorted(Path(root).rglob("config.yaml")):
        logdir = config_file.parent
        if not (logdir / "metrics.jsonl").is_file():
            continue
        config = flatten(yaml.safe_load(config_file.read_text()) or {})
        evaluations: dict[str, list[tuple[int, float]]] = {}
        harmony = []
        for row in read_metrics(logdir):
            for metric in (RETURN, *ENV_SCORES):
                if row.get(metric) is not None:
                    evaluations.setdefault(metric, []).append((int(row["step"]), float(row[metric])))
            if any(SIGMA.fullmatch(key) for key in row):
                harmony.append({key: float(value) for key, value in row.items() if key == "step" or key.startswith("harmony/")})
        for points in evaluations.values():
            points.sort(key=lambda p: p[0])
        runs.append(RunResult(logdir, config, evaluations, sorted(harmony, key=lambda r: r["step"])))
    return runs


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def setting_keys(runs: list[RunResult]) -> list[str]:
    """The config keys whose values differ between runs, the seed and the logdir aside."""
    keys = sorted({k for run in runs for k in run.config})
    return [k for k in keys if k not in NOT_A_SETTING and len({repr(run.config.get(k)) for run in runs}) > 1]


def group_runs(runs: list[RunResult], keys: list[str]) -> dict[str, list[RunResult]]:
    groups: dict[str, list[RunResult]] = {}
    for run in runs:
        name = ", ".join(f"{k}={yaml_value(run.config.get(k))}" for k in keys) or "all runs"
        groups.setdefault(name, []).append(run)
    return groups


def yaml_value(value: Any) -> str:
    """A config value as an override writes it (null, not None; true, not True)."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def summarize(values: list[float], group: str, metric: str) -> Summary:
    data = np.asarray(values, float)
    if len(data) > 1 and np.ptp(data) > 0:
        interval = stats.bootstrap((data,), np.mean, confidence_level=CONFIDENCE, n_resamples=RESAMPLES,
                                   method="percentile", rng=np.random.default_rng(0)).confidence_interval
        low, high = float(interval.low), float(interval.high)
    else:  # one seed, or all alike: no spread to resample
        low = high = float(data.mean())
    return Summary(group, metric, len(data), float(data.mean()), float(np.median(data)), float(stats.trim_mean(data, 0.25)), low, high)


def summaries(groups: dict[str, list[RunResult]]) -> list[Summary]:
    out = []
    for group, runs in groups.items():
        for metric in (RETURN, *ENV_SCORES):
            for kind, value_of in (("final", RunResult.final), ("best", RunResult.best)):
                values = [v for run in runs if (v := value_of(run, metric)) is not None]
                if values:
                    out.append(summarize(values, group, f"{kind} {metric}"))
    return out


@dataclass
class SettledSigma:
    group: str
    task: str
    loss: float  # mean task loss over the runs' last steps
    sigma: float  # mean sigma there
    equilibrium: float  # sigma* of the mean loss

    @property
    def ratio(self) -> float:
        return self.sigma / self.equilibrium


def settled_sigmas(traces: Iterable[list[dict[str, float]]], group: str = "", fraction: float = SETTLED_FRACTION) -> list[SettledSigma]:
    """Per task, pooled over runs: mean sigma and loss over the last `fraction` of each run's steps
    (`traces`: per run, its metric rows with `step`, harmony/<task>/sigma and /loss), and sigma*."""
    from learner.harmonizer import rectified_equilibrium  # torch loads only for runs that have sigmas

    sigmas: dict[str, list[float]] = {}
    losses: dict[str, list[float]] = {}
    for rows in traces:
        if not rows:
            continue
        cut = max(r["step"] for r in rows) * (1 - fraction)
        for row in (r for r in rows if r["step"] >= cut):
            for key, value in row.items():
                match = SIGMA.fullmatch(key)
                if match and f"harmony/{match[1]}/loss" in row:
                    sigmas.setdefault(match[1], []).append(value)
                    losses.setdefault(match[1], []).append(row[f"harmony/{match[1]}/loss"])
    return [SettledSigma(group, task, float(np.mean(losses[task])), float(np.mean(sigmas[task])),
                         rectified_equilibrium(float(np.mean(losses[task])))) for task in sigmas]


def write_report(root: Path) -> list[Summary]:
    """Write report.csv, report.md and curves.png into `root`; the summaries, for printing."""
    runs = find_runs(root)
    if not runs:
        raise ConfigError(f"{root} holds no runs (folders with config.yaml and metrics.jsonl): give a sweep's or a runs folder")
    groups = group_runs(runs, setting_keys(runs))
    rows = summaries(groups)
    sigmas = [s for group, members in groups.items() for s in settled_sigmas((run.harmony for run in members), group)]
    (root / "report.csv").write_text(to_csv(rows))
    (root / "report.md").write_text(to_markdown(rows, len(runs)) + sigmas_markdown(sigmas))
    plot_curves(groups, root / "curves.png")
    if sigmas:
        (root / "sigmas.csv").write_text(sigmas_csv(sigmas))
        plot_sigmas({group: [run.harmony for run in members] for group, members in groups.items()}, root / "sigmas.png")
    return rows


def to_csv(rows: list[Summary]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["group", "metric", "seeds", "mean", "median", "iqm", f"ci{int(CONFIDENCE * 100)}_low", f"ci{int(CONFIDENCE * 100)}_high"])
    for r in rows:
        writer.writerow([r.group, r.metric, r.seeds, *(f"{v:.6g}" for v in (r.mean, r.median, r.iqm, r.low, r.high))])
    return out.getvalue()


def to_markdown(rows: list[Summary], runs: int) -> str:
    lines = [f"{runs} runs. Mean, median and IQM over seeds; the interval is a {int(CONFIDENCE * 100)} % bootstrap interval of the mean.", "",
             "| group | metric | seeds | mean | median | IQM | interval |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.group} | {r.metric} | {r.seeds} | {r.mean:.2f} | {r.median:.2f} | {r.iqm:.2f} | [{r.low:.2f}, {r.high:.2f}] |" for r in rows]
    if not rows:
        lines += ["", "No run has a greedy evaluation yet (they come every run.eval_every env steps and at a run's end, "
                      "when run.eval_episodes > 0): nothing to compare."]
    return "\n".join(lines) + "\n"


def sigmas_csv(sigmas: list[SettledSigma]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["group", "task", "loss", "sigma", "equilibrium", "ratio"])
    for s in sigmas:
        writer.writerow([s.group, s.task, *(f"{v:.6g}" for v in (s.loss, s.sigma, s.equilibrium, s.ratio))])
    return out.getvalue()


def sigmas_markdown(sigmas: list[SettledSigma]) -> str:
    if not sigmas:
        return ""
    lines = ["", f"Harmonizer sigmas over the last {SETTLED_FRACTION:.0%} of each run's steps (seeds pooled) against the "
             "equilibrium of the mean loss, sigma* = (L + sqrt(L^2 + 4L)) / 2; the task's weight is 1/sigma.", "",
             "| group | task | loss | sigma | sigma* | sigma / sigma* |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {s.group} | {s.task} | {s.loss:.4g} | {s.sigma:.4g} | {s.equilibrium:.4g} | {s.ratio:.2f} |" for s in sigmas]
    return "\n".join(lines) + "\n"


def plot_sigmas(traces: dict[str, list[list[dict[str, float]]]], path: Path) -> None:
    """One panel per task: each run's sigma (solid) and the equilibrium of its current loss (dotted);
    `traces`: group -> per run, its metric rows with `step`, harmony/<task>/sigma and /loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from learner.harmonizer import rectified_equilibrium

    tasks = list(dict.fromkeys(m[1] for runs in traces.values() for rows in runs for row in rows
                               for key in row if (m := SIGMA.fullmatch(key))))
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(5 * max(1, len(tasks)), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for color, (group, runs) in enumerate(traces.items()):
            for index, rows in enumerate(runs):
                rows = [r for r in rows if f"harmony/{task}/sigma" in r and f"harmony/{task}/loss" in r]
                steps = [r["step"] for r in rows]
                ax.plot(steps, [r[f"harmony/{task}/sigma"] for r in rows], lw=1, color=f"C{color}", label=group if index == 0 and rows else None)
                ax.plot(steps, [rectified_equilibrium(r[f"harmony/{task}/loss"]) for r in rows], lw=1, ls=":", color=f"C{color}")
        ax.set(title=f"{task}: sigma (solid), sigma*(loss) (dotted)", xlabel="env steps", yscale="log")
        if ax.lines:
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(groups: dict[str, list[RunResult]], path: Path) -> None:
    """Mean evaluation return against env steps per group, with the bootstrap interval as a band."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for group, runs in groups.items():
        curves = [run.evaluations[RETURN] for run in runs if len(run.evaluations.get(RETURN, [])) > 0]
        if not curves:
            continue
        end = min(c[-1][0] for c in curves)  # the steps every seed reached
        steps = np.linspace(min(c[0][0] for c in curves), end, CURVE_POINTS) if end > 0 else np.array([0.0])
        values = np.stack([np.interp(steps, [s for s, _ in c], [v for _, v in c]) for c in curves])
        bands = [summarize(list(column), group, RETURN) for column in values.T]
        ax.plot(steps, [b.mean for b in bands], label=f"{group} ({len(curves)} seeds)")
        ax.fill_between(steps, [b.low for b in bands], [b.high for b in bands], alpha=0.2)
    ax.set_xlabel("env steps")
    ax.set_ylabel("greedy evaluation return")
    if ax.lines:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
