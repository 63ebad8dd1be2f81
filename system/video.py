"""Evaluation videos: GIFs in LOGDIR/videos, and the same files in W&B when it is on.

GIF through imageio (its Pillow plugin) needs no ffmpeg and plays in browsers and in W&B. The GIF
encoder merges identical consecutive frames into one longer frame, so a video read back may have
fewer frames than were written, but always the same play time.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from system.metrics import MetricsLogger

VIDEO_DIR = "videos"
FPS = 20  # a whole number of centiseconds per frame, the GIF time unit


def write_gif(path: Path, frames: np.ndarray, fps: int = FPS) -> Path:
    """Write uint8 frames [T, H, W, C] (C = 1 or 3) as a looping GIF at `fps` frames per second."""
    import imageio.v3 as iio

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.dtype != np.uint8 or frames.shape[-1] not in (1, 3) or not len(frames):
        raise ValueError(f"video frames must be uint8 [T, H, W, 1 or 3] with T >= 1, got {frames.dtype} {frames.shape}")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, -1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, frames, extension=".gif", duration=1000 / fps, loop=0)
    return path


def save_videos(logger: MetricsLogger, logdir: Path, step: int, videos: Mapping[str, np.ndarray | None]) -> list[Path]:
    """Write each video as LOGDIR/videos/<name>_<step>.gif and log it to W&B as `eval/<name>_video`.

    Videos given as None (no image observation, nothing trained yet) are skipped.
    """
    written = []
    for name, frames in videos.items():
        if frames is None:
            continue
        path = write_gif(Path(logdir) / VIDEO_DIR / f"{name}_{step}.gif", frames)
        written.append(path)
        if logger.wandb_dir is not None:
            import wandb

            logger.log_media(step, f"eval/{name}_video", wandb.Video(str(path), format="gif"))
    return written
