"""Group commit: one writer thread drains a queue of spends and decides each group of them
in one transaction (no transport, no storage: the ledger gives the function that does).

Concurrent spends of one server mostly touch the same tenant budget, so they serialise on
its lock anyway; each paid its own transaction, locks, statements and (SQLite) fsync. Here
they queue, and the writer takes every spend waiting (up to ``max_items``, and up to
``max_weight`` budgets in all) as one group: the ledger decides them in queue order, each
against the state the ones before it left, and commits them together. Under one client a
group is one spend; under 32, a transaction serves many.

Callers get a :class:`~concurrent.futures.Future` each, resolved by the group's function
with their own receipt or error; a synchronous caller waits on it, the gRPC servicer awaits
it without holding a worker thread. The queue is bounded (``max_queued``): a spend beyond
it is ResourceExhausted at once.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from services.common.errors import ResourceExhausted, Unavailable

T = TypeVar("T")


@dataclass
class Ticket(Generic[T]):
    """One queued item and the future its caller waits on."""

    item: T
    weight: int = 1
    future: Future[Any] = field(default_factory=Future)


class GroupWriter(Generic[T]):
    """A writer thread (started on the first item) calling ``run`` with groups of tickets;
    ``run`` resolves every ticket's future with :func:`settle`, now or later (if it raises,
    every ticket not yet resolved gets the error)."""

    def __init__(
        self,
        run: Callable[[list[Ticket[T]]], None],
        *,
        max_items: int,
        max_weight: int,
        max_queued: int,
        name: str = "ledger-writer",
    ) -> None:
        self._run, self._name = run, name
        self.max_items, self.max_weight, self.max_queued = max_items, max_weight, max_queued
        self._queue: deque[Ticket[T]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False

    @property
    def queued(self) -> int:
        """Items waiting for a group (not those being decided now)."""
        with self._cond:
            return len(self._queue)

    def submit(self, item: T, weight: int = 1) -> Future[Any]:
        """Queue ``item``; its future resolves when its group is decided (and committed)."""
        ticket: Ticket[T] = Ticket(item, weight)
        with self._cond:
            if self._closed:
                raise Unavailable("the ledger is shutting down; retry")
            if len(self._queue) >= self.max_queued:
                raise ResourceExhausted(
                    f"{self.max_queued} spends already wait for the ledger's writer",
                    details={"limit": "spend_queue", "spend_queue": self.max_queued},
                )
            self._queue.append(ticket)
            if self._thread is None or self._pid != os.getpid():  # none yet, or forked
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._pid = os.getpid()
                self._thread.start()
            self._cond.notify()
        return ticket.future

    def close(self, timeout_s: float = 30.0) -> None:
        """Refuse new items, let the writer finish the queued ones, and stop it."""
        with self._cond:
            self._closed = True
            thread = self._thread
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        with self._cond:  # only if the writer did not finish in time
            left, self._queue = list(self._queue), deque()
        for ticket in left:
            _fail(ticket, Unavailable("the ledger is shutting down; retry"))

    def _take(self) -> list[Ticket[T]]:
        """The next group: the oldest ticket, then the following ones while they fit. A
        ticket whose caller gave up (its future cancelled: the RPC's deadline passed) is
        dropped, never decided; the others can no longer be cancelled."""
        group: list[Ticket[T]] = []
        weight = 0
        while self._queue and len(group) < self.max_items:
            if group and weight + self._queue[0].weight > self.max_weight:
                break
            ticket = self._queue.popleft()
            if ticket.future.set_running_or_notify_cancel():
                weight += ticket.weight
                group.append(ticket)
        return group

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    self._thread = None
                    return
                group = self._take()
            if not group:
                continue
            try:
                self._run(group)
            except BaseException as exc:  # never leave a caller waiting
                for ticket in group:
                    _fail(ticket, exc)


def settle(ticket: Ticket[Any], outcome: Any) -> None:
    """Resolve ``ticket`` with ``outcome`` (an exception is raised to its caller), unless it
    is resolved already (the first answer stands)."""
    with suppress(InvalidStateError):
        if isinstance(outcome, BaseException):
            ticket.future.set_exception(outcome)
        else:
            ticket.future.set_result(outcome)


def _fail(ticket: Ticket[Any], exc: BaseException) -> None:
    settle(ticket, exc)
