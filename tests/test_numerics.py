"""The numeric transforms pinned against closed forms."""
import math

import numpy as np
import pytest
import torch

from torch.nn import functional as F
from torch.profiler import profile

from learner.channel_norm import ChannelNorm, channel_layer_norm
from learner.nets import ONEHOT_MIN_ROWS, MLP, OneHots, TwoHotSymlog, onehot_linear, reward_bins, sample_index, selected_entries
from learner.numerics import ReturnNormalizer, lambda_returns, replay_returns, symexp, symlog, twohot


def test_symlog_values_and_inverse():
    x = torch.tensor([-1000.0, -math.e + 1, -0.5, 0.0, 0.5, math.e - 1, 1000.0])
    expected = torch.tensor([-math.log(1001.0), -1.0, -math.log(1.5), 0.0, math.log(1.5), 1.0, math.log(1001.0)])
    torch.testing.assert_close(symlog(x), expected)
    torch.testing.assert_close(symexp(symlog(x)), x, rtol=1e-5, atol=1e-5)


def test_twohot_weights_and_round_trip():
    bins = reward_bins(255)
    x = torch.tensor([-20.0, -3.3, -0.01, 0.0, 0.07, 1.5, 19.99, 20.0])
    enc = twohot(x, bins)
    assert enc.shape == (8, 255)
    torch.testing.assert_close(enc.sum(-1), torch.ones(8))
    assert ((enc > 0).sum(-1) <= 2).all()
    torch.testing.assert_close((enc * bins).sum(-1), x, rtol=0, atol=1e-5)
    # out of range: all weight on the edge bin
    edge = twohot(torch.tensor([50.0, -50.0]), bins)
    assert edge[0, -1] == 1.0 and edge[1, 0] == 1.0


def test_twohot_symlog_distribution_decodes_its_target():
    bins = reward_bins(255)
    targets = torch.tensor([-300.0, -1.0, 0.0, 2.5, 450.0])
    logits = torch.log(twohot(symlog(targets), bins).clamp_min(1e-12))
    torch.testing.assert_close(TwoHotSymlog(logits, bins).mean(), targets, rtol=1e-4, atol=1e-4)
    # the log-likelihood is maximal (zero cross-entropy gap) at the target's own encoding
    dist = TwoHotSymlog(logits, bins)
    assert (dist.log_prob(targets) > TwoHotSymlog(logits.roll(1, 0), bins).log_prob(targets)).all()


def test_lambda_returns_against_recursion():
    rng = np.random.default_rng(0)
    horizon, n, gamma, lam = 5, 3, 0.99, 0.95
    reward = rng.normal(size=(horizon, n))
    cont = (rng.random((horizon, n)) > 0.2).astype(float)
    value = rng.normal(size=(horizon + 1, n))
    expected = np.zeros((horizon, n))
    nxt = value[-1]
    for t in reversed(range(horizon)):
        nxt = reward[t] + gamma * cont[t] * ((1 - lam) * value[t + 1] + lam * nxt)
        expected[t] = nxt
    got = lambda_returns(*(torch.tensor(a) for a in (reward, cont, value)), gamma, lam)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    # lam = 0 is one-step TD, lam = 1 with no discounting is the plain sum plus bootstrap
    td = lambda_returns(*(torch.tensor(a) for a in (reward, cont, value)), gamma, 0.0)
    np.testing.assert_allclose(td.numpy(), reward + gamma * cont * value[1:], rtol=1e-10)
    mc = lambda_returns(torch.ones(4, 1), torch.ones(4, 1), torch.zeros(5, 1), 1.0, 1.0)
    np.testing.assert_allclose(mc.numpy().ravel(), [4, 3, 2, 1])


def test_return_normalizer_percentile_ema():
    norm = ReturnNormalizer(decay=0.99)
    rng = np.random.default_rng(1)
    lo = hi = 0.0
    for _ in range(3):
        returns = rng.normal(0, 50, size=1000)
        norm.update(torch.tensor(returns, dtype=torch.float32))
        lo = 0.99 * lo + 0.01 * np.quantile(returns, 0.05)
        hi = 0.99 * hi + 0.01 * np.quantile(returns, 0.95)
    assert norm.lo.item() == pytest.approx(lo, rel=1e-4)
    assert norm.hi.item() == pytest.approx(hi, rel=1e-4)
    assert norm.scale().item() == pytest.approx(max(1.0, hi - lo), rel=1e-4)
    small = ReturnNormalizer()
    small.update(torch.full((100,), 0.3))
    assert small.scale().item() == 1.0  # never amplifies small returns


def test_replay_returns_use_real_rewards_and_stop_at_episode_ends():
    gamma, lam = 0.9, 0.8
    # one sequence: steps 0-2 of an episode that ends by termination at 2, then a new one (3-4)
    reward = torch.tensor([[0.0, 1.0, 2.0, 0.0, 5.0]])
    is_last = torch.tensor([[False, False, True, False, False]])
    is_terminal = is_last.clone()
    boot = torch.tensor([[10.0, 20.0, 30.0, 40.0, 50.0]])
    got = replay_returns(reward, is_last, is_terminal, boot, gamma, lam)
    g1 = 2.0  # the next state is terminal: nothing after its reward
    g0 = 1.0 + gamma * ((1 - lam) * 20.0 + lam * g1)
    g3 = 5.0 + gamma * 50.0  # the last step bootstraps
    torch.testing.assert_close(got[0, [0, 1, 3]], torch.tensor([g0, g1, g3]))
    # a time limit (last but not terminal) bootstraps from the imagined return instead of zero
    truncated = replay_returns(reward, is_last, torch.zeros_like(is_last), boot, gamma, lam)
    torch.testing.assert_close(truncated[0, 1], torch.tensor(2.0 + gamma * 30.0))


def test_categorical_samples_follow_their_probabilities():
    """200k draws from each of three distributions (two with a zero, first and last): every
    frequency within 5 standard errors of its probability, a zero-probability class never drawn."""
    torch.manual_seed(0)
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.0, 0.7, 0.1, 0.2], [0.25, 0.25, 0.5, 0.0]])
    draws = 200_000
    index = sample_index(probs.expand(draws, 3, 4))
    assert index.shape == (draws, 3) and index.dtype == torch.int64
    freq = torch.nn.functional.one_hot(index, 4).float().mean(0)
    stderr = (probs * (1 - probs) / draws).sqrt()
    assert ((freq - probs).abs() <= 5 * stderr + 1e-9).all(), freq
    assert freq[1, 0] == 0.0 and freq[2, 3] == 0.0


def test_categorical_sampling_survives_nan_probabilities():
    """A non-finite update's NaN probabilities give some index, not an error: the update is
    skipped by the non-finite guard, the run goes on."""
    index = sample_index(torch.full((3, 5), float("nan")))
    assert ((index >= 0) & (index < 5)).all()


def straight_through_latents(rows: int, groups: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities that require grad, and their straight-through one-hot samples [rows, groups *
    classes] (as the RSSM makes them), with every fifth row masked to zeros (an episode start)."""
    generator = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(rows, groups, classes, generator=generator), -1).requires_grad_()
    onehot = F.one_hot(sample_index(probs.detach()), classes).float()
    keep = (torch.arange(rows) % 5 != 0).float()[:, None]
    return probs, (onehot + probs - probs.detach()).flatten(-2) * keep


@pytest.mark.parametrize("rows", [ONEHOT_MIN_ROWS - 1, 3 * ONEHOT_MIN_ROWS])
def test_onehot_product_equals_the_dense_one_with_its_gradients(rows):
    groups, classes, out = 8, 16, 24
    weight = torch.randn(out, groups * classes, requires_grad=True)
    grad_out = torch.randn(rows, out)
    probs, x = straight_through_latents(rows, groups, classes)
    results = []
    for product in (lambda x: onehot_linear(x, weight, classes, torch.float32), lambda x: F.linear(x, weight)):
        y = product(x)
        y.backward(grad_out, retain_graph=True)
        results.append((y.detach(), probs.grad.clone(), weight.grad.clone()))
        probs.grad = weight.grad = None
    (y, grad_probs, grad_weight), (dense_y, dense_probs, dense_weight) = results
    torch.testing.assert_close(y, dense_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_probs, dense_probs, rtol=1e-5, atol=1e-5)  # straight-through: every class
    torch.testing.assert_close(grad_weight, dense_weight, rtol=1e-5, atol=1e-5)
    assert grad_probs[1].abs().min() > 0, "gradients reach the classes that were not drawn"


def test_onehot_inputs_of_many_rows_are_gathered_not_multiplied():
    mlp = MLP([8, OneHots(32, 32)], 64, 1, 5)
    deter, stoch = torch.randn(4 * ONEHOT_MIN_ROWS, 8), straight_through_latents(4 * ONEHOT_MIN_ROWS, 32, 32)[1].detach()
    with torch.no_grad(), profile(record_shapes=True) as prof:
        y = mlp(deter, stoch)
    events = prof.key_averages(group_by_input_shape=True)
    assert sum(e.count for e in events if e.key == "aten::embedding_bag") == 1
    widths = {shape[-1] for e in events if e.key in ("aten::mm", "aten::addmm") for shape in e.input_shapes if shape}
    assert 32 * 32 not in widths, f"a matmul multiplied the latent: inputs {widths}"
    dense = F.linear(deter, mlp.inputs[0].weight, mlp.inputs[0].bias) + F.linear(stoch, mlp.inputs[1].weight)
    expected = mlp.out(F.silu(mlp.norm0(dense)))
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_compiled_onehot_product_finds_the_same_entries_by_sums():
    """Compiled, the chosen entries are found by sums instead of a max: the same values (the
    straight-through ones, not rounded to 1) and indices, zeros for masked rows, and the same
    product (up to the order of its sums)."""
    rows, groups, classes = 2 * ONEHOT_MIN_ROWS, 8, 16
    x = straight_through_latents(rows, groups, classes)[1].detach()
    weight = torch.randn(24, groups * classes)
    assert (x != x.round()).any(), "some chosen entries are not exactly 1"
    compiled_entries = torch.compile(selected_entries, dynamic=False)(x, classes)
    eager_value, eager_index = selected_entries(x, classes)
    value, index = compiled_entries
    assert torch.equal(value, eager_value) and (value[::5] == 0).all()
    chosen = eager_value > 0  # a masked row's index does not matter: its entries weigh zero
    assert torch.equal(index[chosen], eager_index[chosen]) and index.dtype == eager_index.dtype
    compiled = torch.compile(lambda x: onehot_linear(x, weight, classes, torch.float32), dynamic=False)(x)
    torch.testing.assert_close(compiled, onehot_linear(x, weight, classes, torch.float32), rtol=0, atol=1e-6)


def test_onehot_product_under_bf16_autocast_matches_the_dense_one():
    torch.manual_seed(0)
    mlp = MLP([8, OneHots(8, 16)], 32, 1, 5)
    rows = 2 * ONEHOT_MIN_ROWS
    probs, stoch = straight_through_latents(rows, 8, 16)
    deter = torch.randn(rows, 8)
    first, latent = mlp.inputs
    results = []
    for forward in (lambda: mlp(deter, stoch), lambda: mlp.out(F.silu(mlp.norm0(first(deter) + F.linear(stoch, latent.weight))))):
        with torch.autocast("cpu", torch.bfloat16):
            y = forward()
        y.float().square().sum().backward(retain_graph=True)
        results.append((y, probs.grad.clone(), latent.weight.grad.clone()))
        probs.grad = latent.weight.grad = None
    (y, grad_probs, grad_weight), (dense_y, dense_probs, dense_weight) = results
    assert y.dtype == dense_y.dtype == torch.bfloat16 and grad_weight.dtype == torch.float32
    torch.testing.assert_close(y.float(), dense_y.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(grad_weight, dense_weight, rtol=5e-2, atol=5e-2 * dense_weight.abs().max().item())
    torch.testing.assert_close(grad_probs, dense_probs, rtol=5e-2, atol=5e-2 * dense_probs.abs().max().item())


def channel_maps(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    torch.manual_seed(0)
    return (3 * torch.randn(4, 8, 6, 5) + 1).to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channel_norm_is_layer_norm_over_the_channels_with_its_gradients(dtype):
    norm = ChannelNorm(8)
    with torch.no_grad():
        norm.norm.weight.uniform_(0.5, 1.5)
        norm.norm.bias.uniform_(-0.5, 0.5)
    results = []
    for forward in (norm, lambda x: F.layer_norm(x.permute(0, 2, 3, 1), (8,), norm.norm.weight, norm.norm.bias, 1e-3).permute(0, 3, 1, 2)):
        x = channel_maps(dtype)
        y = forward(x)
        (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append((y, x.grad, norm.norm.weight.grad.clone(), norm.norm.bias.grad.clone()))
        norm.zero_grad()
    (y, *grads), (expected, *expected_grads) = results
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    assert (y.float().mean(1).abs().max() < 0.6) and y.float().std(1).mean() > 0.5, "normalised over the channels"
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_channel_norm_operator_passes_torchs_checks_and_stays_one_call_when_compiled():
    norm = ChannelNorm(8)
    x = channel_maps()
    torch.library.opcheck(channel_layer_norm, (x, norm.norm.weight, norm.norm.bias, 1e-3))
    compiled = torch.compile(lambda x: F.silu(norm(x)).square().sum())
    with profile() as prof:
        loss = compiled(x)
        loss.backward()
    calls = {e.key: e.count for e in prof.key_averages()}
    assert calls.get("aten::native_layer_norm") == 1 and calls.get("aten::native_layer_norm_backward") == 1, "aten's kernels, not Inductor's"
    eager_grad = x.grad.clone()
    x.grad = None
    torch.testing.assert_close(loss, F.silu(norm(x)).square().sum())
    F.silu(norm(x)).square().sum().backward()
    torch.testing.assert_close(eager_grad, x.grad)
