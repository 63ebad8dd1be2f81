"""Data-parallel learners: the same step as one learner, the scaling rules, agreement to stop."""
from __future__ import annotations

import faulthandler
import math
import os
import queue
import time
import traceback
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from learner.agent import Agent
from learner.config import AgentConfig, HarmonyConfig, ModelConfig
from learner.distributed import GroupShape, ProcessGroup, Rendezvous
from learner.spaces import ActionSpec, ObservationSpec
from test_agent import make_batch

OBS = ObservationSpec({"vector": (5,)})
# One latent class and one action: every sample the update draws is its only value, so two ranks
# each drawing for half the batch see what one learner draws for all of it.
ACTION = ActionSpec("discrete", (1,))
CONFIG = AgentConfig(model=ModelConfig(size="debug", classes=1, reward_bins=31), precision="fp32", compile="off")
BATCH, LENGTH = 6, 8


def new_agent() -> Agent:
    torch.manual_seed(0)
    return Agent(OBS, ACTION, CONFIG, device="cpu")


def whole_batch() -> dict[str, np.ndarray]:
    batch = make_batch(new_agent(), batch=BATCH, length=LENGTH, seed=3)
    batch["reward"] = 0.01 * batch["reward"]  # returns well inside the normaliser's unit scale
    return batch


def rank_step(rank: int, address: str, results: mp.Queue) -> None:
    """One rank: join the group, train one update on its half of the batch, report its weights
    (or its error), then exit at once: the group's teardown is not under test, and a rank that
    hangs or crashes in it must not lose the result. A fatal signal prints the rank's stack, and
    so does a rank still busy after 150 s, into the test's output."""
    faulthandler.enable()
    faulthandler.dump_traceback_later(150, exit=False)
    try:
        torch.set_num_threads(1)
        group = ProcessGroup(address, rank, 2, torch.device("cpu"), timeout_s=120)
        agent = new_agent()
        torch.manual_seed(100 + rank)  # ranks start apart: DDP copies rank 0's weights to both
        for p in agent.world_model.parameters():
            p.data.add_(torch.randn_like(p) * rank)
        agent.distribute()
        half = {k: v[rank * BATCH // 2:(rank + 1) * BATCH // 2] for k, v in whole_batch().items()}
        agent.train_step(half)
        agreed = [group.all_agree(True), group.all_agree(rank == 0)]
        state = agent.state_dict()
        weights = {**state["world_model"], **{f"ac.{k}": v for k, v in state["actor_critic"].items()}}
        results.put((rank, {k: v.numpy().copy() for k, v in weights.items()}, agreed))  # arrays: no shared memory to outlive
    except BaseException:
        results.put((rank, None, traceback.format_exc()))
    results.close()
    results.join_thread()  # what was put is in the pipe
    os._exit(0)


def test_two_learners_on_halves_of_a_batch_step_like_one_learner_on_all_of_it() -> None:
    one = new_agent()
    before = {k: v.clone() for k, v in one.world_model.state_dict().items()}
    one.train_step(whole_batch())
    expected = {**one.world_model.state_dict(), **{f"ac.{k}": v for k, v in one.actor_critic.state_dict().items()}}

    context = mp.get_context("spawn")
    results = context.Queue()
    rendezvous = Rendezvous("127.0.0.1", timeout_s=120)
    ranks = [context.Process(target=rank_step, args=(r, rendezvous.address, results)) for r in range(2)]
    for process in ranks:
        process.start()
    got: dict[int, tuple[dict[str, np.ndarray], list[bool]]] = {}
    deadline = time.monotonic() + 180
    try:
        while len(got) < len(ranks):
            exited = [r for r, p in enumerate(ranks) if r not in got and p.exitcode is not None]
            try:  # what an exited rank sent is in the queue by now
                rank, state, agreed = results.get(timeout=5 if exited else 1)
            except queue.Empty:
                assert not exited, f"rank {exited[0]} exited ({ranks[exited[0]].exitcode}) without a result: see its output"
                assert time.monotonic() < deadline, f"no result from ranks {sorted(set(range(2)) - set(got))} in 180 s"
                continue
            assert state is not None, f"rank {rank} failed:\n{agreed}"  # its traceback
            got[rank] = (state, agreed)
    finally:
        for process in ranks:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    for rank in (0, 1):
        state, agreed = got[rank]
        assert agreed == [True, False], "all_agree is an AND over the ranks"
        for key, value in expected.items():
            if key.startswith("ac.return_norm"):  # a running percentile of each rank's own batch
                continue
            torch.testing.assert_close(torch.from_numpy(state[key]), value, rtol=1e-4, atol=1e-6, msg=f"rank {rank}: {key}")
    moved = [k for k, v in before.items() if not torch.equal(v, expected[k])]
    assert len(moved) > len(before) // 2, "the step trained the world model"


@pytest.mark.parametrize(("rule", "batch", "lr_scale"), [("rllib", 16, math.sqrt(4)), ("linear", 16, 4.0), ("split", 4, 1.0)])
def test_scaling_rules(rule: str, batch: int, lr_scale: float) -> None:
    shape = GroupShape.of(4, 16, rule)
    assert (shape.batch_size, shape.lr_scale) == (batch, lr_scale)
    scaled = shape.agent_config(AgentConfig())
    base = AgentConfig()
    assert scaled.world_model.lr == pytest.approx(base.world_model.lr * lr_scale)
    assert scaled.behavior.actor_lr == pytest.approx(base.behavior.actor_lr * lr_scale)
    assert scaled.behavior.critic_lr == pytest.approx(base.behavior.critic_lr * lr_scale)
    assert scaled.harmony.lr is None, "unset, the sigmas follow the (scaled) world model's"
    own = shape.agent_config(replace(base, harmony=HarmonyConfig(lr=1e-2)))
    assert own.harmony.lr == pytest.approx(1e-2 * lr_scale)


def test_a_batch_that_does_not_split_evenly_is_refused() -> None:
    with pytest.raises(ValueError, match="does not split evenly over 3 learners"):
        GroupShape.of(3, 16, "split")


def test_a_resumed_agent_trains_with_its_configs_learning_rates() -> None:
    agent = new_agent()
    state = agent.state_dict()
    scaled = GroupShape.of(4, 16, "rllib").agent_config(CONFIG)
    resumed = Agent(OBS, ACTION, scaled, device="cpu")
    resumed.load_state_dict(state)
    assert [g["lr"] for g in resumed.wm_opt.param_groups] == pytest.approx([2 * CONFIG.world_model.lr] * 2)
    faster = Agent(OBS, ACTION, replace(CONFIG, harmony=HarmonyConfig(lr=1e-2)), device="cpu")
    faster.load_state_dict(state)
    assert [g["lr"] for g in faster.wm_opt.param_groups] == pytest.approx([CONFIG.world_model.lr, 1e-2])
    assert [g["lr"] for g in resumed.ac_opt.param_groups] == pytest.approx([2 * CONFIG.behavior.actor_lr, 2 * CONFIG.behavior.critic_lr])
