"""The agent's hyperparameters: one dataclass tree, defaults as in DreamerV3 / HarmonyDream.

These dataclasses double as the schema of the `agent:` section of the YAML configs, so a wrong key
or type there is caught by the config library before anything runs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

# DreamerV3's size table (recurrent units, CNN depth, dense units, MLP layers) plus our tiny
# debug size for tests; stochastic latents stay 32 x 32 except in debug.
SIZES: dict[str, dict[str, int]] = {
    "debug": dict(deter=32, hidden=32, layers=1, cnn_depth=4, stoch=4, classes=4),
    "XS": dict(deter=256, hidden=256, layers=1, cnn_depth=24, stoch=32, classes=32),
    "S": dict(deter=512, hidden=512, layers=2, cnn_depth=32, stoch=32, classes=32),
    "M": dict(deter=1024, hidden=640, layers=3, cnn_depth=48, stoch=32, classes=32),
    "L": dict(deter=2048, hidden=768, layers=4, cnn_depth=64, stoch=32, classes=32),
    "XL": dict(deter=4096, hidden=1024, layers=5, cnn_depth=96, stoch=32, classes=32),
}

# Models narrower than XS are test-sized: too small for bf16 casts or a compile to pay back on a
# CPU (a deter-32 update took 39 % longer in bf16; XS's took 26 % less).
MIN_CPU_SPEEDUP_DETER = 256


@dataclass
class ModelConfig:
    """Network sizes: `size` picks a preset; any field set here overrides it."""

    size: str = "S"
    deter: int | None = None
    hidden: int | None = None
    layers: int | None = None
    cnn_depth: int | None = None
    stoch: int | None = None
    classes: int | None = None
    unimix: float = 0.01
    reward_bins: int = 255

    def resolved(self) -> dict[str, int]:
        if self.size not in SIZES:
            raise ValueError(f"unknown model size {self.size!r}; choose one of {', '.join(SIZES)}")
        dims = dict(SIZES[self.size])
        dims.update({k: v for k, v in asdict(self).items() if k in dims and v is not None})
        return dims


@dataclass
class HarmonyConfig:
    """Which harmonizer, and the constant weights of `fixed` mode and of unharmonized tasks."""

    mode: str = "rectified"
    # The reference keeps the continue loss at weight 1 instead of harmonizing it.
    harmonize_continue: bool = False
    weights: dict[str, float] = field(
        default_factory=lambda: {"observation": 1.0, "reward": 1.0, "dynamics": 0.6, "continue": 1.0}
    )


@dataclass
class WorldModelConfig:
    lr: float = 1e-4
    eps: float = 1e-8
    grad_clip: float = 1000.0
    free_nats: float = 1.0
    dyn_scale: float = 0.5
    rep_scale: float = 0.1
    # Weight of terminal steps in the continue loss. They are rare (one per episode at most), so
    # a head trained at 1 (DreamerV3) may never learn the rarer ways to end an episode.
    terminal_weight: float = 1.0


@dataclass
class BehaviorConfig:
    horizon: int = 15
    discount_horizon: float = 333.0
    lam: float = 0.95
    entropy: float = 3e-4
    actor_lr: float = 3e-5
    critic_lr: float = 3e-5
    eps: float = 1e-5
    grad_clip: float = 100.0
    slow_critic_fraction: float = 0.02
    slow_critic_reg: float = 1.0
    # weight of the critic's loss on replayed states against real-reward returns (0 = off)
    replay_critic_scale: float = 0.3
    return_norm_decay: float = 0.99
    # auto: REINFORCE for discrete actions, backprop through the model for continuous ones.
    actor_grad: str = "auto"
    # How imagination discounts by the continue head: `mode` (DreamerV3: 0 or 1) or `probability`
    # (DreamerV2: the predicted chance), which still tells the actor about a termination the
    # model thinks unlikely, e.g. at a track's edge that replay rarely shows.
    imagined_continue: str = "mode"
    min_std: float = 0.1
    max_std: float = 1.0


@dataclass
class AgentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    harmony: HarmonyConfig = field(default_factory=HarmonyConfig)
    world_model: WorldModelConfig = field(default_factory=WorldModelConfig)
    behavior: BehaviorConfig = field(default_factory=BehaviorConfig)
    # auto = CUDA when present.
    device: str = "auto"
    # auto = bf16 autocast where the device computes in bf16 natively (GPUs with bf16 tensor
    # cores, CPUs with AMX or AVX512-BF16), fp32 elsewhere (learner/precision.py); or bf16 | fp32.
    precision: str = "auto"
    # auto = compile the train step and the policy step where that measured faster (everything on
    # CUDA; on a CPU per step and observation kind: learner/compiler.py); or on | off. `off` is
    # the eager reference.
    compile: str = "auto"
    compile_cache: str = "~/.cache/harmonyray/inductor"  # compiled programs, reused by later runs
