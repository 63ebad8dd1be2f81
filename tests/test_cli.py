"""Bad input gets one clear line and exit code 2, and leaves nothing on disk; `harmonyray config`
documents every key from the schema."""
from __future__ import annotations

import importlib
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from system.cli import SWEEP_INCOMPLETE, USER_ERRORS, main
from learner.config import ModelConfig
from system.config import ConfigError, _explain, apply_overrides, config_from_dict, load_config, to_yaml
from system.config_docs import KeyDoc, config_markdown, key_docs

BAD_TRAIN = [
    (["--config", "cartpole", "agent.model.sise=XS"], "config cartpole.yaml: unknown key agent.model.sise; did you mean agent.model.size? (ModelConfig has: size, deter,"),
    (["--config", "cartpole", "train.batch_size=big"], "config cartpole.yaml: train.batch_size: expected an integer, got 'big'"),
    (["--config", "cartpole", "run.steps=[1"], "override run.steps: value '[1' is not valid YAML"),
    (["--config", "no-such-preset"], "unknown config 'no-such-preset'"),
    (["--config", "cartpole", "env.name=nosuite:Thing"], "nosuite"),
    (["--config", "cartpole", "env.name=gym:NoSuchEnv-v0"], "NoSuchEnv-v0"),
    (["--config", "cartpole", "env.name=minecraft:hunt-cow"], "MineDojo"),
    (["--config", "cartpole", "env.options={sise: 3}"], "sise"),
    (["--config", "cartpole", "train.prefill=1000000"], "train.prefill"),
    (["--config", "cartpole", "agent.model.size=XXL"], "unknown model size"),
    (["--config", "cartpole", "agent.harmony.mode=softmax"], "agent.harmony.mode"),
    (["--config", "cartpole", "agent.behavior.imagined_continue=soft"], "agent.behavior.imagined_continue must be mode or probability"),
    (["--config", "cartpole", "agent.behavior.actor_grad=dynamics"], "agent.behavior.actor_grad must be"),
    (["--config", "cartpole", "agent.precision=fp16"], "agent.precision must be auto, bf16 or fp32"),
    (["--config", "cartpole", "agent.world_model.terminal_weight=0"], "terminal_weight must be positive"),
    (["--config", "cartpole", "agent.compile_window=0"], "agent.compile_window must be >= 1 step (got 0)"),
    (["--config", "cartpole", "runners.insert_batch=0"], "runners.insert_batch must be >= 1"),
    (["--config", "cartpole", "run.steps"], "is not key=value"),
    (["--config", "cartpole", "ray.address=127.0.0.1:1"], "cannot reach Ray at 127.0.0.1:1"),
    (["--config", "cartpole", "learner.num_gpus=64"], "learner.num_gpus=64 but the cluster has"),
    (["--config", "cartpole", "agent.device=cuda", "learner.num_gpus=0"], "agent.device asks for CUDA"),
    (["--config", "cartpole", "runners.num_gpus=0.25"], "runners.num_gpus=0.25 but the cluster has no GPU"),
    (["--config", "cartpole", "runners.resources_per_env={nowhere: 1}", "runners.envs=3"], "each runner asks for {nowhere: 3} (runners.resources + runners.resources_per_env x runners.envs) but the embedded Ray cluster does not offer that much"),
    (["--config", "cartpole", "runners.collection=parallel"], "runners.collection must be auto, lockstep or async"),
    (["--config", "cartpole", "train.train_ratio=0"], "train.train_ratio must be positive"),
    (["--config", "cartpole", "train.prefill=100"], "must be at least one batch"),
    (["--config", "cartpole", "train.batch_size=64", "replay.capacity=2000"], "must be at least one batch"),
    (["--config", "cartpole", "replay.shards=100", "replay.capacity=1000"], "longer than a replay shard holds"),
]


@pytest.mark.parametrize("args,message", BAD_TRAIN, ids=[a[-1] for a, _ in BAD_TRAIN])
def test_bad_train_input(args, message, tmp_path, capsys, request):
    if any(a.startswith(("learner.num_gpus", "runners.num_gpus", "runners.resources")) for a in args):  # checked against the cluster's resources: start it as the other tests do
        request.getfixturevalue("ray_local")
    logdir = tmp_path / "run"
    assert main(["train", "--logdir", str(logdir), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("harmonyray: error:") and message in err
    assert len(err.splitlines()) == 1
    assert not logdir.exists(), "nothing is written for a run that could not start"


def test_resume_and_eval_reject_foreign_directories(tmp_path, capsys):
    assert main(["resume", str(tmp_path)]) == 2
    assert "not a HarmonyRay run directory" in capsys.readouterr().err
    assert main(["resume", str(tmp_path), "--no-progress", "run.steps=5"]) == 2, "overrides may follow options"
    assert "not a HarmonyRay run directory" in capsys.readouterr().err


def test_corrupt_and_foreign_checkpoints_are_rejected(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text(to_yaml(load_config("cartpole")))
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    (ckpt / "ckpt-000000001000.pt").write_bytes(b"\x00not a checkpoint")
    assert main(["eval", str(tmp_path)]) == 2
    assert "corrupt or not a HarmonyRay checkpoint" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(3)}, ckpt / "ckpt-000000002000.pt")
    assert main(["eval", str(tmp_path)]) == 2
    assert "is not a HarmonyRay checkpoint" in capsys.readouterr().err
    assert (ckpt / "ckpt-000000001000.pt").exists(), "nothing is deleted"


@pytest.mark.parametrize("table", [USER_ERRORS, SWEEP_INCOMPLETE])
def test_the_errors_the_cli_reports_name_real_exception_classes(table):
    """The command line names these by module and class (it does not import them up front): a
    rename must break this test, not turn a one-line error into a traceback."""
    for module, names in table.items():
        for name in names:
            assert issubclass(getattr(importlib.import_module(module), name), Exception), f"{module}.{name}"


def test_console_script_exit_code():
    """The installed entry point, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "system.cli", "train", "--config", "cartpole", "run.stepz=3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("harmonyray: error: config cartpole.yaml: unknown key run.stepz; did you mean run.steps? (RunConfig has: steps, seed,")


# For each kind of config error, keys in different sections: (overrides, dotted key, what the message must also say).
CONFIG_ERRORS = {
    "unknown key": [
        (["run.stepz=3"], "run.stepz", ["unknown key run.stepz", "did you mean run.steps?", "RunConfig has: steps, seed"]),
        (["agent.model.sise=XS"], "agent.model.sise", ["unknown key agent.model.sise", "did you mean agent.model.size?", "ModelConfig has: size, deter"]),
        (["replay.shardz=4"], "replay.shardz", ["unknown key replay.shardz", "ReplayConfig has: shards, capacity, sampling"]),
        (["sampling=uniform"], "sampling", ["unknown key sampling", "Config has: preset, run, env, agent"]),
    ],
    "wrong type": [
        (["run.steps=lots"], "run.steps", ["run.steps: expected an integer, got 'lots'"]),
        (["train.batch_size=big"], "train.batch_size", ["train.batch_size: expected an integer, got 'big'"]),
        (["agent.world_model.lr=fast"], "agent.world_model.lr", ["agent.world_model.lr: expected a number, got 'fast'"]),
        (["run.eval_video=maybe"], "run.eval_video", ["run.eval_video: expected true or false, got 'maybe'"]),
        (["ray.num_cpus=many"], "ray.num_cpus", ["ray.num_cpus: expected an integer or null, got 'many'"]),
        (["runners.resources={runner: lots}"], "runners.resources.runner", ["runners.resources.runner: expected a number, got 'lots'"]),
        (["agent.harmony.weights=[1]"], "agent.harmony.weights", ["agent.harmony.weights: expected a mapping of names to numbers, got [1]"]),
        (["agent.model=XS"], "agent.model", ["agent.model: expected a mapping (ModelConfig has: size,", "got 'XS'"]),
    ],
    "bad value": [
        (["replay.sampling=lifo"], "replay.sampling", ["replay.sampling must be uniform, recency or priority (got 'lifo')"]),
        (["agent.behavior.actor_grad=dynamics"], "agent.behavior.actor_grad", ["must be auto, reinforce or backprop (got 'dynamics')"]),
        (["wandb.mode=loud"], "wandb.mode", ["wandb.mode must be auto, online, offline or disabled (got 'loud')"]),
        (["agent.model.size=XXL"], "agent.model.size", ["unknown model size 'XXL'; choose one of debug, XS, S, M, L, XL"]),
    ],
    "out of range": [
        (["runners.insert_batch=0"], "runners.insert_batch", ["runners.insert_batch must be >= 1 (got 0)"]),
        (["run.steps=0"], "run.steps", ["run.steps must be positive (got 0)"]),
        (["train.seq_len=1"], "train.seq_len", ["train.seq_len must be >= 2 (got 1)"]),
        (["replay.shards=0"], "replay.shards", ["replay.shards must be >= 1 (got 0)"]),
        (["agent.world_model.terminal_weight=0"], "agent.world_model.terminal_weight", ["must be positive", "got 0.0"]),
        (["agent.harmony.lr=0"], "agent.harmony.lr", ["agent.harmony.lr must be > 0, or null for the world model's (got 0.0)"]),
    ],
}
CONFIG_CASES = [(kind, *case) for kind, cases in CONFIG_ERRORS.items() for case in cases]


def _one_line_error(call) -> str:
    with pytest.raises(ConfigError) as caught:
        call()
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    return message


@pytest.mark.parametrize("kind,overrides,key,expected", CONFIG_CASES, ids=[f"{c[0]}:{c[1][0]}" for c in CONFIG_CASES])
def test_config_errors_name_the_dotted_key_and_what_it_expects(kind, overrides, key, expected):
    message = _one_line_error(lambda: load_config("cartpole", overrides))
    assert key in message, message
    for text in expected:
        assert text in message, message
    assert "Key '" not in message and "could not be converted" not in message, "not OmegaConf's wording"


def test_config_errors_cover_keys_in_several_sections():
    for kind, cases in CONFIG_ERRORS.items():
        assert len({key.split(".")[0] for _, key, _ in cases}) >= 2, kind


def test_preset_file_errors_name_the_dotted_key(tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_text("run: {steps: lots}\n")
    assert _one_line_error(lambda: load_config(str(preset))) == "config mine.yaml: run.steps: expected an integer, got 'lots'"
    preset.write_text("agent:\n  model:\n    sise: XS\n")
    assert _one_line_error(lambda: load_config(str(preset))).startswith("config mine.yaml: unknown key agent.model.sise; did you mean agent.model.size?")
    preset.write_text("train: 3\n")
    assert _one_line_error(lambda: load_config(str(preset))).startswith("config mine.yaml: train: expected a mapping (TrainConfig has: train_ratio,")
    preset.write_text("run: {steps: [1\n")
    assert _one_line_error(lambda: load_config(str(preset))).startswith("config mine.yaml: not valid YAML at line")


def test_resume_overrides_and_saved_configs_name_the_dotted_key():
    config = load_config("cartpole")
    assert _one_line_error(lambda: apply_overrides(config, ["run.steps=lots"])) == "override: run.steps: expected an integer, got 'lots'"
    assert _one_line_error(lambda: apply_overrides(config, ["agent.model.sise=XS"])).startswith("override: unknown key agent.model.sise;")
    assert _one_line_error(lambda: apply_overrides(config, ["replay.sampling=lifo"])) == "replay.sampling must be uniform, recency or priority (got 'lifo')"
    assert _one_line_error(lambda: apply_overrides(config, ["runners.insert_batch=0"])) == "runners.insert_batch must be >= 1 (got 0)"
    assert apply_overrides(config, ["run.steps=60000"]).run.steps == 60000
    assert _one_line_error(lambda: config_from_dict({"train": {"batch_size": "big"}})) == "saved config: train.batch_size: expected an integer, got 'big'"


def test_a_leaf_only_key_gets_its_parents_back():
    # Should OmegaConf name only the leaf, the dataclass it was found in gives the dotted path.
    from omegaconf.errors import ConfigKeyError

    error = ConfigKeyError("Key 'sise' not in 'ModelConfig'")
    error.key, error.full_key, error.object_type = "sise", "sise", ModelConfig
    assert _explain(error, []).startswith("unknown key agent.model.sise; did you mean agent.model.size?")


def test_harmony_mode_off_survives_yaml_booleans() -> None:
    # YAML 1.1 reads a bare `off` as false; on the command line and in presets it means the mode
    assert load_config("cartpole", ["agent.harmony.mode=off"]).agent.harmony.mode == "off"


README = Path(__file__).resolve().parent.parent / "README.md"


def test_config_lists_every_key_with_type_default_and_doc(capsys):
    assert main(["config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [row for group in key_docs().values() for row in group]
    assert len(rows) == len({row.key for row in rows}) > 90
    for row in rows:
        line = next(line for line in lines if line.split()[:1] == [row.key])
        assert row.type in line and f"  {row.default}  " in line and line.endswith(row.doc), line
    assert "[agent.model]" in lines and "  agent.model.size         str         S     a row of DreamerV3's size table (SIZES): debug | XS | S | M | L | XL" in lines
    with pytest.raises(SystemExit):
        main(["config", "run.steps=3"])


def test_every_config_key_has_a_doc():
    undocumented = [row.key for group in key_docs().values() for row in group if not row.doc]
    assert not undocumented, f"give these fields a comment (on their line or just above) in system/config.py or learner/config.py: {undocumented}"


def test_readme_table_is_the_generated_one(capsys):
    assert main(["config", "--markdown"]) == 0
    generated = capsys.readouterr().out
    assert generated == config_markdown()
    text = README.read_text()
    start, end = "<!-- harmonyray config --markdown: start -->", "<!-- harmonyray config --markdown: end -->"
    assert text.count(start) == text.count(end) == 1
    table = text.split(start)[1].split(end)[0]
    assert table.strip() == generated.strip(), f"README.md's table is stale: paste the output of `harmonyray config --markdown` between its {start} and {end} lines"


@dataclass
class _Section:
    plain: int = 1  # on its line
    # above it,
    # over two lines
    above: str | None = None
    bare: float = 0.5

    # after a blank line
    multi: dict[str, float] = field(  # and on its first line
        default_factory=lambda: {"b": 2.0, "a": 1.0}
    )


@dataclass
class _Schema:
    top: bool = True  # a top-level key
    section: _Section = field(default_factory=_Section)
    tail: list[str] = field(default_factory=lambda: ["x"])  # after a section


def test_the_docs_come_from_each_fields_comments():
    """So any field given a comment is documented, wherever the comment sits."""
    assert key_docs(_Schema) == {
        "": [KeyDoc("top", "bool", "true", "a top-level key"), KeyDoc("tail", "list[str]", "[x]", "after a section")],
        "section": [
            KeyDoc("section.plain", "int", "1", "on its line"),
            KeyDoc("section.above", "str | None", "null", "above it, over two lines"),
            KeyDoc("section.bare", "float", "0.5", ""),
            KeyDoc("section.multi", "dict[str, float]", "{b: 2.0, a: 1.0}", "after a blank line and on its first line"),
        ],
    }
