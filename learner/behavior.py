"""Actor-critic trained on trajectories imagined by the world model (DreamerV3, section 3).

Per update the actor runs once per imagined step (it chooses the actions there), the critic once
over all imagined states with gradients and the slow critic once without; everything else the
losses need is read off those passes.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from learner.config import AgentConfig
from learner.nets import MLP, Input, TwoHotSymlog, reward_bins, sample_index, window_length
from learner.numerics import ReturnNormalizer, lambda_returns, replay_returns
from learner.spaces import ActionSpec
from learner.world_model import Posterior, WorldModel


class PolicyDist:
    """The actor's action distribution, over model-form actions (one-hots or vectors)."""

    def __init__(self, out: Tensor, spec: ActionSpec, unimix: float, min_std: float, max_std: float):
        self.spec = spec
        out = out.float()
        if spec.kind == "continuous":
            mean, std = out.chunk(2, -1)
            self.normal = torch.distributions.Normal(torch.tanh(mean), (max_std - min_std) * torch.sigmoid(std + 2.0) + min_std)
        else:
            self.log_probs = []
            for logits in out.split(list(spec.sizes), -1):
                probs = (1.0 - unimix) * torch.softmax(logits, -1) + unimix / logits.shape[-1]
                self.log_probs.append(torch.log(probs))

    def sample(self) -> Tensor:
        """Reparameterised for continuous actions; plain one-hot samples for discrete ones."""
        if self.spec.kind == "continuous":
            return self.normal.rsample()
        return self._onehot([sample_index(lp.detach().exp()) for lp in self.log_probs])

    def mode(self) -> Tensor:
        if self.spec.kind == "continuous":
            return self.normal.mean
        return self._onehot([lp.argmax(-1) for lp in self.log_probs])

    def log_prob(self, action: Tensor) -> Tensor:
        if self.spec.kind == "continuous":
            return self.normal.log_prob(action).sum(-1)
        parts = action.split(list(self.spec.sizes), -1)
        return sum((p * lp).sum(-1) for p, lp in zip(parts, self.log_probs))

    def entropy(self) -> Tensor:
        if self.spec.kind == "continuous":
            return self.normal.entropy().sum(-1)
        return sum(-(lp.exp() * lp).sum(-1) for lp in self.log_probs)

    def to_env(self, action: Tensor) -> Tensor:
        """Model-form actions to what the environment takes (indices, or clipped vectors)."""
        if self.spec.kind == "continuous":
            return action.clamp(-1.0, 1.0)
        index = torch.stack([p.argmax(-1) for p in action.split(list(self.spec.sizes), -1)], -1)
        return index.squeeze(-1) if self.spec.kind == "discrete" else index

    def _onehot(self, picks: list[Tensor]) -> Tensor:
        return torch.cat([F.one_hot(i, n).float() for i, n in zip(picks, self.spec.sizes)], -1)


class Actor(MLP):
    """The policy network and its action distribution: trained inside ActorCritic, and all of the
    behavior that a runner needs to act (learner/policy_agent.py). An MLP with no parameters of
    its own, so its weights keep the MLP's names."""

    def __init__(self, feat_dims: list[Input], act_spec: ActionSpec, config: AgentConfig):
        dims = config.model.resolved()
        out = 2 * act_spec.model_dim if act_spec.kind == "continuous" else act_spec.model_dim
        super().__init__(feat_dims, dims["hidden"], dims["layers"], out)
        self.act_spec = act_spec
        self.unimix, self.min_std, self.max_std = config.model.unimix, config.behavior.min_std, config.behavior.max_std

    def dist(self, deter: Tensor, stoch: Tensor) -> PolicyDist:
        return PolicyDist(self(deter, stoch), self.act_spec, self.unimix, self.min_std, self.max_std)


class ActorCritic(nn.Module):
    def __init__(self, feat_dims: list[Input], act_spec: ActionSpec, config: AgentConfig):
        super().__init__()
        dims = config.model.resolved()
        self.cfg = config.behavior
        self.actor = Actor(feat_dims, act_spec, config)
        self.critic = MLP(feat_dims, dims["hidden"], dims["layers"], config.model.reward_bins, zero_out=True)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.return_norm = ReturnNormalizer(self.cfg.return_norm_decay)
        self.register_buffer("bins", reward_bins(config.model.reward_bins), persistent=False)
        grad = self.cfg.actor_grad
        if grad not in ("auto", "reinforce", "backprop"):
            raise ValueError(f"behavior.actor_grad must be auto, reinforce or backprop, not {grad!r}")
        self.backprop = grad == "backprop" or (grad == "auto" and act_spec.kind == "continuous")
        # At most this many imagined steps per `imagine_window` call (None: the whole
        # horizon, as the eager reference runs); the agent sets it when it compiles
        # (`agent.compile_window`).
        self.window: int | None = None
        if self.cfg.imagined_continue not in ("mode", "probability"):
            raise ValueError(f"behavior.imagined_continue must be mode or probability, not {self.cfg.imagined_continue!r}")
        self.soft_continue = self.cfg.imagined_continue == "probability"

    def policy(self, deter: Tensor, stoch: Tensor) -> PolicyDist:
        return self.actor.dist(deter, stoch)

    def loss(self, wm: WorldModel, start: Posterior, replay: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Imagine `horizon` steps from every posterior state and return actor + critic losses.

        `replay` holds the replayed sequences' `reward`, `is_last` and `is_terminal` [B, T]: the
        critic also learns from their real returns (DreamerV3's replay value loss)."""
        first_deter, first_stoch = deter, stoch = start.deter.flatten(0, 1), start.stoch.flatten(0, 1)
        parts = []
        step = window_length(self.cfg.horizon, self.window)
        for _ in range(0, self.cfg.horizon, step):
            parts.append(self.imagine_window(wm, deter, stoch, step))
            deter, stoch = parts[-1][0][-1], parts[-1][1][-1]
        # [H+1, N, ...] states, each copied once (the stochastic ones are [N, 1024] per step at
        # XS), and [H, N] log-probabilities and entropies of the actions taken
        deters, stochs, logps, ents = zip(*parts)
        deter_all, stoch_all = torch.cat([first_deter[None], *deters]), torch.cat([first_stoch[None], *stochs])
        logps, ents = torch.cat(logps), torch.cat(ents)
        return self.trajectory_loss(wm, deter_all, stoch_all, logps, ents, replay)

    def imagine_window(self, wm: WorldModel, deter: Tensor, stoch: Tensor, steps: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """`imagine_step` `steps` times: the unit the agent compiles, so that a compiled rollout is
        H / steps calls. Returns the next `steps` states, log-probabilities and entropies, stacked
        [steps, N, ...]."""
        deters, stochs, logps, ents = [], [], [], []
        for _ in range(steps):
            deter, stoch, logp, ent = self.imagine_step(wm, deter, stoch)
            deters.append(deter)
            stochs.append(stoch)
            logps.append(logp)
            ents.append(ent)
        return torch.stack(deters), torch.stack(stochs), torch.stack(logps), torch.stack(ents)

    def imagine_step(self, wm: WorldModel, deter: Tensor, stoch: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The actor acts in an imagined state and the model predicts the next one. Returns the
        next state and the action's log-probability and the policy's entropy."""
        dist = self.policy(deter.detach() if not self.backprop else deter, stoch.detach() if not self.backprop else stoch)
        action = dist.sample()
        logp, ent = dist.log_prob(action.detach()), dist.entropy()
        with torch.set_grad_enabled(self.backprop and torch.is_grad_enabled()):
            deter, stoch = wm.rssm.imagine_step(deter, stoch, action if self.backprop else action.detach())
        return deter, stoch, logp, ent

    def trajectory_loss(
        self, wm: WorldModel, deter_all: Tensor, stoch_all: Tensor, logps: Tensor, entropy: Tensor, replay: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Actor and critic losses of imagined trajectories (compiled as one unit)."""
        cfg = self.cfg
        batch, length = replay["is_terminal"].shape
        start_cont = ~replay["is_terminal"]
        with torch.set_grad_enabled(self.backprop and torch.is_grad_enabled()):
            reward = wm.reward(deter_all[1:], stoch_all[1:]).mean()
        with torch.no_grad():
            cont_logits = wm.continue_logits(deter_all[1:], stoch_all[1:])
            cont = torch.sigmoid(cont_logits) if self.soft_continue else (cont_logits > 0).float()
            cont = torch.cat([start_cont.flatten()[None].float(), cont])
            discount = 1.0 - 1.0 / cfg.discount_horizon
            weight = torch.cumprod(discount * cont, 0) / discount  # [H+1, N]

        critic_in = (deter_all.detach(), stoch_all.detach())
        critic_logits = self.critic(*critic_in)
        value = TwoHotSymlog(critic_logits, self.bins).mean().detach()
        returns = lambda_returns(reward, cont[1:], value, discount, cfg.lam)  # [H, N]
        self.return_norm.update(returns)
        scale = self.return_norm.scale()
        advantage = (returns - value[:-1]) / scale
        if self.backprop:
            actor_objective = advantage
        else:
            actor_objective = logps * advantage.detach()
        actor_loss = -(weight[:-1] * (actor_objective + cfg.entropy * entropy)).mean()

        with torch.no_grad():
            slow_value = TwoHotSymlog(self.slow_critic(deter_all[:-1].detach(), stoch_all[:-1].detach()), self.bins).mean()
        critic_dist = TwoHotSymlog(critic_logits[:-1], self.bins)
        critic_nll = -critic_dist.log_prob(returns.detach()) - cfg.slow_critic_reg * critic_dist.log_prob(slow_value)
        critic_loss = (weight[:-1] * critic_nll).mean()

        # The critic on the replayed states themselves (imagination's first step), against
        # returns of real rewards and terminations bootstrapped with the imagined returns.
        boot = returns[0].detach().reshape(batch, length)
        replay_target = replay_returns(replay["reward"], replay["is_last"], replay["is_terminal"], boot, discount, cfg.lam)
        replay_dist = TwoHotSymlog(critic_logits[0].reshape(batch, length, -1)[:, :-1], self.bins)
        replay_nll = -replay_dist.log_prob(replay_target) - cfg.slow_critic_reg * replay_dist.log_prob(slow_value[0].reshape(batch, length)[:, :-1])
        replay_weight = 1.0 - replay["is_last"][:, :-1].float()
        replay_loss = (replay_weight * replay_nll).mean()
        critic_loss = critic_loss + cfg.replay_critic_scale * replay_loss

        metrics = {
            "actor/loss": actor_loss.detach(),
            "actor/entropy": entropy.mean().detach(),
            "critic/loss": critic_loss.detach(),
            "critic/value": value.mean(),
            "critic/replay_loss": replay_loss.detach(),
            "critic/replay_return": replay_target.mean().detach(),
            "imagine/return": returns.mean().detach(),
            "imagine/reward": reward.mean().detach(),
            "imagine/return_scale": scale.detach(),
        }
        return actor_loss + critic_loss, metrics

    @torch.no_grad()
    def update_slow_critic(self) -> None:
        """Move the slow critic a fixed fraction towards the critic (an EMA of its weights)."""
        slow, fast = list(self.slow_critic.parameters()), list(self.critic.parameters())
        torch._foreach_lerp_(slow, fast, self.cfg.slow_critic_fraction)
