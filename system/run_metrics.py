"""One metrics row of a distributed run, from the stats of its runners, learner and replay shards.

Runner counters start from zero in every new process, so the run's env steps are kept here: per
runner, the steps of its earlier incarnations plus what its current one reports; on resume the
count starts from the checkpoint's. The driver gathers the stats (Ray calls); this only counts.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from actors.streams import summarize_episodes

RUNNER_SUMS = ("env_steps_per_s", "env_restarts", "dropped_episodes", "env_timeouts", "insert_retries", "insert_failures", "rerouted_chunks")


@dataclass
class Progress:
    """Where a run stands after a metrics row."""

    env_steps: int
    updates: int
    replay_ratio: float


class RunMetrics:
    def __init__(self, env_steps_base: int, episodes_base: int, call_timeout: float):
        self.env_steps_base = env_steps_base  # from the checkpoint a resumed run started with
        self.episodes = episodes_base
        self.call_timeout = call_timeout  # for the outage message
        self._earlier_steps: dict[int, int] = {}  # per runner, steps of earlier incarnations
        self._last_seen: dict[int, int] = {}  # per runner, steps its current incarnation reported
        self._incarnation: dict[int, str] = {}  # per runner, the id of its current process
        self._shards_down: set[int] = set()  # replay shards that did not answer the last stats call

    def row(self, runner_stats: list[dict[str, Any]], learner_stats: dict[str, Any], replay_stats: dict[str, Any],
            supervisor: dict[str, float]) -> tuple[dict[str, Any], Progress]:
        """The row to log, and the run's progress (env steps over all incarnations)."""
        self._report_shard_outages(replay_stats["shards"])
        for s in runner_stats:
            index = s["runner"]
            if self._incarnation.get(index, s["incarnation"]) != s["incarnation"]:  # restarted: counts from zero
                self._earlier_steps[index] = self._earlier_steps.get(index, 0) + self._last_seen.get(index, 0)
            self._incarnation[index] = s["incarnation"]
            self._last_seen[index] = s["env_steps"]
        env_steps = self.env_steps_base + sum(self._earlier_steps.get(i, 0) + n for i, n in self._last_seen.items())
        episodes = [e for s in runner_stats for e in s["episodes"]]
        self.episodes += len(episodes)
        ratio = float(replay_stats.get("replay_ratio", 0.0))
        versions = [s["weight_version"] for s in runner_stats] or [0]
        limiter = replay_stats.get("limiter", {})
        row = {
            **learner_stats,
            **summarize_episodes(episodes),
            **{f"runner/{key}": sum(s.get(key, 0) for s in runner_stats) for key in RUNNER_SUMS},
            **supervisor,
            "runner/rss_mb_max": max((s["rss_mb"] for s in runner_stats), default=0.0),
            "runner/rss_mb_total": sum(s["rss_mb"] for s in runner_stats),
            "runner/min_weight_version": min(versions),
            "runner/max_weight_version": max(versions),
            "replay/size": replay_stats.get("size", 0),
            "replay/ratio": ratio,
            "replay/shards_up": replay_stats.get("shards_up", 0),
            "replay/inserted_steps": limiter.get("inserted", 0),
            "replay/sampled_steps": limiter.get("sampled", 0),
            "episodes": self.episodes,
        }
        return row, Progress(env_steps, int(learner_stats.get("learner/updates", 0)), ratio)

    def _report_shard_outages(self, shards: list[dict[str, Any]]) -> None:
        """One line when a replay shard stops answering, one when it is back (not one per row)."""
        down = {s["shard"] for s in shards if "error" in s}
        for shard in sorted(down - self._shards_down):
            print(f"replay shard {shard} does not answer within {self.call_timeout:g} s (hung, or restarting): "
                  "its streams go to the other shards, batches come from them", file=sys.stderr, flush=True)
        for shard in sorted(self._shards_down - down):
            print(f"replay shard {shard} answers again", file=sys.stderr, flush=True)
        self._shards_down = down
