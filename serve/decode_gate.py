"""A process-wide budget for decoding uploads: how many decode at once, and how much memory they take.

Every upload of every request is decoded through one ``DecodeGate``:

1. ``inspect``: its header is checked (osr.inputs.check_input) on one of the gate's header
   threads (as many as decode threads, so header checks never queue behind long decodes), which
   gives the memory its decode will take (osr.images.decode_memory_bytes);
2. ``run``: it waits, first come first served, until that many bytes of the budget and one of
   the gate's threads are free, then decodes and resizes there; the bytes are returned when the
   decode ends, even when the request that asked for it has gone (its deadline passed).

A wait longer than ``wait_s`` raises ``Overloaded`` (answered 503 with Retry-After), so memory
stays within the budget whatever clients send: requests queue, then are refused, never OOM.
An image larger than the whole budget waits for the whole budget. A request decodes its files
one after the other, so the queue takes turns between requests: one request of many files
cannot hold the decoders while a one-image request waits behind all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from threading import Lock
from typing import Any, TypeVar

from osr.serve import memory

T = TypeVar("T")
GateObserver = Callable[[int, int], None]  # (bytes reserved, decodes waiting)


class Overloaded(Exception):
    """No room to decode within the gate's wait: answered 503 with Retry-After."""


@dataclass(eq=False)
class _Waiter:
    cost: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    admitted: bool = False


class DecodeGate:
    """At most ``threads`` decodes at once, their estimated memory within ``capacity_bytes``, a FIFO
    queue in front, and a bounded wait. Thread-safe; ``inspect`` and ``run`` are for async code."""

    def __init__(self, capacity_bytes: int, threads: int, wait_s: float, *,
                 trim_after_bytes: int = memory.TRIM_AFTER_BYTES, on_change: GateObserver | None = None) -> None:
        if capacity_bytes < 1 or threads < 1 or wait_s < 0:
            raise ValueError(f"capacity_bytes and threads must be >= 1 and wait_s >= 0, got "
                             f"{capacity_bytes}, {threads}, {wait_s}")
        self.capacity = int(capacity_bytes)
        self.threads = int(threads)
        self.wait_s = float(wait_s)
        self.trim_after_bytes = trim_after_bytes
        self.on_change = on_change
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="osr-decode")
        self._inspector = ThreadPoolExecutor(self.threads, thread_name_prefix="osr-header")
        self._lock = Lock()
        self._reserved = 0
        self._running = 0
        self._waiters: deque[_Waiter] = deque()

    @property
    def reserved_bytes(self) -> int:
        return self._reserved

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def inspect(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on one of the gate's header threads, without reserving memory (header
        checks: Pillow holds at most a header's text, 64 MB, while it opens one)."""
        return await asyncio.wrap_future(self._inspector.submit(fn, *args))

    async def run(self, cost: int, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on one of the gate's threads once ``cost`` bytes are free; Overloaded
        after ``wait_s`` of waiting."""
        cost = max(0, min(int(cost), self.capacity))
        await self._admit(cost)
        try:
            future: Future = self._executor.submit(self._call, cost, fn, args)
        except BaseException:
            self._release(cost)
            raise
        # returned when the decode ends (or never starts), whoever still waits for it
        future.add_done_callback(lambda _: self._release(cost))
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._inspector.shutdown(wait=False, cancel_futures=True)

    # -- the queue ----------------------------------------------------------------------------------

    def _call(self, cost: int, fn: Callable[..., T], args: tuple) -> T:
        try:
            return fn(*args)
        finally:
            if cost >= self.trim_after_bytes:
                memory.trim()

    async def _admit(self, cost: int) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._waiters and self._fits(cost):
                self._take(cost)
                waiter = None
            else:
                waiter = _Waiter(cost, loop, loop.create_future())
                self._waiters.append(waiter)
        self._changed()
        if waiter is None:
            return
        try:
            async with asyncio.timeout(self.wait_s):
                await waiter.future
        except BaseException as exc:  # the wait ran out, or the request was cancelled (its deadline)
            with self._lock:
                if waiter.admitted:  # admitted as it was cancelled: give the bytes back
                    self._reserved -= cost
                    self._running -= 1
                else:
                    self._waiters.remove(waiter)
                self._admit_waiters()
            self._changed()
            if isinstance(exc, TimeoutError):
                raise Overloaded(f"the server is decoding as many images as its memory budget allows "
                                 f"({self.capacity} bytes) and none finished within {self.wait_s:g} s; "
                                 "retry later") from None
            raise

    def _fits(self, cost: int) -> bool:
        return self._running < self.threads and self._reserved + cost <= self.capacity

    def _take(self, cost: int) -> None:
        self._reserved += cost
        self._running += 1

    def _admit_waiters(self) -> None:
        """First come first served: the head waits until it fits, nobody passes it."""
        while self._waiters and self._fits(self._waiters[0].cost):
            waiter = self._waiters.popleft()
            self._take(waiter.cost)
            waiter.admitted = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
                waiter.loop.call_soon_threadsafe(_wake, waiter.future)

    def _release(self, cost: int) -> None:
        with self._lock:
            self._reserved -= cost
            self._running -= 1
            self._admit_waiters()
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self._reserved, len(self._waiters))


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
