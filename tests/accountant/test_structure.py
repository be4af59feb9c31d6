"""The ledger stays split by concern (issue #24, item 4): a thin :class:`Ledger` over its
parts, and no module of the accountant long enough to hold two ideas (STYLE.md, "Size")."""

from __future__ import annotations

import inspect
from pathlib import Path

import services.accountant
from services.accountant.ledger import Ledger

MAX_PUBLIC = 15
MAX_LINES = 450


def _public_members(cls: type) -> list[str]:
    """Public methods of ``cls`` (class and static ones too) and its properties."""
    return sorted(
        name
        for name, member in vars(cls).items()
        if not name.startswith("_")
        and (
            inspect.isfunction(member) or isinstance(member, (classmethod, staticmethod, property))
        )
    )


def test_the_ledger_is_a_thin_facade() -> None:
    public = _public_members(Ledger)
    assert len(public) <= MAX_PUBLIC, public
    for part in ("budgets", "reservations", "audit"):  # the rest is reached through these
        assert part in Ledger.__annotations__, part


def test_no_accountant_module_is_over_the_size_limit() -> None:
    package = Path(services.accountant.__file__).parent
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in package.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
    assert len(sizes) > 10  # the glob found the package
