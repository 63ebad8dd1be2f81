"""The policy-only agent runners act with: only the acting networks, loads exactly what the learner
publishes, and then acts as the training agent does."""
import pickle
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from learner.agent import Agent
from learner.config import AgentConfig, ModelConfig
from learner.policy_agent import PolicyAgent
from learner.spaces import ActionSpec, ObservationSpec
from test_agent import make_batch

OBS = ObservationSpec({"image": (32, 32, 3), "vector": (7,)})
ACTIONS = {"discrete": ActionSpec("discrete", (6,)), "continuous": ActionSpec("continuous", (2,))}


def config(size: str = "debug") -> AgentConfig:
    return AgentConfig(model=ModelConfig(size=size), precision="fp32", compile="off")


def trained_agent(action: str) -> Agent:
    torch.manual_seed(0)
    agent = Agent(OBS, ACTIONS[action], config(), device="cpu")
    batch = make_batch(agent, batch=2, length=6)
    for _ in range(2):
        agent.train_step(batch)
    return agent


def test_holds_only_the_acting_networks():
    agent = Agent(OBS, ACTIONS["discrete"], config(), device="cpu")
    policy = PolicyAgent(OBS, ACTIONS["discrete"], config(), device="cpu")
    wm, ac = agent.world_model, agent.actor_critic
    acting = sum(p.numel() for m in (wm.encoder, wm.rssm, ac.actor) for p in m.parameters())
    assert policy.num_params() == acting < agent.num_params()
    assert not any(k.startswith(("decoder", "reward_head", "continue_head", "critic", "slow_critic")) for k in policy.nets.state_dict())
    held = [v for v in vars(policy).values() if isinstance(v, (nn.Module, torch.optim.Optimizer))]
    assert held == [policy.nets], "no world model, critic or optimiser besides the acting networks"
    # the training agent's policy view shares its modules: nothing copied
    assert agent.policy.nets.encoder is wm.encoder and agent.policy.nets.rssm is wm.rssm and agent.policy.nets.actor is ac.actor


@pytest.mark.parametrize("action", ACTIONS)
def test_loads_published_weights_and_acts_like_the_training_agent(action):
    learner = trained_agent(action)
    torch.manual_seed(123)  # different initial weights than the learner's
    runner = PolicyAgent(OBS, ACTIONS[action], config(), device="cpu")
    published = pickle.loads(pickle.dumps(learner.policy_weights()))  # as through the object store
    assert published["version"] == 2 and published["state"].keys() == runner.policy_weights()["state"].keys()
    runner.load_policy_weights(published)
    assert runner.updates == 2
    rng = np.random.default_rng(4)
    states = {"learner": None, "runner": None}
    for step, first in enumerate((np.ones(3, bool), np.zeros(3, bool), np.array([False, True, False]), np.zeros(3, bool))):
        obs = {"image": rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8), "vector": rng.normal(size=(3, 7)).astype(np.float32)}
        actions = {}
        for name, model in (("learner", learner), ("runner", runner)):
            torch.manual_seed(step)  # the latent is sampled even when acting greedily
            actions[name], states[name] = model.policy_step(obs, states[name], first, greedy=step % 2 == 0)
        np.testing.assert_array_equal(actions["learner"], actions["runner"])
        for part in ("deter", "stoch", "action"):
            assert torch.equal(getattr(states["learner"], part), getattr(states["runner"], part)), f"step {step}: {part}"


def test_published_weights_cross_rays_object_store_without_a_copy(ray_local):
    """What a runner gets from the learner's `ray.put`: views of the store's shared memory (no
    unpickling per tensor), which load without a warning and act as the learner does. The
    published copy does not follow later training."""
    learner = trained_agent("discrete")
    weights = learner.policy_weights()
    held = {k: v.copy() for k, v in weights["state"].items()}
    received = ray_local.get(ray_local.put(weights), timeout=60)
    assert all(isinstance(v, np.ndarray) and not v.flags.writeable for v in received["state"].values()), "zero-copy reads"
    runner = PolicyAgent(OBS, ACTIONS["discrete"], config(), device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runner.load_policy_weights(received)
    for name, value in runner.nets.state_dict().items():
        torch.testing.assert_close(value, learner.policy.nets.state_dict()[name], rtol=0, atol=0)
    learner.train_step(make_batch(learner, batch=2, length=6))
    assert all(np.array_equal(weights["state"][k], v) for k, v in held.items()), "a publish is a copy"


def test_wrong_weights_fail_loudly_and_load_nothing():
    policy = PolicyAgent(OBS, ACTIONS["discrete"], config(), device="cpu")
    before = policy.policy_weights()
    good = Agent(OBS, ACTIONS["discrete"], config(), device="cpu").policy_weights()
    name = next(iter(good["state"]))
    missing = {"version": 1, "state": {k: v for k, v in good["state"].items() if k != name}}
    with pytest.raises(ValueError, match=rf"missing \['{name}'\]"):
        policy.load_policy_weights(missing)
    renamed = {"version": 1, "state": {**missing["state"], f"world_model.{name}": good["state"][name]}}
    with pytest.raises(ValueError, match=rf"unknown \['world_model.{name}'\]"):
        policy.load_policy_weights(renamed)
    other_size = Agent(OBS, ACTIONS["discrete"], AgentConfig(model=ModelConfig(size="debug", deter=64), compile="off"), device="cpu")
    with pytest.raises(ValueError, match="misshapen"):
        policy.load_policy_weights(other_size.policy_weights())
    with pytest.raises(KeyError):
        policy.load_policy_weights({"state": good["state"]})
    after = policy.policy_weights()
    assert after["version"] == 0 and all(np.array_equal(after["state"][k], v) for k, v in before["state"].items())
