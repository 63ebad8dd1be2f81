"""DreamerV3 world model whose losses are one named dict, combined by the harmonizer.

Each raw loss belongs to one harmonizer task with a fixed share inside it (`LOSS_TASKS`): every
observation decoder to `observation`, the two KL terms to `dynamics` split 5:1 as in the
reference (0.5/0.6 and 0.1/0.6, so that `off` mode with dynamics weight 0.6 gives DreamerV3's
0.5 and 0.1). Nothing below branches on a loss name.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from learner.config import AgentConfig
from learner.harmonizer import Harmonizer
from learner.nets import MLP, ImageDecoder, ImageEncoder, Input, TwoHotSymlog, reward_bins
from learner.numerics import symlog
from learner.rssm import RSSM, categorical_kl
from learner.spaces import ActionSpec, ObservationSpec

# DreamerV3's task weights: what the `off` mode uses.
DREAMERV3_WEIGHTS = {"observation": 1.0, "reward": 1.0, "dynamics": 0.6, "continue": 1.0}
TASKS = ("observation", "reward", "dynamics", "continue")


@dataclass
class Posterior:
    """Filtered states of a batch of sequences, the starting points for imagination."""

    deter: Tensor  # [B, T, D]
    stoch: Tensor  # [B, T, Z]


class Encoder(nn.Module):
    """CNN over the (channel-stacked) image keys and an MLP over the symlog'd vector keys."""

    def __init__(self, spec: ObservationSpec, hidden: int, layers: int, depth: int):
        super().__init__()
        self.image_keys, self.vector_keys = spec.image_keys, spec.vector_keys
        self.out_dim = 0
        if self.image_keys:
            shape = spec.shapes[self.image_keys[0]]
            channels = sum(spec.shapes[k][2] for k in self.image_keys)
            self.cnn = ImageEncoder(channels, shape[0], depth)
            self.out_dim += self.cnn.out_dim
        if self.vector_keys:
            self.mlp = MLP([sum(spec.shapes[k][0] for k in self.vector_keys)], hidden, layers)
            self.out_dim += hidden

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        """Observations with any leading dims [...] -> embeddings [..., out_dim]."""
        key = (self.image_keys or self.vector_keys)[0]
        lead = obs[key].shape[: obs[key].dim() - (3 if self.image_keys else 1)]
        parts = []
        if self.image_keys:
            image = torch.cat([obs[k] for k in self.image_keys], -1) if len(self.image_keys) > 1 else obs[self.image_keys[0]]
            parts.append(self.cnn(image.reshape(-1, *image.shape[-3:])))
        if self.vector_keys:
            vector = torch.cat([obs[k].float() for k in self.vector_keys], -1)
            parts.append(self.mlp(symlog(vector.reshape(-1, vector.shape[-1]))))
        embed = torch.cat(parts, -1) if len(parts) > 1 else parts[0]
        return embed.reshape(*lead, -1)


class Decoder(nn.Module):
    """Predicts every observation key from the model state; returns one loss per key."""

    def __init__(self, spec: ObservationSpec, feat_dims: list[Input], hidden: int, layers: int, depth: int):
        super().__init__()
        self.spec = spec
        self.image_keys, self.vector_keys = spec.image_keys, spec.vector_keys
        if self.image_keys:
            shape = spec.shapes[self.image_keys[0]]
            self.channels = [spec.shapes[k][2] for k in self.image_keys]
            self.cnn = ImageDecoder(feat_dims, sum(self.channels), shape[0], depth)
        if self.vector_keys:
            self.sizes = [spec.shapes[k][0] for k in self.vector_keys]
            self.mlp = MLP(feat_dims, hidden, layers, sum(self.sizes))

    def losses(self, deter: Tensor, stoch: Tensor, obs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Sum of squared errors per step [B, T] (images in [-0.5, 0.5], vectors in symlog space):
        the image loss is a sum over pixels, as in the reference; the caller averages over batch
        and time."""
        losses: dict[str, Tensor] = {}
        lead = deter.shape[:2]
        flat_deter, flat_stoch = deter.flatten(0, 1), stoch.flatten(0, 1)
        if self.image_keys:
            pred = self.cnn(flat_deter, flat_stoch).float()
            for key, part in zip(self.image_keys, pred.split(self.channels, -1)):
                target = obs[key].flatten(0, 1).float() / 255.0 - 0.5
                losses[key] = _sum_squares(part, target).reshape(lead)
        if self.vector_keys:
            pred = self.mlp(flat_deter, flat_stoch).float()
            for key, part in zip(self.vector_keys, pred.split(self.sizes, -1)):
                target = symlog(obs[key].flatten(0, 1).float())
                losses[key] = _sum_squares(part, target).reshape(lead)
        return losses


def _sum_squares(pred: Tensor, target: Tensor) -> Tensor:
    """[N, ...] predictions and targets -> [N] sums of squared errors."""
    return (pred - target).square().flatten(1).sum(-1)


def build_encoder(obs_spec: ObservationSpec, config: AgentConfig) -> Encoder:
    """The encoder at the configured size: one builder for the world model and the policy agent,
    so that what the learner trains and what runners load are the same network."""
    dims = config.model.resolved()
    return Encoder(obs_spec, dims["hidden"], dims["layers"], dims["cnn_depth"])


def build_rssm(embed_dim: int, act_spec: ActionSpec, config: AgentConfig) -> RSSM:
    """The RSSM at the configured size (shared by the world model and the policy agent)."""
    dims = config.model.resolved()
    return RSSM(embed_dim, act_spec.model_dim, dims["deter"], dims["hidden"], dims["stoch"], dims["classes"], config.model.unimix)


class WorldModel(nn.Module):
    def __init__(self, obs_spec: ObservationSpec, act_spec: ActionSpec, config: AgentConfig):
        super().__init__()
        dims = config.model.resolved()
        self.config = config
        self.act_spec = act_spec
        self.encoder = build_encoder(obs_spec, config)
        self.rssm = build_rssm(self.encoder.out_dim, act_spec, config)
        feat = self.rssm.features
        self.decoder = Decoder(obs_spec, feat, dims["hidden"], dims["layers"], dims["cnn_depth"])
        self.reward_head = MLP(feat, dims["hidden"], dims["layers"], config.model.reward_bins, zero_out=True)
        self.continue_head = MLP(feat, dims["hidden"], dims["layers"], 1)
        self.register_buffer("bins", reward_bins(config.model.reward_bins), persistent=False)
        wm = config.world_model
        dyn_share = wm.dyn_scale + wm.rep_scale
        # raw loss name -> (harmonizer task, share of that task)
        self.loss_tasks: dict[str, tuple[str, float]] = {
            **{key: ("observation", 1.0) for key in obs_spec.shapes},
            "reward": ("reward", 1.0),
            "continue": ("continue", 1.0),
            "dyn": ("dynamics", wm.dyn_scale / dyn_share),
            "rep": ("dynamics", wm.rep_scale / dyn_share),
        }
        # raw loss name -> its weight in the replay priority: DreamerV3's fixed loss scales
        self.priority_weights = {name: DREAMERV3_WEIGHTS[task] * share for name, (task, share) in self.loss_tasks.items()}
        harmony = config.harmony
        harmonized = [t for t in TASKS if t != "continue" or harmony.harmonize_continue]
        weights = DREAMERV3_WEIGHTS if harmony.mode == "off" else harmony.weights
        self.harmonizer = Harmonizer(TASKS, harmony.mode, weights, harmonized)

    def reward(self, deter: Tensor, stoch: Tensor) -> TwoHotSymlog:
        return TwoHotSymlog(self.reward_head(deter, stoch), self.bins)

    def continue_logits(self, deter: Tensor, stoch: Tensor) -> Tensor:
        return self.continue_head(deter, stoch).squeeze(-1).float()

    def loss(self, data: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], Posterior]:
        """data: observation keys, `action` (model form [B, T, A]), `reward`, `is_first`,
        `is_terminal`, all [B, T, ...]."""
        total, metrics, posterior, _ = self.loss_and_priority(data)
        return total, metrics, posterior

    def loss_and_priority(self, data: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], Posterior, Tensor]:
        """`loss`, plus each sequence's replay priority [B] (see `losses`)."""
        obs = {key: data[key] for key in self.decoder.spec.shapes}
        embed = self.encoder(obs)
        deter, stoch, post_logits = self.rssm.observe(embed, data["action"], data["is_first"])
        total, metrics, priority = self.losses(deter, stoch, post_logits, data)
        return total, metrics, Posterior(deter.detach(), stoch.detach()), priority

    def losses(
        self, deter: Tensor, stoch: Tensor, post_logits: Tensor, data: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Every loss of the filtered sequences, combined by the harmonizer (the part of `loss`
        after the observe scan, compiled as one unit), and the replay priority of each sequence.

        Each raw loss is first computed per step [B, T]; the reported and trained losses are their
        means. The priority [B] (detached float32) is the mean over time of the per-step world-model
        loss, weighted with DreamerV3's fixed scales (decoders, reward and continue 1, dyn 0.5,
        rep 0.1 with the default shares) and not with the harmonizer's: those are learned and
        drift, which would make priorities sent at different times incomparable. As in DreamerV3's
        prioritised replay, sequences the model still predicts badly (high reconstruction, reward
        or continue error, or a posterior far from the prior, i.e. surprise) are replayed more;
        ones it has learned (losses at their floor, KLs clipped at the free nats) less."""
        obs = {key: data[key] for key in self.decoder.spec.shapes}
        prior_logits = self.rssm.prior_logits(deter)
        post, prior = self.rssm.dist(post_logits), self.rssm.dist(prior_logits)
        post_sg, prior_sg = self.rssm.dist(post_logits.detach()), self.rssm.dist(prior_logits.detach())
        free = self.config.world_model.free_nats
        steps = self.decoder.losses(deter, stoch, obs)  # raw loss name -> [B, T]
        steps["reward"] = -self.reward(deter, stoch).log_prob(data["reward"])
        cont_target = (~data["is_terminal"]).float()
        terminal_weight = 1.0 + (self.config.world_model.terminal_weight - 1.0) * data["is_terminal"].float()
        steps["continue"] = F.binary_cross_entropy_with_logits(
            self.continue_logits(deter, stoch), cont_target, weight=terminal_weight, reduction="none"
        )
        steps["dyn"] = torch.clamp(categorical_kl(post_sg, prior), min=free)
        steps["rep"] = torch.clamp(categorical_kl(post, prior_sg), min=free)
        raw = {name: value.mean() for name, value in steps.items()}
        task_losses = {task: torch.zeros((), device=deter.device) for task in TASKS}
        for name, value in raw.items():
            task, share = self.loss_tasks[name]
            task_losses[task] = task_losses[task] + share * value
        total, metrics = self.harmonizer(task_losses)
        metrics.update({f"loss/{name}": value.detach() for name, value in raw.items()})
        metrics["world_model/loss"] = total.detach()
        metrics["world_model/post_entropy"] = -(post.probs * post.log_probs).sum((-2, -1)).mean().detach()
        per_step = sum(self.priority_weights[name] * value.detach().float() for name, value in steps.items())
        priority = per_step.mean(-1)
        return total, metrics, priority
