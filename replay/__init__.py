"""Sharded, persistent replay with a shared samples-per-insert rate limiter.

Knows chunks and batches of numpy arrays only, never models or environments.
"""
from replay.chunk import Chunk, ChunkData
from replay.persistence import ChunkFiles
from replay.rate_limiter import SamplesPerInsertLimiter, check_limits, make_limiter_actor, min_tolerance
from replay.sampler import Sampler
from replay.service import ReplayService
from replay.shard import InsertAck, ReplayShard, ShardSample, make_shard_actor
from replay.storage import SAMPLING_MODES, Batch, ReplayStorage, chunk_length

__all__ = [
    "SAMPLING_MODES",
    "Batch",
    "Chunk",
    "ChunkData",
    "ChunkFiles",
    "InsertAck",
    "ReplayService",
    "ReplayShard",
    "ReplayStorage",
    "Sampler",
    "SamplesPerInsertLimiter",
    "ShardSample",
    "check_limits",
    "chunk_length",
    "make_limiter_actor",
    "make_shard_actor",
    "min_tolerance",
]
