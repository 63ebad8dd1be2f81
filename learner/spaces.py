"""What the agent must know about observations and actions, without knowing any environment."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

ActionKind = Literal["discrete", "multi_discrete", "continuous"]


class ObservationShapeError(ValueError):
    """An observation the model has no encoder for."""


@dataclass(frozen=True)
class ObservationSpec:
    """Observation keys and shapes: rank-3 (H, W, C) uint8 keys are images, rank-1 keys vectors."""

    shapes: dict[str, tuple[int, ...]]

    def __post_init__(self) -> None:
        for key, shape in self.shapes.items():
            if len(shape) == 3 and (shape[0] != shape[1] or shape[0] < 16 or shape[0] & (shape[0] - 1)):
                raise ObservationShapeError(
                    f"observation {key!r} has image shape {shape}; the CNN takes square power-of-two "
                    "images of at least 16x16 (e.g. 64x64x3): set the environment's size option"
                )
            if len(shape) not in (1, 3):
                raise ObservationShapeError(
                    f"observation {key!r} has shape {shape}; the model takes images (H, W, C) or "
                    "vectors (D,): flatten or drop it in the environment"
                )
        if self.image_keys and len({self.shapes[k][:2] for k in self.image_keys}) > 1:
            raise ObservationShapeError(f"image observations {self.image_keys} differ in size; give them one size")

    @property
    def image_keys(self) -> tuple[str, ...]:
        return tuple(k for k, s in self.shapes.items() if len(s) == 3)

    @property
    def vector_keys(self) -> tuple[str, ...]:
        return tuple(k for k, s in self.shapes.items() if len(s) == 1)


@dataclass(frozen=True)
class ActionSpec:
    """`sizes`: (n,) for discrete, one size per component for multi-discrete, (dim,) for continuous.

    Continuous actions live in [-1, 1]; environments rescale them to their own bounds.
    """

    kind: ActionKind
    sizes: tuple[int, ...]

    @property
    def model_dim(self) -> int:
        """Width of the action as the model sees it (concatenated one-hots, or the vector)."""
        return int(sum(self.sizes)) if self.kind != "continuous" else int(self.sizes[0])

    @property
    def env_shape(self) -> tuple[int, ...]:
        return {"discrete": (), "multi_discrete": (len(self.sizes),), "continuous": (self.sizes[0],)}[self.kind]

    @property
    def env_dtype(self) -> np.dtype:
        return np.dtype(np.float32 if self.kind == "continuous" else np.int64)

    def to_model(self, action: Tensor) -> Tensor:
        """Environment-form actions [..., *env_shape] to the model's float vectors [..., model_dim]."""
        if self.kind == "continuous":
            return action.float()
        if self.kind == "discrete":
            return F.one_hot(action.long(), self.sizes[0]).float()
        parts = [F.one_hot(action[..., i].long(), n) for i, n in enumerate(self.sizes)]
        return torch.cat(parts, -1).float()
