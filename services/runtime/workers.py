"""A bounded thread pool for CPU-heavy work, so that it never blocks the event loop.

Every server has one :class:`WorkerPool` (``ServiceApp.workers``, sized by the settings
``worker_threads`` and ``worker_queue``), started with the server and shut down after it.
A servicer either keeps ``app.workers`` from its ``build_app`` or, inside an RPC, calls
:func:`run_in_worker`, which uses the pool of the server serving that RPC (the runtime binds
it per RPC, as it binds the caller's principal)::

    decoded = await run_in_worker(decode_image, request.image.data, limits)

The pool is bounded twice: ``max_workers`` threads, and at most ``max_queued`` calls waiting
for one; a call beyond that fails at once with ``ResourceExhausted`` (RESOURCE_EXHAUSTED, so
the client retries elsewhere) rather than waiting past its deadline. Decoders such as Pillow
and zlib release the GIL, so the threads run in parallel with the loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from services.common.errors import ResourceExhausted, Unavailable

T = TypeVar("T")


class WorkerPool:
    """``max_workers`` threads and at most ``max_queued`` waiting calls; see the module doc."""

    def __init__(self, max_workers: int, max_queued: int, name: str = "veil-worker") -> None:
        if max_workers < 1 or max_queued < 0:
            raise ValueError("a worker pool needs max_workers >= 1 and max_queued >= 0")
        self.max_workers = max_workers
        self.max_queued = max_queued
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._admitted = 0
        """Calls submitted and not yet finished: running (≤ max_workers) plus waiting."""

    @property
    def running(self) -> bool:
        return self._executor is not None

    def start(self) -> None:
        """Create the threads' executor. Idempotent."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.max_workers, thread_name_prefix=self._name)

    def shutdown(self) -> None:
        """Refuse new calls and drop waiting ones; a running call finishes in its thread
        (a thread cannot be interrupted) without blocking the event loop. Idempotent."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[..., T], /, *args: Any) -> T:
        """``fn(*args)`` on a worker thread, with the caller's context variables.

        Raises ResourceExhausted when ``max_queued`` calls already wait, and Unavailable when
        the pool is not running. Cancelling the caller drops the call if it has not started.
        """
        executor = self._executor
        if executor is None:
            raise Unavailable("the worker pool is not running")
        self._admit()
        try:
            future = executor.submit(contextvars.copy_context().run, fn, *args)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _admit(self) -> None:
        with self._lock:
            if self._admitted >= self.max_workers + self.max_queued:
                raise ResourceExhausted(
                    f"the worker queue is full: {self.max_queued} calls already wait for "
                    f"{self.max_workers} threads (settings worker_queue, worker_threads)",
                    details={"limit": "worker_queue", "worker_queue": self.max_queued},
                )
            self._admitted += 1

    def _release(self, _: Future[Any] | None = None) -> None:
        with self._lock:
            self._admitted -= 1


_current: contextvars.ContextVar[WorkerPool | None] = contextvars.ContextVar(
    "veil_workers", default=None
)


def bind_workers(pool: WorkerPool | None) -> contextvars.Token[WorkerPool | None]:
    """Make ``pool`` the one :func:`run_in_worker` uses (the runtime does, per RPC)."""
    return _current.set(pool)


def reset_workers(token: contextvars.Token[WorkerPool | None]) -> None:
    """Undo :func:`bind_workers`."""
    _current.reset(token)


def current_workers() -> WorkerPool:
    """The worker pool of the server serving this RPC; Unavailable outside an RPC."""
    pool = _current.get()
    if pool is None:
        raise Unavailable("no worker pool: run_in_worker is called outside a Veil RPC")
    return pool


async def run_in_worker(fn: Callable[..., T], /, *args: Any) -> T:
    """``fn(*args)`` on the current server's worker pool (see :meth:`WorkerPool.run`)."""
    return await current_workers().run(fn, *args)
