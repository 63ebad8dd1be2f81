"""Each installable preset end to end through the real driver: a tiny model, a few hundred steps;
and how presets are composed from the pieces they extend.

The presets keep their environment and protocol; the overrides shrink the model, the batches, the
run and the number of actors (each Ray actor is a process that imports torch: seconds on 2 cores).
Pixel presets also write their evaluation videos.
"""
from __future__ import annotations

import time
from pathlib import Path

import imageio.v3 as iio
import pytest
import yaml
from omegaconf import OmegaConf

import system.config
from system.config import CONFIG_DIR, ConfigError, config_from_dict, load_config, presets, to_yaml
from system.driver import train
from system.metrics import read_metrics
from system.video import FPS, VIDEO_DIR

TINY = [
    "agent.model.size=debug", "agent.model.reward_bins=31", "agent.behavior.horizon=5",
    "train.batch_size=4", "train.seq_len=8", "train.train_ratio=2", "train.prefill=64",
    "train.publish_every=2", "runners.chunk_length=8", "runners.num_cpus=0.5", "learner.num_cpus=1",
    "learner.threads=1", "runners.count=1", "replay.shards=1", "replay.capacity=5000",
    "run.steps=200", "run.eval_every=0", "run.eval_episodes=1", "run.log_every=0.5", "run.checkpoint_every=1000", "wandb.mode=disabled",
]
# Shorter episodes where the preset's would outlast the run (options of the same env); the
# CartPole preset names its model sizes, which `size=debug` does not override (and at deter 256
# `agent.compile=auto` compiles on a CPU: a minute of Inductor that tests/test_compile.py covers).
PRESETS = {
    "cartpole": ["agent.model.deter=32", "agent.model.hidden=32", "agent.model.stoch=4", "agent.model.classes=4"],  # it sets its sizes
    "atari100k": ["env.options.max_frames=800"],
    "crafter": ["env.options.length=120", "run.eval_every=100", "wandb.mode=offline"],
    "metaworld": ["env.options.length=100"],
    "catch": [],  # 35-step episodes, 16x16 frames
}
METRIC = {"atari100k": "eval/human_normalized_score", "crafter": "eval/crafter_score", "metaworld": "eval/success"}


@pytest.fixture
def release_actors(ray_local):
    """`train` kills its actors when it returns, but asynchronously: wait until their CPUs are
    free, so that the next run's actors need not queue for them."""
    yield
    deadline = time.monotonic() + 30
    while ray_local.available_resources().get("CPU", 0) < ray_local.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(0.2)


def play_time(path: Path) -> float:
    """Milliseconds a GIF plays (identical frames are merged, their time kept)."""
    return sum(iio.immeta(path, index=i)["duration"] for i in range(len(iio.imread(path, index=None))))


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_end_to_end(ray_local, release_actors, tmp_path, preset) -> None:
    config = load_config(preset, [*TINY, *PRESETS[preset]])
    summary = train(config, str(tmp_path / preset), progress=False)
    assert summary.env_steps >= 200 and summary.updates > 0 and summary.eval_return is not None
    rows = read_metrics(tmp_path / preset)
    evals = [row for row in rows if "eval/return" in row]
    assert len(evals) >= (2 if config.run.eval_every else 1), "periodic evaluations and the final one"
    final = evals[-1]
    best = max(evals, key=lambda row: row["eval/return"])
    assert (summary.best_eval_return, summary.best_eval_step) == (best["eval/return"], best["step"])
    assert summary.best_eval_return >= summary.eval_return
    if preset in METRIC:
        assert all(METRIC[preset] in row for row in evals)
    if preset == "crafter":
        assert 0.0 <= final["eval/crafter_score"] <= 100.0
    videos = tmp_path / preset / VIDEO_DIR
    if preset == "cartpole":  # vector observations: no video, no error
        assert not videos.exists()
        return
    step, side = final["step"], config.env.options.get("size", 64)
    episode = iio.imread(videos / f"eval_{step}.gif", index=None)
    assert episode.shape[1:] == (side, side, 3)
    assert play_time(videos / f"eval_{step}.gif") == (final["eval/length"] + 1) * 1000 / FPS
    openloop = iio.imread(videos / f"openloop_{step}.gif", index=None)
    assert openloop.shape[1:] == (3 * side, 4 * side, 3)  # truth/prediction/error, 4 sequences
    assert play_time(videos / f"openloop_{step}.gif") == 8 * 1000 / FPS  # one per step of a sequence
    assert len(list(videos.glob("eval_*.gif"))) == len(evals)
    if config.wandb.mode == "offline":
        logged = list((tmp_path / preset).glob("wandb/offline-run-*/files/media/videos/eval/*.gif"))
        assert {p.name.split("_")[0] for p in logged} >= {"eval", "openloop"}


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """A YAML mapping's values by dotted key."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def test_presets_say_only_what_differs_from_the_base() -> None:
    assert presets() == ["atari100k", "cartpole", "catch", "crafter", "metaworld", "minecraft"], "pieces are not presets"
    base = _leaves(yaml.safe_load((CONFIG_DIR / "pieces" / "base.yaml").read_text()))
    for name in presets():
        own = _leaves(yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text()))
        assert own.pop("extends") == "pieces/base", name
        config = load_config(name)
        resolved = OmegaConf.structured(config)
        assert config.preset == name
        for key, value in {**base, **own}.items():
            assert OmegaConf.select(resolved, key) == value, f"{name}: {key}"
        repeated = [key for key, value in own.items() if key in base and base[key] == value]
        assert not repeated, f"{name} repeats pieces/base.yaml: {repeated}"


def test_a_config_of_ones_own_extends_presets_and_overrides_still_win(tmp_path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: [crafter, atari100k]\nrun:\n  eval_every: 500\n")  # in order: atari100k over crafter
    config = load_config(str(mine), ["train.prefill=2048", "env.name=atari:Breakout"])
    assert config.preset == "mine"
    assert (config.run.eval_every, config.train.prefill, config.env.name) == (500, 2048, "atari:Breakout")  # its own, then overrides
    assert (config.train.train_ratio, config.replay.shards, config.runners.count) == (1024, 1, 1)  # atari100k's
    assert config.train.batch_size == 16 and config.run.eval_episodes == 10  # pieces/base, through both
    mine.write_text("extends: atari100k\n")
    assert to_yaml(load_config(str(mine))) == to_yaml(load_config("atari100k")).replace("preset: atari100k", "preset: mine", 1)


def _one_line(call) -> str:
    with pytest.raises(ConfigError) as caught:
        call()
    assert len(str(caught.value).splitlines()) == 1, caught.value
    return str(caught.value)


def test_bad_extends_fail_with_one_line_that_names_them(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(system.config, "CONFIG_DIR", tmp_path)
    (tmp_path / "pieces").mkdir()
    (tmp_path / "pieces" / "shared.yaml").write_text("train:\n  batch_sise: 8\n")
    (tmp_path / "typo.yaml").write_text("extends: pieces/bsae\n")
    assert _one_line(lambda: load_config("typo")).startswith("config typo.yaml: extends: no config 'pieces/bsae' (configs/pieces/bsae.yaml); configs/ has ")
    (tmp_path / "number.yaml").write_text("extends: 3\n")
    assert _one_line(lambda: load_config("number")).startswith("config number.yaml: extends: expected a config name or a list of them")
    (tmp_path / "a.yaml").write_text("extends: b\n")
    (tmp_path / "b.yaml").write_text("extends: [pieces/shared, a]\n")
    assert _one_line(lambda: load_config("a")) == "config b.yaml: extends: 'a' makes a cycle (a.yaml -> b.yaml -> a.yaml)"
    (tmp_path / "uses.yaml").write_text("extends: pieces/shared\n")
    assert _one_line(lambda: load_config("uses")).startswith("config pieces/shared.yaml: unknown key train.batch_sise; did you mean train.batch_size?")


def test_saved_configs_keep_loading() -> None:
    """LOGDIR/config.yaml is written fully resolved (no `extends`); ones saved before env.benchmark
    was dropped still carry it."""
    config = load_config("metaworld")
    saved = yaml.safe_load(to_yaml(config))
    assert "extends" not in saved and config_from_dict(saved) == config
    saved["env"]["benchmark"] = ["metaworld:lever-pull-v3", "metaworld:hammer-v3"]
    assert config_from_dict(saved) == config
