"""A CPU learner's freed memory is reused by the next update's tensors, not faulted in again."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# "Updates" of tensors of 256, 128, 192 and 64 MB, as an update's activations come and go: the
# minor page faults of each, with glibc's defaults and then kept (in a process of its own: the
# setting is process-wide). Kept, the heap grows over the first updates (by ~1 GB here: the
# largest tensor does not fit the fragments the last update left at first), then holds.
SCRIPT = """
import json, resource, torch
from learner.host_memory import keep_freed_memory

def faults(mb):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(mb << 18).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def update():
    return [faults(mb) for mb in (256, 128, 192, 64)]

default = [update(), update()]
kept = keep_freed_memory()
print(json.dumps({"kept": kept, "default": default, "after": [update() for _ in range(6)]}))
"""
PAGES = (256 + 128 + 192 + 64) << 8  # 4 KiB pages of one update's tensors


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_tensor_memory_is_reused_once_kept():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["kept"]
    # glibc's default: each large tensor maps fresh pages (all of them, or one per 2 MB huge page)
    assert sum(result["default"][-1]) >= PAGES // 512
    # kept: once the heap has grown, an update's tensors fault nothing in
    assert sum(result["after"][-1]) < 64, result
