"""The learner's prefetching sampler: batches prepared on a background thread, so sampling overlaps
with training.

Built only on ReplayService's public sampling calls (request_sample_grant, submit_sample,
collect_sample), so the service's routing and failover stay its own business.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from replay.storage import Batch

if TYPE_CHECKING:  # replay.service imports this module to build Samplers
    from replay.service import ReplayService, SampleRequest

_READY_GET_S = 60.0  # fetching a result already known to be ready (only its transfer is left)
_NO_DATA_WAIT_S = 0.05
_POLL_S = 0.1  # how often blocked Sampler calls look at the stop flag
_END = object()  # queued by the Sampler's thread when it stops


class Sampler:
    """Iterator of batches prepared by a background thread, so next() returns at once whenever the
    replay ratio allows another batch: the thread keeps ``prefetch`` requests in flight (waiting for a
    limiter grant, or at the shards) plus one finished batch, and its RPCs and concatenation overlap
    with the learner's GPU work.

    Yields batches, or (batch, keys) with with_keys. Stops when the limiter is closed or after
    close(); an error in the thread is raised by the next call. Grants still unused at close() are
    counted as sampled by the limiter.
    """

    def __init__(
        self,
        service: ReplayService,
        batch_size: int,
        seq_len: int,
        prefetch: int = 2,
        with_keys: bool = False,
    ) -> None:
        self._pipeline = _Pipeline(service, batch_size, seq_len, prefetch, with_keys)
        self._ready: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replay-sampler", daemon=True)
        self._thread.start()

    def __iter__(self) -> Sampler:
        return self

    @property
    def in_flight(self) -> int:
        """Requests waiting for a grant or at the shards (the ready batch not included)."""
        return self._pipeline.in_flight

    def __next__(self) -> Batch | tuple[Batch, np.ndarray]:
        while not self._stop.is_set():
            try:
                item = self._ready.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is _END or isinstance(item, BaseException):
                self._stop.set()
                if item is _END:
                    break
                raise item
            return item
        raise StopIteration

    def close(self) -> None:
        """Stop the thread and cancel the grant requests still waiting at the limiter."""
        self._stop.set()
        self._pipeline.cancel()  # unblocks a thread waiting for a grant
        self._thread.join()
        self._pipeline.cancel()  # and whatever it requested meanwhile

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                result = self._pipeline.next()
                if result is None:
                    break
                self._put(result if self._pipeline.with_keys else result[0])
        except BaseException as error:  # handed to the learner, not lost with the thread
            self._put(error)
            return
        self._put(_END)

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue


class _Pipeline:
    """Single-threaded core of Sampler: requests pass from limiter grant to shard calls to a batch.

    Only granted requests are sent to the shards, so shard calls never queue behind a learner that
    has to wait for the ratio.
    """

    def __init__(
        self, service: ReplayService, batch_size: int, seq_len: int, prefetch: int, with_keys: bool
    ) -> None:
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self._service = service
        self._batch_size = batch_size
        self._seq_len = seq_len
        self._prefetch = prefetch
        self.with_keys = with_keys
        self._grants: deque[ray.ObjectRef | bool] = deque()
        self._requests: deque[SampleRequest] = deque()
        self._closed = False

    @property
    def in_flight(self) -> int:
        return len(self._grants) + len(self._requests)

    def next(self) -> tuple[Batch, np.ndarray | None] | None:
        """The oldest request's batch, waiting for its grant and, if no shard holds a full sequence
        yet, for data (under the same grant, so waiting does not count as sampling); None once closed."""
        self._advance(block=not self._requests)
        if not self._requests:
            return None
        request = self._requests.popleft()
        self._advance(block=False)  # back to prefetch requests while this one is collected
        result = self._service.collect_sample(request)
        while result is None and not self._closed:
            time.sleep(_NO_DATA_WAIT_S)
            retry = self._service.submit_sample(request.batch_size, request.seq_len, request.with_keys)
            result = self._service.collect_sample(retry)
        return result

    def cancel(self) -> None:
        self._closed = True
        for grant in list(self._grants):
            if isinstance(grant, ray.ObjectRef):
                ray.cancel(grant)

    def _advance(self, block: bool) -> None:
        """Top up to prefetch requests, then send granted ones to the shards; with block, first wait
        for the oldest grant, in short polls so that cancel() from another thread is noticed."""
        while not self._closed and self.in_flight < self._prefetch:
            self._grants.append(self._service.request_sample_grant(self._batch_size * self._seq_len))
        while self._grants and not self._closed:
            if not _done(self._grants[0], _POLL_S if block else 0.0):
                if block:
                    continue
                return
            block = False
            if not _granted(self._grants.popleft()):
                self._closed = True  # the limiter was closed
                self._grants.clear()
                self._requests.clear()
                return
            self._requests.append(self._service.submit_sample(self._batch_size, self._seq_len, self.with_keys))


def _done(grant: ray.ObjectRef | bool, timeout: float) -> bool:
    return not isinstance(grant, ray.ObjectRef) or bool(ray.wait([grant], timeout=timeout)[0])


def _granted(grant: ray.ObjectRef | bool) -> bool:
    """The answer of a grant request that `_done` found ready."""
    return grant if isinstance(grant, bool) else bool(ray.get(grant, timeout=_READY_GET_S))
