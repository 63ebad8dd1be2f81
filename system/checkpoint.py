"""Checkpoints: written atomically (temp file, fsync, rename), the last N kept, loaded safely.

A checkpoint holds the learner's state (weights, optimisers, harmonizers), the rate limiter's
counters and the run's counters. The replay contents live in the shards' own files next to it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from learner.config import AgentConfig
from learner.spaces import ActionSpec, ObservationSpec

FORMAT = "harmonyray-checkpoint-v1"
_NAME = re.compile(r"^ckpt-(\d{12})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or not one of ours."""


def checkpoint_dir(logdir: Path) -> Path:
    return Path(logdir) / "checkpoints"


def save_checkpoint(logdir: Path, env_steps: int, state: dict[str, Any], keep: int) -> Path:
    folder = checkpoint_dir(logdir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt-{env_steps:012d}.pt"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    for old in list_checkpoints(logdir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(logdir: Path) -> list[Path]:
    folder = checkpoint_dir(logdir)
    return sorted(p for p in folder.glob("ckpt-*.pt") if _NAME.match(p.name)) if folder.exists() else []


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Tensors and plain containers only (`weights_only=True`): a checkpoint cannot run code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated file, not a torch file, pickled code, ...
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(error).__name__}): it is corrupt or not a HarmonyRay checkpoint; delete it to resume from the previous one") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a HarmonyRay checkpoint ({FORMAT})")
    return state


def latest_checkpoint(logdir: Path) -> dict[str, Any] | None:
    paths = list_checkpoints(logdir)
    return load_checkpoint(paths[-1]) if paths else None


def model_signature(agent: AgentConfig, obs_spec: ObservationSpec, act_spec: ActionSpec) -> dict[str, Any]:
    """What a checkpoint's tensors depend on: network sizes and observation/action shapes."""
    return {
        "dims": agent.model.resolved(),
        "reward_bins": agent.model.reward_bins,
        "observations": {k: list(v) for k, v in obs_spec.shapes.items()},
        "actions": [act_spec.kind, list(act_spec.sizes)],
    }


def check_signature(checkpoint: dict[str, Any], signature: dict[str, Any], logdir: Path) -> None:
    """A checkpoint of another model or environment cannot be resumed: say so before anything starts."""
    if checkpoint.get("model") != signature:
        raise CheckpointError(
            f"the checkpoint in {logdir} was written for another model or environment "
            f"({checkpoint.get('model')}); resume with the run's own config or start a new run"
        )
