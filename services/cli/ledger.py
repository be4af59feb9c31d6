"""``veil ledger verify|replay``: the operator's tools for the accountant's ledger.

``verify`` recomputes every budget's composition from its full event log and compares it
with the running state the ledger keeps (exit 1 on any mismatch); ``replay`` loads an audit
export (``ExportAudit``'s JSON lines) into an empty ledger, e.g. to rebuild one elsewhere.
Both read the accountant's settings (``VEIL_ACCOUNTANT_DATABASE_URL``) unless
``--database-url`` is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.accountant.ledger import Ledger


def add_ledger_parser(subparsers: Any) -> argparse.ArgumentParser:
    ledger = subparsers.add_parser("ledger", help="verify or replay the accountant's ledger")
    actions = ledger.add_subparsers(dest="ledger_action", required=True)
    verify = actions.add_parser("verify", help="recompute every budget from its event log")
    verify.add_argument("--tenant", help="only this tenant's budgets (default: all)")
    verify.set_defaults(handler=run_verify)
    replay = actions.add_parser("replay", help="load an audit export into an empty ledger")
    replay.add_argument("--from-export", type=Path, required=True, help="JSON lines file")
    replay.set_defaults(handler=run_replay)
    for action in (verify, replay):
        action.add_argument("--database-url", help="SQLAlchemy URL (default: from settings)")
    return ledger


def _ledger(args: argparse.Namespace) -> Ledger:
    from services.accountant.ledger import Ledger
    from services.accountant.settings import AccountantSettings

    overrides = {"database_url": args.database_url} if args.database_url else {}
    ledger = Ledger(AccountantSettings(**overrides).database_url)
    ledger.create_schema()
    return ledger


def run_verify(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    try:
        bad = total = 0
        for report in ledger.audit.verify_all(args.tenant):
            total += 1
            if not report.ok:
                bad += 1
                scope = report.scope
                print(
                    f"MISMATCH {scope.tenant_id}/{scope.dataset_id or '-'}/"
                    f"{scope.subject_id or '-'}: events {report.event_count}, "
                    f"max |Δrdp| {report.max_abs_rdp_diff:.3g}, atoms equal {report.atoms_equal}"
                )
        print(f"verified {total} budgets: {total - bad} ok, {bad} mismatched")
        return 1 if bad else 0
    finally:
        ledger.close()


def run_replay(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    try:
        if not ledger.audit.is_empty():
            print("veil ledger replay: the target ledger is not empty", file=sys.stderr)
            return 2
        with args.from_export.open(encoding="utf-8") as lines:
            events = ledger.audit.replay(line for line in lines if line.strip())
        print(f"replayed {events} events from {args.from_export}")
        return 0
    finally:
        ledger.close()
