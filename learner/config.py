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

# How data-parallel learners scale the batch and learning rates (learner/distributed.py GroupShape).
SCALING_RULES = ("rllib", "linear", "split")

# Models narrower than XS are test-sized: too small for bf16 casts or a compile to pay back on a
# CPU (a deter-32 update took 39 % longer in bf16; XS's took 26 % less).
MIN_CPU_SPEEDUP_DETER = 256


@dataclass
class ModelConfig:
    """Network sizes: `size` picks a preset; any field set here overrides it."""

    size: str = "S"  # a row of DreamerV3's size table (SIZES): debug | XS | S | M | L | XL
    deter: int | None = None  # recurrent (GRU) state units (null: from size)
    hidden: int | None = None  # units of every MLP layer (null: from size)
    layers: int | None = None  # layers of every MLP (null: from size)
    cnn_depth: int | None = None  # channels of the first image conv layer, doubling at each halving of the resolution (null: from size)
    stoch: int | None = None  # categorical variables of the stochastic latent (null: from size)
    classes: int | None = None  # classes of each categorical variable (null: from size)
    unimix: float = 0.01  # share of uniform mixed into the latent and discrete action distributions
    reward_bins: int = 255  # two-hot bins of the reward and critic heads (symlog space)

    def resolved(self) -> dict[str, int]:
        if self.size not in SIZES:
            raise ValueError(f"unknown model size {self.size!r}; choose one of {', '.join(SIZES)}")
        dims = dict(SIZES[self.size])
        dims.update({k: v for k, v in asdict(self).items() if k in dims and v is not None})
        return dims


@dataclass
class HarmonyConfig:
    """Which harmonizer, and the constant weights of `fixed` mode and of unharmonized tasks."""

    mode: str = "rectified"  # rectified | unrectified (learned loss scales) | naive (each loss over its own value) | fixed (`weights`) | off (DreamerV3's)
    # The reference keeps the continue loss at weight 1 instead of harmonizing it.
    harmonize_continue: bool = False
    # Constant weight per task: of every task in `fixed` mode, of the tasks not harmonized (continue)
    # in the others; `off` uses DreamerV3's.
    weights: dict[str, float] = field(
        default_factory=lambda: {"observation": 1.0, "reward": 1.0, "dynamics": 0.6, "continue": 1.0}
    )
    # Adam learning rate of the learned sigmas (null: the world model's, as in the paper). Under
    # Adam a log-sigma moves about this much per update, so at 1e-4 a sigma whose equilibrium is
    # 100x its start needs ~50,000 updates; a larger one lets short runs reach the equilibrium
    # (an experiment option: on Catch, settled sigmas kept the image unlearned, bench/README.md).
    lr: float | None = None

    def sigma_lr(self, world_model_lr: float) -> float:
        """The sigmas' learning rate, given the world model's."""
        return world_model_lr if self.lr is None else self.lr


@dataclass
class WorldModelConfig:
    lr: float = 1e-4  # Adam learning rate of the world model
    eps: float = 1e-8  # Adam epsilon of the world model
    grad_clip: float = 1000.0  # gradient norm clip of the world model
    free_nats: float = 1.0  # KLs below this many nats are not penalized (both dynamics and representation)
    dyn_scale: float = 0.5  # weight of the dynamics KL (trains the prior) within the dynamics task, relative to rep_scale
    rep_scale: float = 0.1  # weight of the representation KL (trains the posterior) within the dynamics task, relative to dyn_scale
    # Weight of terminal steps in the continue loss. They are rare (one per episode at most), so
    # a head trained at 1 (DreamerV3) may never learn the rarer ways to end an episode.
    terminal_weight: float = 1.0


@dataclass
class BehaviorConfig:
    horizon: int = 15  # imagined steps from each replayed state
    discount_horizon: float = 333.0  # discount = 1 - 1 / discount_horizon
    lam: float = 0.95  # lambda of the lambda-returns
    entropy: float = 3e-4  # scale of the actor's entropy bonus
    actor_lr: float = 3e-5  # Adam learning rate of the actor
    critic_lr: float = 3e-5  # Adam learning rate of the critic
    eps: float = 1e-5  # Adam epsilon of the actor and the critic
    grad_clip: float = 100.0  # gradient norm clip of the actor and of the critic, each
    slow_critic_fraction: float = 0.02  # fraction of the way the slow critic (an EMA of the critic's weights) moves to the critic per update
    slow_critic_reg: float = 1.0  # weight of the critic's loss towards the slow critic's values
    # weight of the critic's loss on replayed states against real-reward returns (0 = off)
    replay_critic_scale: float = 0.3
    return_norm_decay: float = 0.99  # decay of the moving 5th-95th percentile range of returns that scales advantages
    # auto: REINFORCE for discrete actions, backprop through the model for continuous ones.
    actor_grad: str = "auto"
    # How imagination discounts by the continue head: `mode` (DreamerV3: 0 or 1) or `probability`
    # (DreamerV2: the predicted chance), which still tells the actor about a termination the
    # model thinks unlikely, e.g. at a track's edge that replay rarely shows.
    imagined_continue: str = "mode"
    min_std: float = 0.1  # continuous actions: the policy's smallest standard deviation
    max_std: float = 1.0  # continuous actions: the policy's largest standard deviation


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
    # Compiled, the observe scan and the imagination run in equal windows of at most this many
    # steps, one program each (forward and backward). Longer windows dispatch fewer operators and
    # take longer to compile: at XS on a 2-core CPU 8 dispatched ~1,770 fewer aten ops per update
    # than 1 and ran ~4 % faster, compiling ~40 s longer; 16 ran no faster and compiled ~150 s
    # longer still.
    compile_window: int = 8
