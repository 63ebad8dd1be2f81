"""Translate an environment's gymnasium spaces into what the agent needs to know."""
from __future__ import annotations

import gymnasium
from gymnasium import spaces

from learner.spaces import ActionSpec, ObservationShapeError, ObservationSpec


def specs_from_spaces(observation_space: gymnasium.Space, action_space: gymnasium.Space) -> tuple[ObservationSpec, ActionSpec]:
    if not isinstance(observation_space, spaces.Dict):
        raise ObservationShapeError(f"environments must return dict observations (image and/or vector), got {observation_space}")
    obs = ObservationSpec({key: tuple(space.shape) for key, space in observation_space.spaces.items()})
    if isinstance(action_space, spaces.Discrete):
        act = ActionSpec("discrete", (int(action_space.n),))
    elif isinstance(action_space, spaces.MultiDiscrete):
        act = ActionSpec("multi_discrete", tuple(int(n) for n in action_space.nvec))
    elif isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
        act = ActionSpec("continuous", (int(action_space.shape[0]),))
    else:
        raise ValueError(f"unsupported action space {action_space}: use Discrete, MultiDiscrete or a 1-D Box")
    return obs, act
