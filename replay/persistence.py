"""Durable chunk files: one atomically written .npz per chunk, so an acknowledged insert survives a crash.

A file is ``<seqno:012d>-<chunk_id>.npz`` (chunk ids are reduced to filename-safe characters; the exact
id is stored inside). It is written to a temporary name, flushed and fsynced, renamed into place, and
the directory fsynced, so a file with a final name is always complete. Reloading replays files in
seqno order; unreadable files are renamed to ``*.corrupt`` and reported rather than crashing the shard.
"""
from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from replay.chunk import Chunk
from replay.storage import chunk_length

_META = "__meta__"  # prefix of metadata entries inside a chunk file, never a chunk key
_NAME = re.compile(r"^(\d{12})-.*\.npz$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


class ChunkFiles:
    """The chunk files of one shard directory, keyed by chunk id."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self._directory = Path(directory)
        self._directory.mkdir(parents=True, exist_ok=True)
        for leftover in self._directory.glob(".*.tmp"):  # never renamed into place, so never acknowledged
            leftover.unlink()
        named = ((_NAME.match(p.name), p) for p in self._directory.iterdir())
        self._on_disk = sorted((int(m.group(1)), p) for m, p in named if m)
        self._paths: dict[str, Path] = {}
        self.corrupt: list[str] = []
        self._next_seqno = self._on_disk[-1][0] + 1 if self._on_disk else 0

    def write_many(self, chunks: Sequence[Chunk], first_keys: Sequence[int]) -> None:
        """Durably write chunks under consecutive seqnos (first_keys: the storage key of each one's
        first step): each file is fsynced, the directory once."""
        for chunk in chunks:
            if any(name.startswith(_META) for name in chunk.data):
                raise ValueError(f"chunk keys may not start with {_META!r}")
        for chunk, first_key in zip(chunks, first_keys, strict=True):
            seqno = self._next_seqno
            path = self._directory / f"{seqno:012d}-{_UNSAFE.sub('_', chunk.chunk_id)}.npz"
            tmp = self._directory / f".{path.name}.tmp"
            meta = {
                "chunk_id": chunk.chunk_id,
                "stream": chunk.stream,
                "weight_version": chunk.weight_version,
                "first_key": int(first_key),
                "num_steps": chunk_length(chunk.data),
            }
            with open(tmp, "wb") as f:
                np.savez(f, **chunk.data, **{_META + k: np.asarray(v) for k, v in meta.items()})
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            self._next_seqno = seqno + 1
            self._paths[chunk.chunk_id] = path
        if chunks:
            self._fsync_directory()

    def delete(self, chunk_id: str) -> None:
        """Remove an evicted chunk's file (a deletion lost in a crash is just evicted again on reload)."""
        self._paths.pop(chunk_id).unlink(missing_ok=True)

    def key_end(self) -> int:
        """One past the last step key of the newest readable file (0 if none): where fresh keys may start."""
        for _, path in reversed(self._on_disk):
            try:
                with np.load(path, allow_pickle=False) as z:
                    return int(z[_META + "first_key"]) + int(z[_META + "num_steps"])
            except _READ_ERRORS:
                continue
        return 0

    def replay(self, accept: Callable[[Chunk], None]) -> int:
        """Feed the chunks on disk at construction to accept, oldest first; returns how many it took.

        Files that cannot be read, or that accept rejects with ValueError (e.g. written under another
        data schema), are set aside as corrupt instead of stopping the shard from starting.
        """
        accepted = 0
        for _, path in self._on_disk:
            try:
                accept(stored := _read(path))
            except _READ_ERRORS:
                self._set_aside(path)
                continue
            self._paths[stored.chunk_id] = path
            accepted += 1
        self._on_disk = []
        return accepted

    def _set_aside(self, path: Path) -> None:
        os.replace(path, path.with_name(path.name + ".corrupt"))
        self.corrupt.append(path.name)

    def _fsync_directory(self) -> None:
        fd = os.open(self._directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read(path: Path) -> Chunk:
    """Read every member fully, so truncation and CRC errors surface here, not later."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files}
    meta = {name[len(_META) :]: arrays.pop(name) for name in list(arrays) if name.startswith(_META)}
    if chunk_length(arrays) != int(meta["num_steps"]):
        raise ValueError(f"{path.name}: arrays do not hold the recorded number of steps")
    return Chunk(
        data=arrays,
        stream=str(meta["stream"]),
        chunk_id=str(meta["chunk_id"]),
        weight_version=int(meta["weight_version"]),
    )
