"""Atari games as `atari:<Game>`, by default under the Atari100k protocol of DreamerV3 / HarmonyDream.

Defaults: 64x64 RGB, action repeat 4 with a max over the last two frames, no sticky actions, up to 30
random no-ops after reset, the minimal action set, life loss not terminal, 108,000-frame limit
(a truncation). The env drives the ALE directly rather than through gymnasium's Atari wrappers: one
screen copy per agent step instead of one per frame, and every protocol knob in one place.
"""
from __future__ import annotations

import re
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from actors.envs.errors import UnknownEnvError, import_optional

# The 26 games of the Atari100k benchmark, spelt as `atari:` task names.
ATARI100K_GAMES: tuple[str, ...] = (
    "Alien", "Amidar", "Assault", "Asterix", "BankHeist", "BattleZone", "Boxing", "Breakout",
    "ChopperCommand", "CrazyClimber", "DemonAttack", "Freeway", "Frostbite", "Gopher", "Hero",
    "Jamesbond", "Kangaroo", "Krull", "KungFuMaster", "MsPacman", "Pong", "PrivateEye", "Qbert",
    "RoadRunner", "Seaquest", "UpNDown",
)

# (random, human) reference scores per ALE ROM id: the DQN-era constants behind human-normalised scores.
HUMAN_NORMALIZATION: dict[str, tuple[float, float]] = {
    "alien": (227.8, 7127.7),
    "amidar": (5.8, 1719.5),
    "assault": (222.4, 742.0),
    "asterix": (210.0, 8503.3),
    "bank_heist": (14.2, 753.1),
    "battle_zone": (2360.0, 37187.5),
    "boxing": (0.1, 12.1),
    "breakout": (1.7, 30.5),
    "chopper_command": (811.0, 7387.8),
    "crazy_climber": (10780.5, 35829.4),
    "demon_attack": (152.1, 1971.0),
    "freeway": (0.0, 29.6),
    "frostbite": (65.2, 4334.7),
    "gopher": (257.6, 2412.5),
    "hero": (1027.0, 30826.4),
    "jamesbond": (29.0, 302.8),
    "kangaroo": (52.0, 3035.0),
    "krull": (1598.0, 2665.5),
    "kung_fu_master": (258.5, 22736.3),
    "ms_pacman": (307.3, 6951.6),
    "pong": (-20.7, 14.6),
    "private_eye": (24.9, 69571.3),
    "qbert": (163.9, 13455.0),
    "road_runner": (11.5, 7845.0),
    "seaquest": (68.4, 42054.7),
    "up_n_down": (533.4, 11693.2),
}

STICKY_PROBABILITY = 0.25  # the ALE v5 value, used when `sticky=True`


def rom_id(game: str) -> str:
    """ALE ROM id of a game given as `MsPacman` or `ms_pacman`."""
    if game.islower():
        return game
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", game).lower()


def human_normalized_score(game: str, score: float) -> float:
    """(score - random) / (human - random) for an Atari100k game, as a fraction (1.0 = human)."""
    key = rom_id(game)
    if key not in HUMAN_NORMALIZATION:
        raise UnknownEnvError(
            f"no human reference score for {game!r}; known games: {', '.join(ATARI100K_GAMES)}"
        )
    random, human = HUMAN_NORMALIZATION[key]
    return (score - random) / (human - random)


def make(
    task: str,
    *,
    seed: int,
    size: int = 64,
    action_repeat: int = 4,
    noops: int = 30,
    sticky: bool = False,
    gray: bool = False,
    max_frames: int = 108_000,
) -> gymnasium.Env:
    """`atari:<Game>` with the Atari100k defaults; each option changes one part of the protocol."""
    for option, value, low in (("size", size, 1), ("action_repeat", action_repeat, 1),
                               ("noops", noops, 0), ("max_frames", max_frames, 1)):
        if value < low:
            raise ValueError(f"atari:{task}: {option} must be >= {low}, got {value}")
    ale_py = import_optional("ale_py", env=f"atari:{task}", package="ale-py", extra="atari")
    cv2 = import_optional("cv2", env=f"atari:{task}", package="opencv-python-headless", extra="atari")
    rom = rom_id(task)
    if rom not in ale_py.roms.get_all_rom_ids():
        raise UnknownEnvError(
            f"unknown Atari game {task!r} in 'atari:{task}'; games are ALE ROM ids in CamelCase or "
            "snake_case, e.g. atari:Pong, atari:MsPacman (all: ale_py.roms.get_all_rom_ids())"
        )
    return AtariEnv(
        ale_py, cv2, rom, seed=seed, size=size, action_repeat=action_repeat, noops=noops,
        sticky=sticky, gray=gray, max_frames=max_frames,
    )


class AtariEnv(gymnasium.Env):
    """One ALE game: repeat-and-max-pool stepping, random no-op starts, resized frames as `image`."""

    def __init__(
        self, ale_py: Any, cv2: Any, rom: str, *, seed: int, size: int, action_repeat: int,
        noops: int, sticky: bool, gray: bool, max_frames: int,
    ) -> None:
        self._cv2 = cv2
        self._rom_path = ale_py.roms.get_rom_path(rom)
        self._rom = rom
        self._size = size
        self._repeat = action_repeat
        self._noops = noops
        self._gray = gray
        self._ale = ale_py.ALEInterface()
        self._ale.setLoggerMode(ale_py.LoggerMode.Error)
        self._ale.setFloat("repeat_action_probability", STICKY_PROBABILITY if sticky else 0.0)
        self._ale.setInt("max_num_frames_per_episode", max_frames)
        self._seed_everything(seed)
        self._actions = self._ale.getMinimalActionSet()
        height, width = self._ale.getScreenDims()
        shape = (height, width) if gray else (height, width, 3)
        self._frames = [np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)]
        channels = 1 if gray else 3
        self.observation_space = spaces.Dict(
            image=spaces.Box(0, 255, (size, size, channels), np.uint8)
        )
        self.action_space = spaces.Discrete(len(self._actions))
        self.action_space.seed(seed)
        self._score = 0.0

    @property
    def ale(self) -> Any:
        """The ALE interface, for frame counters and lives."""
        return self._ale

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._seed_everything(seed)
        self._ale.reset_game()
        for _ in range(self._rng.integers(0, self._noops + 1)):
            self._ale.act(self._actions[0])  # the minimal set starts with NOOP
            if self._ale.game_over():
                self._ale.reset_game()
        self._score = 0.0
        self._grab(self._frames[0])
        return {"image": self._resize(self._frames[0])}, {"lives": self._ale.lives()}

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        ale_action = self._actions[int(action)]
        reward = 0.0
        pooled = False
        for repeat in range(self._repeat):
            reward += self._ale.act(ale_action)
            if self._ale.game_over():
                break
            if repeat == self._repeat - 2:
                self._grab(self._frames[1])
                pooled = True
        self._grab(self._frames[0])
        if pooled:
            np.maximum(self._frames[0], self._frames[1], out=self._frames[0])
        self._score += reward
        terminated = self._ale.game_over(with_truncation=False)
        truncated = not terminated and self._ale.game_truncated()
        info: dict[str, Any] = {"lives": self._ale.lives()}
        if terminated or truncated:
            stats = {"raw_score": self._score}
            if self._rom in HUMAN_NORMALIZATION:
                stats["human_normalized_score"] = human_normalized_score(self._rom, self._score)
            info["episode_stats"] = stats
        return {"image": self._resize(self._frames[0])}, reward, terminated, truncated, info

    def _seed_everything(self, seed: int) -> None:
        """Seed the no-op draws and the ALE (sticky actions); the ALE applies a seed at ROM load."""
        no_op_seed, ale_seed = np.random.SeedSequence(seed).generate_state(2)
        self._rng = np.random.default_rng(int(no_op_seed))
        self._ale.setInt("random_seed", int(ale_seed & 0x7FFFFFFF))
        self._ale.loadROM(self._rom_path)

    def _grab(self, out: np.ndarray) -> None:
        if self._gray:
            self._ale.getScreenGrayscale(out)
        else:
            self._ale.getScreenRGB(out)

    def _resize(self, frame: np.ndarray) -> np.ndarray:
        image = self._cv2.resize(frame, (self._size, self._size), interpolation=self._cv2.INTER_AREA)
        return image[..., None] if self._gray else image
