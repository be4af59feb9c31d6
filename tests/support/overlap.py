"""Truly overlapping calls for tests: threads released at once by a barrier."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def together(n: int, call: Callable[[int], Any]) -> list[Any]:
    """``call(i)`` on ``n`` threads released at once; each result, or the exception it
    raised, in thread order."""
    barrier = threading.Barrier(n)
    out: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = call(i)
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out
