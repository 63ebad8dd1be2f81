"""Sharded, persistent replay with a shared samples-per-insert rate limiter.

Knows chunks and batches of numpy arrays only, never models or environments.
"""
from replay.persistence import ChunkFiles, StoredChunk
from replay.rate_limiter import SamplesPerInsertLimiter, check_limits, make_limiter_actor, min_tolerance
from replay.service import ReplayService, Sampler
from replay.shard import ChunkInsert, InsertAck, ReplayShard, ShardSample, make_shard_actor
from replay.storage import SAMPLING_MODES, Batch, Chunk, ReplayStorage, chunk_length

__all__ = [
    "SAMPLING_MODES",
    "Batch",
    "Chunk",
    "ChunkFiles",
    "ChunkInsert",
    "InsertAck",
    "ReplayService",
    "ReplayShard",
    "ReplayStorage",
    "Sampler",
    "SamplesPerInsertLimiter",
    "ShardSample",
    "StoredChunk",
    "check_limits",
    "chunk_length",
    "make_limiter_actor",
    "make_shard_actor",
    "min_tolerance",
]
