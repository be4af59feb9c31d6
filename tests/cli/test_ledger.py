"""``veil ledger verify|replay`` on a real SQLite ledger, as an operator runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import update

from services.accountant.events import Budget, Charge, Gaussian, Scope
from services.accountant.ledger import Ledger
from services.accountant.schema import budgets


def veil(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "ledger", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def filled(path: Path) -> Ledger:
    ledger = Ledger(f"sqlite:///{path}")
    ledger.create_schema()
    for scope in (Scope("t"), Scope("t", "d"), Scope("t", "d", "s")):
        ledger.budgets.put("t", Budget(scope, 10.0, 1e-5))
    for i in range(3):
        ledger.spend("t", Charge(Gaussian(20.0), "t", "d", f"k{i}", subject_ids=("s",)))
    return ledger


def test_verify_passes_then_catches_a_tampered_budget(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite"
    ledger = filled(db)
    ok = veil("verify", "--database-url", f"sqlite:///{db}")
    assert ok.returncode == 0 and "verified 3 budgets: 3 ok, 0 mismatched" in ok.stdout
    with ledger._tx() as conn:  # an operator's bad manual edit
        conn.execute(update(budgets).where(budgets.c.subject_id == "s").values(event_count=7))
    ledger.close()
    bad = veil("verify", "--database-url", f"sqlite:///{db}", "--tenant", "t")
    assert bad.returncode == 1 and "MISMATCH t/d/s" in bad.stdout


def test_replay_rebuilds_an_export_into_an_empty_ledger_only(tmp_path: Path) -> None:
    source = filled(tmp_path / "a.sqlite")
    export = tmp_path / "audit.jsonl"
    export.write_text("\n".join(source.audit.export("t")) + "\n")
    target = f"sqlite:///{tmp_path / 'b.sqlite'}"
    done = veil("replay", "--from-export", str(export), "--database-url", target)
    assert done.returncode == 0 and "replayed 3 events" in done.stdout
    rebuilt = Ledger(target)
    assert rebuilt.budgets.remaining("t", Scope("t", "d", "s")).event_count == 3
    assert veil("verify", "--database-url", target).returncode == 0
    again = veil("replay", "--from-export", str(export), "--database-url", target)
    assert again.returncode == 2 and "not empty" in again.stderr
    rebuilt.close()
    source.close()
