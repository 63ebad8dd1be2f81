"""Open-loop predictions of the world model next to the truth, as video frames (as DreamerV3 reports).

The model observes the first `context` steps of replayed sequences, then imagines the rest from the
recorded actions alone. How long the predicted frames stay close to the true ones shows how far
ahead the model can be trusted when the actor learns in imagination.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from learner.world_model import WorldModel


@torch.no_grad()
def openloop_frames(
    world_model: WorldModel, batch: Mapping[str, Any], *, context: int = 5, sequences: int = 4,
    key: str | None = None,
) -> np.ndarray:
    """uint8 frames [T, 3H, N*W, C]: truth above prediction above error, N sequences side by side.

    `batch` holds replayed sequences [B, T, ...] as the replay returns them (observation keys,
    env-form `action`, `is_first`). The first `context` predicted frames are reconstructions of
    observed steps, the others are imagined. Error is (prediction - truth + 1) / 2, grey where equal.
    """
    spec = world_model.decoder.spec
    key = key or (spec.image_keys[0] if spec.image_keys else None)
    if key not in spec.image_keys:
        raise ValueError(f"open-loop video needs an image observation; the model has {sorted(spec.shapes)}")
    device = next(world_model.parameters()).device

    def tensor(name: str) -> torch.Tensor:
        return torch.as_tensor(np.asarray(batch[name][:sequences])).to(device)

    obs = {name: tensor(name) for name in spec.shapes}
    action = world_model.act_spec.to_model(tensor("action"))
    is_first = tensor("is_first").bool()
    length = obs[key].shape[1]
    if not 0 < context < length:
        raise ValueError(f"context must be in [1, {length - 1}] for sequences of {length} steps, got {context}")

    rssm = world_model.rssm
    embed = world_model.encoder({name: value[:, :context] for name, value in obs.items()})
    deter, stoch, _ = rssm.observe(embed, action[:, :context], is_first[:, :context])
    deters, stochs = [deter], [stoch]
    state = deter[:, -1], stoch[:, -1]
    for t in range(context, length):
        state = rssm.imagine_step(*state, action[:, t])
        deters.append(state[0].unsqueeze(1))
        stochs.append(state[1].unsqueeze(1))
    deter, stoch = torch.cat(deters, 1), torch.cat(stochs, 1)

    decoder = world_model.decoder
    images = decoder.cnn(deter.flatten(0, 1), stoch.flatten(0, 1)).float()
    parts = dict(zip(decoder.image_keys, images.split(decoder.channels, -1)))
    model = (parts[key] + 0.5).clamp(0.0, 1.0).unflatten(0, deter.shape[:2])  # [N, T, H, W, C]
    truth = obs[key].float() / 255.0
    error = (model - truth + 1.0) / 2.0
    video = torch.cat([truth, model, error], 2)  # [N, T, 3H, W, C]
    video = torch.cat(video.unbind(0), 2)  # [T, 3H, N*W, C]
    return (video * 255.0).round().to(torch.uint8).cpu().numpy()
