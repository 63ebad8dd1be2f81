"""`agent.precision: auto` picks bf16 only where the hardware computes in bf16, and says why."""
from __future__ import annotations

import pytest
import torch

from learner.agent import Agent
from learner.config import AgentConfig, ModelConfig
from learner.precision import CpuFeatures, choose_precision
from learner.spaces import ActionSpec, ObservationSpec
from system.config import load_config, presets

CPU = torch.device("cpu")
AVX2_ONLY = CpuFeatures(amx=False, avx512_bf16=False)


@pytest.mark.parametrize(
    "features,expected",
    [
        (AVX2_ONLY, "fp32"),
        (CpuFeatures(amx=True, avx512_bf16=True), "bf16"),  # Sapphire Rapids and later
        (CpuFeatures(amx=False, avx512_bf16=True), "bf16"),  # Zen 4, Cooper Lake
    ],
)
def test_auto_follows_the_cpus_bf16_units(features, expected):
    choice = choose_precision("auto", CPU, 256, features)
    assert choice.precision == expected
    assert choice.reason.startswith("auto:")


def test_an_explicit_precision_is_kept_whatever_the_hardware():
    assert choose_precision("bf16", CPU, 32, AVX2_ONLY).precision == "bf16"
    assert choose_precision("fp32", CPU, 512, CpuFeatures(amx=True, avx512_bf16=True)).precision == "fp32"
    with pytest.raises(ValueError, match="agent.precision must be auto, bf16 or fp32"):
        choose_precision("fp16", CPU, 512, AVX2_ONLY)


def test_agent_on_an_avx2_only_cpu_trains_in_fp32(monkeypatch):
    """What `make demo` gets on a CPU without bf16 units: fp32, and the reason for the log."""
    monkeypatch.setattr(CpuFeatures, "detect", classmethod(lambda cls: AVX2_ONLY))
    config = AgentConfig(model=ModelConfig(size="XS"), compile="off")
    agent = Agent(ObservationSpec({"vector": (4,)}), ActionSpec("discrete", (2,)), config, device="cpu")
    assert not agent.bf16 and agent.precision.precision == "fp32"
    assert "no bf16 units" in agent.precision.reason
    monkeypatch.setattr(CpuFeatures, "detect", classmethod(lambda cls: CpuFeatures(amx=True, avx512_bf16=False)))
    agent = Agent(ObservationSpec({"vector": (4,)}), ActionSpec("discrete", (2,)), config, device="cpu")
    assert agent.bf16 and "AMX" in agent.precision.reason


def test_test_sized_models_stay_fp32_on_a_cpu():
    """bf16 casts cost more than tiny matrices save (a deter-32 update: 39 % slower)."""
    choice = choose_precision("auto", CPU, 32, CpuFeatures(amx=True, avx512_bf16=True))
    assert choice.precision == "fp32" and "test-sized" in choice.reason


def test_detection_reads_this_machine():
    features = CpuFeatures.detect()
    assert isinstance(features.amx, bool) and isinstance(features.avx512_bf16, bool)


@pytest.mark.parametrize("preset", presets())
def test_no_preset_forces_a_precision(preset):
    assert load_config(preset).agent.precision == "auto"
