"""The unit of experience that runners produce and replay stores, so both sides share one type.

A chunk is a run of consecutive steps of one stream: its arrays (``ChunkData``) plus where it
belongs (its stream), its id (inserts are idempotent by it) and the version of the weights that
acted. Defined in replay/ because replay knows nothing of models or environments; actors/ imports it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ChunkData = dict[str, np.ndarray]  # name -> [T, ...] array, every array of one leading length T


@dataclass(frozen=True)
class Chunk:
    """Consecutive steps of one stream, with what replay needs to place, deduplicate and date them."""

    data: ChunkData
    stream: str
    chunk_id: str
    weight_version: int
