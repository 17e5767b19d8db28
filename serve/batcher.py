"""Dynamic batching, like Triton's dynamic batcher: concurrent requests share one inference call.

A single worker thread waits for the first request, then keeps gathering until ``max_batch``
images are waiting or ``max_wait_ms`` have passed since it started, runs ``run_fn`` once on the
concatenation and hands each request its rows. Inference therefore never blocks the event loop,
and the model sees one call at a time (no oversubscribed CPU threads).

Fairness: a batch takes at most ``max_batch`` images. A request with more is split into turns of
``max_batch // 8`` images that alternate with the other requests: each batch takes at most one
turn of every waiting request, and a request that is not finished goes to the back of the line.
A one-image request that arrives while a 1,000-image request runs then waits for the turn that
is running and shares the next batch with one more turn, about 9 images' worth of inference at
the default max_batch, instead of waiting for all of it (13-25 s before, issue 20). The large
request keeps most of its speed: on a CPU a batch of 4 costs about as much per image as one of
32 (bench/hardening_load.py measures both sides). A request can be cancelled (``infer`` is
cancelled: its deadline passed): its chunks that have not run are dropped.

With ``track_arrivals``, callers announce a request as soon as it arrives (``arrival()``, before
reading and decoding it) and the batcher waits only while an announced request has not been
submitted yet: a lone request on an idle server runs at once instead of paying ``max_wait_ms``,
while under load the gathering works as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError

import numpy as np

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
RunFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]
BatchObserver = Callable[[Mapping[str, np.ndarray], float], None]


class BatcherClosed(RuntimeError):
    """The batcher is shut down and takes no more requests."""


class _Request:
    """One submitted request: its images, how many went into batches, its chunks' outputs."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self.future: Future = Future()
        self.taken = 0  # images handed to batches so far
        self.parts: list[tuple[int, Outputs]] = []  # (offset, outputs) of the chunks that ran
        self.done = 0  # images with outputs
        self.cancelled = False

    @property
    def size(self) -> int:
        return int(self.images.shape[0])

    def finish(self, offset: int, outputs: Outputs) -> None:
        self.parts.append((offset, outputs))
        self.done += len(next(iter(outputs.values())))
        if self.done == self.size and not self.future.done():
            self.parts.sort(key=lambda part: part[0])
            result = (self.parts[0][1] if len(self.parts) == 1 else
                      {name: np.concatenate([part[name] for _, part in self.parts]) for name in outputs})
            with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
                self.future.set_result(result)

    def fail(self, exc: BaseException) -> None:
        self.cancelled = True  # its other chunks are not run
        with contextlib.suppress(InvalidStateError):
            self.future.set_exception(exc)


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
        self.turn = max(1, self.max_batch // 8)  # images per batch of a request larger than max_batch
        self.on_batch = on_batch
        self.track_arrivals = track_arrivals
        self._arriving = 0  # announced requests not yet submitted
        self._line: deque[_Request] = deque()  # requests with images not yet in a batch, in turn order
        self._waiting_images = 0
        self._closed = False
        self._changed = threading.Condition()
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
        with self._changed:
            self._arriving += delta
            self._changed.notify_all()

    def submit(self, images: np.ndarray, arrival: Arrival | None = None) -> Future:
        """Queue one request's images; the Future resolves to its own rows of every output.
        Cancelling the Future drops the request's chunks that have not run yet."""
        return self._submit(images, arrival).future

    def _submit(self, images: np.ndarray, arrival: Arrival | None) -> _Request:
        images = np.asarray(images)
        if images.ndim < 1 or images.shape[0] < 1:
            raise ValueError(f"a request needs at least one image, got shape {list(images.shape)}")
        request = _Request(images)
        request.future.add_done_callback(lambda future: future.cancelled() and self._cancel(request))
        with self._changed:
            if self._closed:
                raise BatcherClosed("the batcher is shut down")
            self._line.append(request)
            self._waiting_images += request.size
            if arrival is not None and arrival.pending:  # in the same step: the worker sees one or the other
                arrival.pending = False
                self._arriving -= 1
            self._changed.notify_all()
        return request

    async def infer(self, images: np.ndarray, arrival: Arrival | None = None) -> Outputs:
        """``submit`` for async code: awaits the rows without blocking the event loop; when the
        caller is cancelled, the request's remaining chunks are dropped."""
        return await asyncio.wrap_future(self.submit(images, arrival))

    def _cancel(self, request: _Request) -> None:
        with self._changed:
            if not request.cancelled:
                request.cancelled = True
                if request in self._line:
                    self._line.remove(request)
                    self._waiting_images -= request.size - request.taken

    def close(self, timeout_s: float | None = 30.0) -> None:
        """Stop taking requests, finish those already queued, stop the worker thread."""
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout_s)

    # -- worker thread ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                return
            if batch:
                self._run(batch)

    def _gather(self) -> list[tuple[_Request, int, int]] | None:
        """The next batch as (request, start, stop) chunks; None once closed and drained."""
        with self._changed:
            while not self._line:
                if self._closed:
                    return None
                self._changed.wait()
            deadline = time.monotonic() + self.max_wait_s
            while self._waiting_images < self.max_batch and not self._closed:
                if self.track_arrivals and self._arriving == 0:
                    break  # nothing announced is still on its way
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return self._take()

    def _take(self) -> list[tuple[_Request, int, int]]:
        """Up to max_batch images, at most one turn of each request in line order; a request that
        is not finished goes to the back of the line."""
        batch: list[tuple[_Request, int, int]] = []
        size = 0
        unfinished: list[_Request] = []
        for _ in range(len(self._line)):
            if size >= self.max_batch:
                break
            request = self._line.popleft()
            remaining = request.size - request.taken
            share = remaining if request.size <= self.max_batch else min(remaining, self.turn)
            count = min(self.max_batch - size, share)
            batch.append((request, request.taken, request.taken + count))
            request.taken += count
            size += count
            if request.taken < request.size:
                unfinished.append(request)
        self._line.extend(unfinished)
        self._waiting_images -= size
        return batch

    def _run(self, batch: list[tuple[_Request, int, int]]) -> None:
        batch = [(request, start, stop) for request, start, stop in batch if not request.future.done()]
        if not batch:
            return
        start_time = time.perf_counter()
        try:
            chunks = [request.images[start:stop] for request, start, stop in batch]
            images = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
            outputs = {name: np.asarray(value) for name, value in self.run_fn(images).items()}
        except BaseException as exc:  # every request in the batch gets the error, the worker lives on
            with self._changed:
                for request, _, _ in batch:
                    request.fail(exc)
                    self._drop(request)
            return
        seconds = time.perf_counter() - start_time
        if self.on_batch is not None:
            try:
                self.on_batch(outputs, seconds)
            except Exception:  # metrics must never fail a request
                log.exception("batch observer failed")
        offset = 0
        for request, start, stop in batch:
            count = stop - start
            request.finish(start, {name: value[offset:offset + count] for name, value in outputs.items()})
            offset += count

    def _drop(self, request: _Request) -> None:
        """Remove a failed request's remaining chunks from the line (the lock is held)."""
        if request in self._line:
            self._line.remove(request)
            self._waiting_images -= request.size - request.taken
