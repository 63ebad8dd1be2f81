"""A fake `minedojo` package over the MineDojo stand-in (actors/envs/fake_minedojo.py), so that tests
drive `minecraft:hunt-cow` through its real import path, `minecraft.minedojo_api`.

Put `tests/fakes` on `sys.path` (and on PYTHONPATH for Ray workers). The stand-in's costs come from
the environment variable HARMONYRAY_FAKE_MINEDOJO, a JSON object of `fake_minedojo.Costs` fields,
e.g. '{"step_s": [0.02, 0.06], "crash_every": 200}'; fields it leaves out keep the fast test
defaults below (a MineDojo-like run would name all three latencies).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from actors.envs import fake_minedojo

ENV_VAR = "HARMONYRAY_FAKE_MINEDOJO"
TEST_COSTS = fake_minedojo.Costs(step_s=(0.001, 0.003), reset_s=(0.01, 0.03), new_world_s=(0.02, 0.05))


def costs() -> fake_minedojo.Costs:
    """The stand-in's costs: the test defaults with the fields HARMONYRAY_FAKE_MINEDOJO sets."""
    options = json.loads(os.environ.get(ENV_VAR) or "{}")
    known = {field.name for field in dataclasses.fields(fake_minedojo.Costs)}
    if not isinstance(options, dict) or set(options) - known:
        raise ValueError(f"{ENV_VAR} must be a JSON object with keys among {sorted(known)}, got {options!r}")
    return dataclasses.replace(TEST_COSTS, **options)


def make(task_id: str, **kwargs: Any) -> fake_minedojo.HuntCowSim:
    """`minedojo.make`, read at each call so that a test may change the costs between envs."""
    return fake_minedojo.make(task_id, costs=costs(), **kwargs)
