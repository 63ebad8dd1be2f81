"""Single-process reference loop: collect with the policy, train at the configured train ratio.

For tests and debugging; the product runs the same pieces distributed (system/driver.py). Keeping
this loop next to it lets one tell apart a learning problem from a distribution problem.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from actors.collector import Collector
from actors.envs import make_env
from actors.evaluator import Evaluator
from actors.policy import AgentPolicy, RandomPolicy
from actors.specs import specs_from_spaces
from actors.streams import Episode
from learner.agent import Agent, metrics_to_floats
from replay.storage import ReplayStorage
from system.config import Config


@dataclass
class LocalResult:
    env_steps: int
    updates: int
    seconds: float
    episodes: list[tuple[int, Episode]] = field(default_factory=list)  # (env step at the end, episode)
    evals: list[tuple[int, float]] = field(default_factory=list)  # (env step, mean greedy return)
    metrics: dict[str, float] = field(default_factory=dict)


def run_local(config: Config, report: Callable[[dict], None] | None = None, stop: Callable[[LocalResult], bool] | None = None) -> LocalResult:
    """Runs `config.run.steps` env steps in this process. `report` gets one dict per finished
    episode batch and per evaluation (greedy episodes every `run.eval_every` env steps); `stop`
    may end the run early (e.g. once a return threshold is reached)."""
    seed = config.run.seed
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    envs = [make_env(config.env.name, seed=seed + i, **config.env.options) for i in range(config.runners.envs)]
    obs_spec, act_spec = specs_from_spaces(envs[0].observation_space, envs[0].action_space)
    agent = Agent(obs_spec, act_spec, config.agent)
    storage = ReplayStorage(config.replay.capacity, config.replay.sampling)
    collector = Collector(envs, config.runners.chunk_length, "local")
    explore = RandomPolicy(envs[0].action_space, seed)
    act = AgentPolicy(agent.policy)  # the agent's own policy view: acts with the weights it trains
    evaluator = Evaluator(config.env.name, dict(config.env.options), seed + 10_000, config.agent)
    next_eval = config.train.prefill + config.run.eval_every if config.run.eval_every else None
    train = config.train
    steps_per_batch = train.batch_size * train.seq_len
    result = LocalResult(0, 0, 0.0)
    start = time.perf_counter()
    try:
        while collector.env_steps < config.run.steps:
            policy = explore if collector.env_steps < train.prefill else act
            chunks, episodes = collector.step(policy, agent.updates)
            for chunk in chunks:
                storage.add(chunk.data, chunk.stream, chunk.chunk_id, chunk.weight_version)
            learning = collector.env_steps >= train.prefill and storage.num_sequences(train.seq_len) > 0
            if learning:
                due = train.train_ratio * (collector.env_steps - train.prefill) / steps_per_batch + 1
                while result.updates < due:
                    batch, keys = storage.sample_with_keys(train.batch_size, train.seq_len, rng)
                    metrics = agent.train_step(batch)
                    if storage.mode == "priority":  # one small sync: this loop is the plain reference
                        storage.update_priorities(keys, agent.last_priorities.cpu().numpy())
                    result.updates += 1
                if episodes:
                    result.metrics = metrics_to_floats(metrics)
            result.env_steps = collector.env_steps
            result.seconds = time.perf_counter() - start
            result.episodes += [(collector.env_steps, e) for e in episodes]
            if next_eval is not None and collector.env_steps >= next_eval:
                next_eval += config.run.eval_every
                summary = evaluator.evaluate(agent.policy_weights(), config.run.eval_episodes)
                result.evals.append((collector.env_steps, summary["return"]))
                if report:
                    report({"step": collector.env_steps, "updates": result.updates, "seconds": round(result.seconds, 1), "eval/return": summary["return"]})
            if episodes and report:
                report({"step": collector.env_steps, "updates": result.updates, "seconds": round(result.seconds, 1),
                        "return": float(np.mean([e.ret for e in episodes])), **result.metrics})
            if stop and stop(result):
                break
    finally:
        collector.close()
    return result
