"""Tight figures in a separate process: their cost never holds this process's GIL.

A PLD or PRV figure is CPU work of milliseconds to about a second (bounded by its grid,
:mod:`services.accountant.tight`); done in the server process it would hold the interpreter
lock that every other RPC's thread needs, so one costly figure would stall everyone's spends
and health checks. :class:`TightPool` computes them in a small pool of worker processes
(started on first use, ``spawn``-ed: the server's threads are never forked) with a deadline
per figure; a figure that misses it is ``None`` (the other bounds stand, as for a grid that
does not fit). Results are memoised here by content, as a budget's multiset only changes
with its version.
"""

from __future__ import annotations

import functools
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

from services.accountant.accounting import Atom, pld_epsilon, prv_epsilon

Key = tuple[tuple[Atom, int], ...]


def _figure(name: str, key: Key, delta: float) -> float | None:
    """Runs in a worker process."""
    return pld_epsilon(key, delta) if name == "pld" else prv_epsilon(key, delta)


class TightPool:
    """``workers`` processes computing tight figures, each within ``timeout_s``."""

    def __init__(self, workers: int = 1, timeout_s: float = 5.0, memo: int = 4096) -> None:
        self.workers, self.timeout_s = workers, timeout_s
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._memo = functools.lru_cache(maxsize=memo)(self._compute)

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                context = multiprocessing.get_context("spawn")
                self._executor = ProcessPoolExecutor(self.workers, mp_context=context)
            return self._executor

    def figure(self, name: str, key: Key, delta: float) -> float | None:
        """The figure (memoised), or None when it does not fit its grid, missed its deadline
        or its worker died (those two are not memoised: a later call tries again)."""
        try:
            return self._memo(name, key, delta)
        except FutureTimeout:
            return None
        except BrokenProcessPool:
            with self._lock:
                self._executor = None  # the next figure starts a fresh pool
            return None

    def _compute(self, name: str, key: Key, delta: float) -> float | None:
        future = self._pool().submit(_figure, name, key, delta)
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            future.cancel()
            raise

    def start(self) -> None:
        """Spawn the workers and let them import the accounting now (about a second of
        CPU), rather than on the first request that needs a tight figure."""
        list(self._pool().map(_figure, ["pld"], [()], [0.5]))

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
