"""The harmonizer's value and gradients per mode, against closed forms."""
import math

import pytest
import torch

from learner.harmonizer import Harmonizer, rectified_equilibrium

TASKS = ("observation", "reward", "dynamics")


def losses(values):
    return {t: torch.tensor(v, requires_grad=True) for t, v in zip(TASKS, values)}


def set_log_sigma(h: Harmonizer, values):
    with torch.no_grad():
        for task, value in zip(TASKS, values):
            h.log_sigma[task].fill_(value)


@pytest.mark.parametrize("mode", ["rectified", "unrectified"])
def test_learnable_modes_value_and_gradients(mode):
    h = Harmonizer(TASKS, mode)
    s = [0.3, -1.2, 2.0]
    set_log_sigma(h, s)
    L = losses([12288.0, 0.7, 3.0])
    total, metrics = h(L)
    reg = (lambda si: math.log1p(math.exp(si))) if mode == "rectified" else (lambda si: si)
    expected = sum(l.item() * math.exp(-si) + reg(si) for l, si in zip(L.values(), s))
    assert total.item() == pytest.approx(expected, rel=1e-5)
    total.backward()
    for (task, l), si in zip(L.items(), s):
        assert l.grad.item() == pytest.approx(math.exp(-si), rel=1e-5)  # d/dL = 1/sigma
        sigma = math.exp(si)
        dreg = sigma / (1 + sigma) if mode == "rectified" else 1.0
        assert h.log_sigma[task].grad.item() == pytest.approx(-l.item() / sigma + dreg, rel=1e-4)
        assert metrics[f"harmony/{task}/sigma"].item() == pytest.approx(sigma, rel=1e-6)
        assert metrics[f"harmony/{task}/weighted"].item() == pytest.approx(l.item() / sigma, rel=1e-5)


def test_sigma_initialised_to_one():
    h = Harmonizer(TASKS)
    assert h.sigmas() == {t: 1.0 for t in TASKS}
    assert {n for n, _ in h.named_parameters()} == {f"log_sigma.{t}" for t in TASKS}


def test_naive_mode_divides_by_stopped_loss():
    h = Harmonizer(TASKS, "naive")
    L = losses([500.0, 2.0, 0.25])
    total, _ = h(L)
    assert total.item() == pytest.approx(3.0)
    total.backward()
    for l in L.values():
        assert l.grad.item() == pytest.approx(1.0 / l.item())
    assert list(h.parameters()) == []


@pytest.mark.parametrize("mode", ["fixed", "off"])
def test_constant_weight_modes(mode):
    weights = {"observation": 2.0, "reward": 10.0, "dynamics": 0.6}
    h = Harmonizer(TASKS, mode, weights)
    L = losses([3.0, 0.5, 4.0])
    total, _ = h(L)
    assert total.item() == pytest.approx(2 * 3 + 10 * 0.5 + 0.6 * 4)
    total.backward()
    assert [l.grad.item() for l in L.values()] == pytest.approx([2.0, 10.0, 0.6])
    assert list(h.parameters()) == []


def test_unharmonized_task_keeps_its_weight():
    h = Harmonizer(("observation", "continue"), "rectified", {"continue": 1.0}, harmonized=["observation"])
    total, metrics = h({"observation": torch.tensor(8.0), "continue": torch.tensor(0.3)})
    assert total.item() == pytest.approx(8.0 + math.log(2.0) + 0.3)
    assert "harmony/continue/sigma" not in metrics


@pytest.mark.parametrize("loss", [0.05, 1.0, 7.0, 12288.0])
def test_rectified_sigma_converges_to_closed_form(loss):
    h = Harmonizer(["task"], "rectified")
    opt = torch.optim.Adam(h.parameters(), lr=0.1, betas=(0.9, 0.99))
    for _ in range(3000):
        total, _ = h({"task": torch.tensor(loss)})
        opt.zero_grad()
        total.backward()
        opt.step()
    sigma = h.sigmas()["task"]
    target = rectified_equilibrium(loss)
    assert sigma == pytest.approx(target, rel=1e-2)
    assert sigma**2 == pytest.approx(loss * (1 + sigma), rel=2e-2)
    assert loss / sigma < 1.0  # each weighted loss settles below one


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="unknown harmonizer mode"):
        Harmonizer(TASKS, "softmax")
    with pytest.raises(ValueError, match="unknown tasks"):
        Harmonizer(TASKS, "fixed", {"image": 1.0})
    with pytest.raises(ValueError, match="expects losses"):
        Harmonizer(TASKS)({"observation": torch.tensor(1.0)})
