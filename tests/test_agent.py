"""The agent API: shapes for every observation and action kind, losses, weights, checkpoints."""
import math

import numpy as np
import pytest
import torch

from learner.agent import Agent, metrics_to_floats
from learner.config import AgentConfig, HarmonyConfig, ModelConfig
from learner.nets import window_length
from learner.rssm import RSSM, categorical_kl
from learner.spaces import ActionSpec, ObservationShapeError, ObservationSpec

OBS = {
    "vector": {"vector": (5,)},
    "image": {"image": (32, 32, 3)},
    "dict": {"image": (32, 32, 3), "vector": (7,)},
}
ACTIONS = {
    "discrete": ActionSpec("discrete", (4,)),
    "multi_discrete": ActionSpec("multi_discrete", (3, 3, 4)),
    "continuous": ActionSpec("continuous", (2,)),
}


def make_agent(obs="vector", action="discrete", **harmony) -> Agent:
    torch.manual_seed(0)
    config = AgentConfig(model=ModelConfig(size="debug"), harmony=HarmonyConfig(**harmony))
    return Agent(ObservationSpec(OBS[obs]), ACTIONS[action], config)


def make_batch(agent: Agent, batch=3, length=8, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = {}
    for key, shape in agent.obs_spec.shapes.items():
        if len(shape) == 3:
            data[key] = rng.integers(0, 256, (batch, length, *shape), dtype=np.uint8)
        else:
            data[key] = rng.normal(size=(batch, length, *shape)).astype(np.float32)
    spec = agent.act_spec
    if spec.kind == "continuous":
        data["action"] = rng.uniform(-1, 1, (batch, length, *spec.env_shape)).astype(np.float32)
    elif spec.kind == "discrete":
        data["action"] = rng.integers(0, spec.sizes[0], (batch, length))
    else:
        data["action"] = np.stack([rng.integers(0, n, (batch, length)) for n in spec.sizes], -1)
    data["reward"] = rng.normal(size=(batch, length)).astype(np.float32)
    data["is_first"] = np.zeros((batch, length), bool)
    data["is_first"][:, 0] = True
    data["is_last"] = np.zeros((batch, length), bool)
    data["is_last"][0, -1] = True
    data["is_terminal"] = data["is_last"].copy()
    return data


@pytest.mark.parametrize("obs", OBS)
@pytest.mark.parametrize("action", ACTIONS)
def test_policy_and_train_shapes(obs, action):
    agent = make_agent(obs, action)
    batch = make_batch(agent)
    step_obs = {k: batch[k][:, 0] for k in agent.obs_spec.shapes}
    actions, state = agent.policy_step(step_obs, None, np.ones(3, bool))
    spec = agent.act_spec
    assert actions.shape == (3, *spec.env_shape)
    assert actions.dtype == spec.env_dtype
    if spec.kind == "continuous":
        assert np.all(np.abs(actions) <= 1.0)
    else:
        assert np.all(actions >= 0) and np.all(actions < np.array(spec.sizes))
    assert state.deter.shape == (3, 32) and state.stoch.shape == (3, 16) and state.action.shape == (3, spec.model_dim)
    greedy, _ = agent.policy_step(step_obs, state, np.zeros(3, bool), greedy=True)
    assert greedy.shape == actions.shape

    metrics = metrics_to_floats(agent.train_step(batch))
    assert all(math.isfinite(v) for v in metrics.values())
    expected_losses = {f"loss/{k}" for k in OBS[obs]} | {"loss/reward", "loss/continue", "loss/dyn", "loss/rep"}
    assert expected_losses <= set(metrics)
    for task in ("observation", "reward", "dynamics"):
        assert f"harmony/{task}/sigma" in metrics
    assert agent.updates == 1


def test_observation_and_dynamics_losses_group_into_tasks():
    """Every decoder lands in `observation`; dyn/rep split 5:1 in `dynamics` (off = DreamerV3)."""
    agent = make_agent("dict", "discrete", mode="off")
    metrics = metrics_to_floats(agent.train_step(make_batch(agent)))
    assert metrics["harmony/observation/loss"] == pytest.approx(metrics["loss/image"] + metrics["loss/vector"], rel=1e-5)
    dynamics = (0.5 * metrics["loss/dyn"] + 0.1 * metrics["loss/rep"]) / 0.6
    assert metrics["harmony/dynamics/loss"] == pytest.approx(dynamics, rel=1e-5)
    total = metrics["loss/image"] + metrics["loss/vector"] + metrics["loss/reward"] + metrics["loss/continue"] + 0.5 * metrics["loss/dyn"] + 0.1 * metrics["loss/rep"]
    assert metrics["world_model/loss"] == pytest.approx(total, rel=1e-5)


def test_rectified_total_includes_regulariser_once_per_task():
    agent = make_agent("dict", "discrete")
    metrics = metrics_to_floats(agent.train_step(make_batch(agent)))
    # sigma = 1 at the first step: total = sum of task losses + 3 log 2, continue unharmonized
    tasks = sum(metrics[f"harmony/{t}/loss"] for t in ("observation", "reward", "dynamics", "continue"))
    assert metrics["world_model/loss"] == pytest.approx(tasks + 3 * math.log(2.0), rel=1e-5)
    assert "harmony/continue/sigma" not in metrics


def test_harmonizer_sigmas_are_trained_with_the_world_model():
    agent = make_agent("image", "discrete")
    optimised = {id(p) for group in agent.wm_opt.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in agent.world_model.harmonizer.parameters())
    batch = make_batch(agent)
    for _ in range(5):
        agent.train_step(batch)
    sigmas = agent.world_model.harmonizer.sigmas()
    # losses above sigma^2 / (1 + sigma) = 0.5 push sigma up from 1: the image loss sums 3,072
    # pixel errors and the reward loss starts near log(255)
    assert sigmas["observation"] > 1.0 and sigmas["reward"] > 1.0


def test_sigmas_learn_at_their_own_rate_when_asked():
    """`agent.harmony.lr`: under Adam each log-sigma moves about its learning rate per update, the
    world model's own parameters at theirs; unset, the sigmas take the world model's (the paper)."""
    batch = make_batch(make_agent("image", "discrete"))
    moved = {}
    for lr in (None, 1e-2):
        agent = make_agent("image", "discrete", lr=lr)
        base, sigmas = agent.wm_opt.param_groups
        assert base["lr"] == 1e-4 and sigmas["lr"] == (1e-2 if lr else 1e-4)
        before = torch.stack([p.detach().clone() for p in agent.world_model.harmonizer.parameters()])
        for _ in range(3):
            agent.train_step(batch)
        moved[lr] = (torch.stack(list(agent.world_model.harmonizer.parameters())).detach() - before).abs()
    assert torch.all(moved[None] < 4e-4) and torch.all(moved[None] > 1e-4)
    assert torch.all(moved[1e-2] < 4e-2) and torch.all(moved[1e-2] > 1e-2)


def test_a_checkpoint_from_before_the_sigma_group_loads(tmp_path):
    """World-model optimiser states saved with one group (the sigmas' moments last) load into the
    two-group layout with every moment on its own parameter, and training continues identically."""
    a = make_agent("vector", "continuous")
    batch = make_batch(a)
    a.train_step(batch)
    state = a.state_dict()
    base, sigmas = state["wm_opt"]["param_groups"]
    state["wm_opt"]["param_groups"] = [{**base, "params": base["params"] + sigmas["params"]}]
    b = make_agent("vector", "continuous")
    b.load_state_dict(state)
    for p, q in zip(a.world_model.harmonizer.parameters(), b.world_model.harmonizer.parameters()):
        assert torch.equal(a.wm_opt.state[p]["exp_avg_sq"], b.wm_opt.state[q]["exp_avg_sq"])
    torch.manual_seed(5)
    ma = metrics_to_floats(a.train_step(batch))
    torch.manual_seed(5)
    mb = metrics_to_floats(b.train_step(batch))
    assert ma["world_model/loss"] == pytest.approx(mb["world_model/loss"], rel=1e-6)
    assert a.world_model.harmonizer.sigmas() == pytest.approx(b.world_model.harmonizer.sigmas(), rel=1e-6)


def test_world_model_loss_decreases_on_a_fixed_batch():
    agent = make_agent("vector", "discrete")
    for group in agent.wm_opt.param_groups:
        group["lr"] = 3e-3
    batch = make_batch(agent)
    first = metrics_to_floats(agent.train_step(batch))
    for _ in range(40):
        last = metrics_to_floats(agent.train_step(batch))
    assert last["loss/vector"] < 0.7 * first["loss/vector"]
    assert last["loss/reward"] < 0.7 * first["loss/reward"]


def test_free_nats_clip_each_element():
    rssm = RSSM(embed_dim=4, action_dim=2, deter=8, hidden=8, stoch=4, classes=4, unimix=0.01)
    logits = torch.randn(6, 16, requires_grad=True)
    same = categorical_kl(rssm.dist(logits), rssm.dist(logits.detach()))
    assert torch.allclose(same, torch.zeros(6), atol=1e-6)
    clipped = torch.clamp(same, min=1.0).mean()
    assert clipped.item() == 1.0
    clipped.backward()
    assert logits.grad.abs().max().item() == 0.0  # below the free nats: no gradient
    far = categorical_kl(rssm.dist(logits * 10), rssm.dist(torch.zeros(6, 16)))
    assert (far > 1.0).all()


@pytest.mark.parametrize("imagined_continue, cont", [("mode", 1.0), ("probability", 0.7)])
def test_imagination_discounts_by_the_continue_head(imagined_continue, cont):
    """A continue head that says 0.7 everywhere: DreamerV3's mode rounds it to 1, `probability`
    discounts each imagined step by 0.7. Reward is constant and the (zero-initialised) critic
    values every state at 0, so the lambda returns have a closed form."""
    torch.manual_seed(0)
    config = AgentConfig(model=ModelConfig(size="debug"))
    config.behavior.imagined_continue = imagined_continue
    agent = Agent(ObservationSpec(OBS["vector"]), ACTIONS["discrete"], config)
    wm = agent.world_model
    with torch.no_grad():
        wm.continue_head.out.weight.zero_()
        wm.continue_head.out.bias.fill_(math.log(0.7 / 0.3))
        wm.reward_head.out.weight.zero_()
        wm.reward_head.out.bias.copy_(torch.linspace(-1.0, 3.0, config.model.reward_bins))
    data = agent._to_device(make_batch(agent))
    data["is_terminal"][:] = False
    _, _, posterior = wm.loss(data)
    _, metrics = agent.actor_critic.loss(wm, posterior, data)
    reward = wm.reward(posterior.deter[:1, :1], posterior.stoch[:1, :1]).mean().item()
    bh = config.behavior
    step = (1.0 - 1.0 / bh.discount_horizon) * cont * bh.lam  # v = 0: R_t = r + gamma c lam R_t+1
    returns = [reward * sum(step**k for k in range(bh.horizon - t)) for t in range(bh.horizon)]
    assert metrics["critic/value"].item() == pytest.approx(0.0, abs=1e-6)
    assert metrics["imagine/return"].item() == pytest.approx(np.mean(returns), rel=1e-4)


@pytest.mark.parametrize("window", [1, 3, 4])
def test_windowed_scan_and_imagination_match_the_whole(window):
    """The compiled agent runs the observe scan and the imagination in windows
    (`agent.compile_window`); in windows of any length they compute what one pass does: same
    losses, same gradients. Length 8 and horizon 15 in windows of at most 3 run as 4 x 2 and
    5 x 3 steps, of at most 4 as 2 x 4 and 5 x 3 (window_length keeps all windows one length)."""
    agent = make_agent()
    data = agent._to_device(make_batch(agent, length=8))
    wm, ac = agent.world_model, agent.actor_critic
    results = []
    for chunk in (None, window):
        wm.rssm.window = ac.window = chunk
        torch.manual_seed(5)
        wm_loss, _, posterior = wm.loss(data)
        ac_loss, _ = ac.loss(wm, posterior, data)
        params = [p for module in (wm, ac) for p in module.parameters() if p.requires_grad]
        grads = torch.autograd.grad(wm_loss + ac_loss, params, allow_unused=True)
        results.append((wm_loss.detach(), ac_loss.detach(), posterior.deter.detach(), grads))
    (wm_a, ac_a, deter_a, grads_a), (wm_b, ac_b, deter_b, grads_b) = results
    assert deter_b.shape == deter_a.shape == (3, 8, wm.rssm.deter)
    torch.testing.assert_close(deter_b, deter_a)
    torch.testing.assert_close(wm_b, wm_a)
    torch.testing.assert_close(ac_b, ac_a)
    for a, b in zip(grads_a, grads_b):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a)


def test_window_length_divides_evenly():
    assert [window_length(64, 8), window_length(15, 8), window_length(6, 8), window_length(13, 8)] == [8, 5, 6, 1]
    assert window_length(64, None) == 64


def test_unknown_imagined_continue_is_rejected():
    config = AgentConfig(model=ModelConfig(size="debug"))
    config.behavior.imagined_continue = "soft"
    with pytest.raises(ValueError, match="imagined_continue must be mode or probability"):
        Agent(ObservationSpec(OBS["vector"]), ACTIONS["discrete"], config)


def test_terminal_steps_weigh_more_in_the_continue_loss():
    agent = make_agent()
    wm = agent.world_model
    data = agent._to_device(make_batch(agent))
    data["is_terminal"][1, 3] = True
    losses = {}
    for weight in (1.0, 5.0):
        agent.config.world_model.terminal_weight = weight
        torch.manual_seed(1)  # the same posterior samples for both
        _, metrics, posterior = wm.loss(data)
        losses[weight] = metrics["loss/continue"].item()
    logits = wm.continue_logits(posterior.deter, posterior.stoch)
    per_step = torch.nn.functional.softplus(logits)  # BCE of a logit against target 0
    terminal = data["is_terminal"]
    extra = 4.0 * per_step[terminal].sum().item() / terminal.numel()
    assert terminal.sum().item() == 2
    assert losses[5.0] - losses[1.0] == pytest.approx(extra, rel=1e-4)


def test_policy_weights_travel_with_version():
    learner = make_agent("dict", "multi_discrete")
    runner = make_agent("dict", "multi_discrete")
    batch = make_batch(learner)
    for _ in range(3):
        learner.train_step(batch)
    weights = learner.policy_weights()
    assert weights["version"] == 3
    assert weights["state"].keys() == runner.policy.nets.state_dict().keys()
    assert all(k.startswith(("encoder.", "rssm.", "actor.")) for k in weights["state"])
    assert all(isinstance(v, np.ndarray) for v in weights["state"].values()), "host arrays: Ray's store passes them without unpickling"
    runner.load_policy_weights(weights)
    obs = {k: batch[k][:, 0] for k in learner.obs_spec.shapes}
    torch.manual_seed(1)
    a, _ = learner.policy_step(obs, None, np.ones(3, bool), greedy=True)
    torch.manual_seed(1)
    b, _ = runner.policy_step(obs, None, np.ones(3, bool), greedy=True)
    np.testing.assert_array_equal(a, b)
    assert runner.updates == 3


def test_checkpoint_round_trip_continues_identically(tmp_path):
    a = make_agent("vector", "continuous")
    batch = make_batch(a)
    a.train_step(batch)
    path = tmp_path / "agent.pt"
    torch.save(a.state_dict(), path)
    b = make_agent("vector", "continuous")
    b.load_state_dict(torch.load(path, weights_only=True))
    assert b.updates == 1
    torch.manual_seed(5)
    ma = metrics_to_floats(a.train_step(batch))
    torch.manual_seed(5)
    mb = metrics_to_floats(b.train_step(batch))
    assert ma["world_model/loss"] == pytest.approx(mb["world_model/loss"], rel=1e-6)
    assert ma["actor/loss"] == pytest.approx(mb["actor/loss"], rel=1e-5, abs=1e-7)


def test_bad_observation_shapes_are_rejected():
    with pytest.raises(ObservationShapeError, match="power-of-two"):
        ObservationSpec({"image": (60, 60, 3)})
    with pytest.raises(ObservationShapeError, match="images \\(H, W, C\\) or vectors"):
        ObservationSpec({"grid": (4, 4)})


def test_size_presets_follow_dreamerv3():
    s = ModelConfig(size="S").resolved()
    assert (s["deter"], s["hidden"], s["layers"], s["cnn_depth"], s["stoch"], s["classes"]) == (512, 512, 2, 32, 32, 32)
    assert ModelConfig(size="XL").resolved()["deter"] == 4096
    assert ModelConfig(size="S", deter=64).resolved()["deter"] == 64
    with pytest.raises(ValueError, match="unknown model size"):
        ModelConfig(size="XXL").resolved()


def test_bf16_on_cpu_trains_in_bf16_but_acts_in_fp32():
    """bf16 autocast on a CPU speeds up training; acting at a runner's batch size stays fp32 (the
    casts would double its cost), so a bf16 agent acts exactly as an fp32 one with its weights."""
    def agent(precision: str) -> Agent:
        torch.manual_seed(0)
        config = AgentConfig(model=ModelConfig(size="debug"), precision=precision)
        return Agent(ObservationSpec(OBS["vector"]), ACTIONS["discrete"], config, device="cpu")

    fp32, bf16 = agent("fp32"), agent("bf16")
    bf16.load_state_dict(fp32.state_dict())
    obs = {"vector": np.random.default_rng(1).normal(size=(6, 5)).astype(np.float32)}
    first = np.ones(6, bool)
    torch.manual_seed(2)
    actions_fp32, state_fp32 = fp32.policy_step(obs, None, first, greedy=True)
    torch.manual_seed(2)
    actions_bf16, state_bf16 = bf16.policy_step(obs, None, first, greedy=True)
    np.testing.assert_array_equal(actions_fp32, actions_bf16)
    assert state_bf16.deter.dtype == torch.float32
    torch.testing.assert_close(state_fp32.deter, state_bf16.deter, rtol=0, atol=0)
    # training does run under bf16 autocast: the losses differ from fp32's on the same batch
    batch = make_batch(fp32)
    loss_fp32 = metrics_to_floats(fp32.train_step(batch))["world_model/loss"]
    loss_bf16 = metrics_to_floats(bf16.train_step(batch))["world_model/loss"]
    assert loss_fp32 != loss_bf16 and math.isclose(loss_fp32, loss_bf16, rel_tol=0.05)
