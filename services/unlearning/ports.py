"""What the unlearning service's core needs from outside, as small protocols (no transport).

:mod:`services.unlearning.app` wires :class:`Workers` to a bounded pool of job threads of
its own (``services.runtime.workers.WorkerPool``, ``max_running_jobs`` threads, no queue)
and :data:`Loader` to the running inference backend's ``load_model``. Tests wire
in-memory fakes and run the same assertions on both (``tests/unlearning/test_ports.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Workers(Protocol):
    """Threads that run a job's training off the event loop."""

    def start(self) -> None:
        """Make :meth:`run` accept calls. Idempotent."""

    def shutdown(self) -> None:
        """Refuse new calls; a running one finishes in its thread. Idempotent."""

    async def run(self, fn: Callable[..., T], /, *args: Any) -> T:
        """``fn(*args)`` on a worker thread, with the caller's context variables: its result,
        or its exception raised here. Unavailable before start and after shutdown; a bounded
        pool may refuse a call with ResourceExhausted (the core never runs more jobs at once
        than ``max_running_jobs``, the pool's size)."""
        ...


Loader = Callable[[str, int], Awaitable[None]]
"""``load(model, version)``: make a published version servable (the inference backend)."""
