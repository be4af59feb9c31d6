"""Accountant test material: the accountants every contract test runs over, and an injected
clock that tests move instead of sleeping."""

from __future__ import annotations

ACCOUNTANTS = ["rdp", "pld", "prv"]


class FakeClock:
    """Injected time: tests move it instead of sleeping."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
