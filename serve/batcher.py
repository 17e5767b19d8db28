"""Dynamic batching, like Triton's dynamic batcher: concurrent requests share one inference call.

A single worker thread takes the first waiting request, then keeps gathering requests until the
batch holds ``max_batch`` images or ``max_wait_ms`` have passed since that first request, runs
``run_fn`` once on the concatenation and hands each request its rows. Inference therefore never
blocks the event loop, and the model sees one call at a time (no oversubscribed CPU threads).
A request larger than ``max_batch`` is run on its own, whole (the predictor splits it further).

With ``track_arrivals``, callers announce a request as soon as it arrives (``arrival()``, before
reading and decoding it) and the batcher waits only while an announced request has not been
submitted yet: a lone request on an idle server runs at once instead of paying ``max_wait_ms``,
while under load the gathering works as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
RunFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]
BatchObserver = Callable[[Mapping[str, np.ndarray], float], None]


class BatcherClosed(RuntimeError):
    """The batcher is shut down and takes no more requests."""


@dataclass
class _Request:
    images: np.ndarray
    future: Future = field(default_factory=Future)


_STOP = object()


class Arrival:
    """A request announced to the batcher and not submitted yet (see ``DynamicBatcher.arrival``)."""

    def __init__(self, batcher: DynamicBatcher):
        self._batcher = batcher
        self.pending = True

    def settle(self) -> None:
        if self.pending:
            self.pending = False
            self._batcher._arrived(-1)


class DynamicBatcher:
    """Gathers ``submit``-ted uint8 [n, S, S, 3] arrays into batched ``run_fn`` calls."""

    def __init__(
        self,
        run_fn: RunFn,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        on_batch: BatchObserver | None = None,
        track_arrivals: bool = False,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.run_fn = run_fn
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.on_batch = on_batch
        self.track_arrivals = track_arrivals
        self._arriving = 0  # announced requests not yet submitted
        self._queue: queue.Queue = queue.Queue()
        self._carry: _Request | None = None  # fetched but did not fit into the previous batch
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="osr-batcher", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def arrival(self):
        """Announce a request that will be submitted soon; pass the yielded ``Arrival`` to
        ``submit``/``infer``. Leaving the block without submitting (an error) withdraws it."""
        self._arrived(+1)
        arrival = Arrival(self)
        try:
            yield arrival
        finally:
            arrival.settle()

    def _arrived(self, delta: int) -> None:
        with self._lock:
            self._arriving += delta

    def submit(self, images: np.ndarray, arrival: Arrival | None = None) -> Future:
        """Queue one request's images; the Future resolves to its own rows of every output."""
        images = np.asarray(images)
        if images.ndim < 1 or images.shape[0] < 1:
            raise ValueError(f"a request needs at least one image, got shape {list(images.shape)}")
        request = _Request(images)
        with self._lock:
            if self._closed:
                raise BatcherClosed("the batcher is shut down")
            self._queue.put(request)  # queued before the arrival is settled: the worker sees one or the other
        if arrival is not None:
            arrival.settle()
        return request.future

    async def infer(self, images: np.ndarray, arrival: Arrival | None = None) -> Outputs:
        """``submit`` for async code: awaits the rows without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(images, arrival))

    def _nothing_coming(self) -> bool:
        with self._lock:
            return self.track_arrivals and self._arriving == 0 and self._queue.empty() and self._carry is None

    def close(self, timeout_s: float | None = 30.0) -> None:
        """Stop taking requests, finish those already queued, stop the worker thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout_s)

    # -- worker thread ---------------------------------------------------------------------------

    def _loop(self) -> None:
        stopping = False
        while not stopping or self._carry is not None:
            batch, stopping = self._gather(stopping)
            if batch:
                self._run(batch)

    def _next(self, timeout: float | None) -> object:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        try:
            return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def _gather(self, stopping: bool) -> tuple[list[_Request], bool]:
        first = self._next(timeout=None if not stopping else 0)
        if first is _STOP or first is None:
            return [], True
        batch = [first]
        size = first.images.shape[0]
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch:
            if self._nothing_coming():
                break
            item = self._next(timeout=max(0.0, deadline - time.monotonic()))
            if item is None:
                break
            if item is _STOP:
                stopping = True
                break
            if size + item.images.shape[0] > self.max_batch:
                self._carry = item
                break
            batch.append(item)
            size += item.images.shape[0]
        return batch, stopping

    def _run(self, batch: list[_Request]) -> None:
        batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not batch:
            return
        start = time.perf_counter()
        try:
            images = batch[0].images if len(batch) == 1 else np.concatenate([r.images for r in batch])
            outputs = {name: np.asarray(value) for name, value in self.run_fn(images).items()}
        except BaseException as exc:  # every waiting request gets the error, the worker lives on
            for request in batch:
                request.future.set_exception(exc)
            return
        seconds = time.perf_counter() - start
        if self.on_batch is not None:
            try:
                self.on_batch(outputs, seconds)
            except Exception:  # metrics must never fail a request
                log.exception("batch observer failed")
        offset = 0
        for request in batch:
            n = request.images.shape[0]
            request.future.set_result({name: value[offset:offset + n] for name, value in outputs.items()})
            offset += n
