"""Row-level helpers shared by the ledger's parts (budgets, spends, reservations, audit)."""

from __future__ import annotations

import functools
import json
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Connection, Select, and_, bindparam, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from services.accountant import hotsql
from services.accountant.accounting import Atom, Composition, atoms_of
from services.accountant.events import Budget, Charge, Scope, SubjectDefault
from services.accountant.schema import budgets, reservations, subject_defaults, tight_figures
from services.common.errors import NotFound


@dataclass(frozen=True)
class BudgetRow:
    """A budget as stored: limits, running composition and version."""

    id: int
    budget: Budget
    version: int
    comp: Composition
    event_count: int = 0


def dumps(obj: Any) -> str:
    """Canonical JSON (sorted keys) so equal charges have equal text (GROUP BY in verify)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@functools.lru_cache(maxsize=8)
def _curve_format(n: int) -> str:
    return "[" + ",".join(["%.17g"] * n) + "]"


def curve_text(curve: np.ndarray) -> str:
    """A stored RDP curve: a JSON list of its floats, as before (any reader of the old
    text reads this one, and this reader reads the old one), but each float written with
    17 significant digits, which parse back to the same float (IEEE 754 doubles need at
    most 17), in one C-level format call: the shortest repr that ``json.dumps`` looks for
    was most of the CPU a batch spent storing its budgets. A curve holding an infinity,
    a NaN or a negative zero (which the format would not write as JSON, or would read back
    as +0) is written by ``json.dumps`` as before."""
    values = curve.tolist()
    if not (np.isfinite(curve).all() and not np.signbit(curve[curve == 0]).any()):
        return dumps(values)
    return _curve_format(len(values)) % tuple(values)


def atoms_to_json(atoms: Mapping[Atom, int]) -> str:
    return dumps(sorted([[list(a), n] for a, n in atoms.items() if n], key=repr))


def atoms_from_json(text: str) -> Counter[Atom]:
    return Counter({(str(a[0]), *map(float, a[1:])): int(n) for a, n in json.loads(text)})


def scope_key(scope: Scope) -> tuple[str, str, str]:
    """Stored form of a scope: '' stands for "no dataset" / "no subject"."""
    return scope.tenant_id, scope.dataset_id or "", scope.subject_id or ""


_PARSED_MAX = 1024
_parsed: OrderedDict[tuple[str, str], tuple[np.ndarray, Counter[Atom]]] = OrderedDict()
_parsed_lock = threading.Lock()


def composition(rdp_text: str, atoms_text: str) -> Composition:
    """A stored composition, parsed once per distinct text (the budgets a spend touches
    were mostly stored by the spend before it, here: :func:`remember`); the curve is
    read-only (:meth:`Composition.add` copies), the multiset a fresh copy."""
    key = (rdp_text, atoms_text)
    with _parsed_lock:
        hit = _parsed.get(key)
        if hit is not None:
            _parsed.move_to_end(key)
    if hit is None:
        curve = np.array(json.loads(rdp_text), dtype=float)
        curve.setflags(write=False)
        hit = (curve, atoms_from_json(atoms_text))
        _remember(key, hit)
    return Composition(hit[0], _copy(hit[1]))


def remember(rdp_text: str, atoms_text: str, comp: Composition) -> None:
    """``comp`` is what ``rdp_text``/``atoms_text`` (its stored form) parse to."""
    curve = comp.rdp
    if curve.flags.writeable:
        curve = curve.copy()
        curve.setflags(write=False)
    _remember((rdp_text, atoms_text), (curve, _copy(comp.atoms)))


def _copy(atoms: Counter[Atom]) -> Counter[Atom]:
    """``Counter(atoms)`` without its constructor's Mapping ABC check (the same entries)."""
    out: Counter[Atom] = Counter.__new__(Counter)
    dict.update(out, atoms)
    return out


def _remember(key: tuple[str, str], value: tuple[np.ndarray, Counter[Atom]]) -> None:
    with _parsed_lock:
        _parsed[key] = value
        _parsed.move_to_end(key)
        while len(_parsed) > _PARSED_MAX:
            _parsed.popitem(last=False)


def row_to_budget(row: Any) -> BudgetRow:
    scope = Scope(row.tenant_id, row.dataset_id or None, row.subject_id or None)
    comp = composition(row.rdp, row.atoms)
    budget = Budget(scope, row.epsilon, row.delta)
    return BudgetRow(row.id, budget, row.version, comp, int(row.event_count))


def _driver_row_to_budget(row: tuple[Any, ...]) -> BudgetRow:
    """:func:`row_to_budget` of a :func:`hotsql.budgets` row."""
    id_, tenant, dataset, subject, epsilon, delta, version, count, rdp, atoms = row
    scope = Scope(tenant, dataset or None, subject or None)
    budget = Budget(scope, float(epsilon), float(delta))
    return BudgetRow(int(id_), budget, int(version), composition(rdp, atoms), int(count))


@functools.lru_cache(maxsize=32)
def _budgets_query(groups: int, lock: bool) -> Select[Any]:
    """The budgets of ``groups`` (tenant, dataset, IN-list of subjects) groups, built once
    per shape and bound per call: statement building is most of a lookup's CPU otherwise."""
    cond = or_(
        *(
            and_(
                budgets.c.tenant_id == bindparam(f"t{i}"),
                budgets.c.dataset_id == bindparam(f"d{i}"),
                budgets.c.subject_id.in_(bindparam(f"s{i}", expanding=True)),
            )
            for i in range(groups)
        )
    )
    query = select(budgets).where(cond).order_by(budgets.c.id)
    return query.with_for_update() if lock else query


def find_budgets_core(
    conn: Connection, scopes: Iterable[Scope], *, lock: bool
) -> tuple[list[BudgetRow], list[Scope]]:
    """:func:`find_budgets` through SQLAlchemy Core (the reference for the driver SQL)."""
    scopes = list(scopes)
    keys = [scope_key(s) for s in scopes]
    # One expanding IN list per (tenant, dataset), and the number of groups padded to a
    # power of two (a repeated group matches nothing new): the statement's shape does not
    # depend on how many subjects or datasets a request names. An OR per subject grew
    # SQLite's expression tree past its limit near 1000 subjects, and SQLAlchemy's
    # compiled-statement cache by one entry per count.
    groups: dict[tuple[str, str], list[str]] = {}
    for t, d, s in keys:
        groups.setdefault((t, d), []).append(s)
    items = list(groups.items())
    shape = 1 << (len(items) - 1).bit_length()
    items += [items[-1]] * (shape - len(items))
    params: dict[str, Any] = {}
    for i, ((t, d), subjects) in enumerate(items):
        params |= {f"t{i}": t, f"d{i}": d, f"s{i}": subjects}
    rows = [row_to_budget(r) for r in conn.execute(_budgets_query(shape, lock), params)]
    found = {scope_key(r.budget.scope) for r in rows}
    return rows, [scope for scope, key in zip(scopes, keys, strict=True) if key not in found]


def find_budgets(
    conn: Connection, scopes: Iterable[Scope], *, lock: bool
) -> tuple[list[BudgetRow], list[Scope]]:
    """Budgets of ``scopes`` ordered by id, and the scopes that have none; ``lock`` takes
    ``FOR UPDATE`` row locks.

    Locking in id order means two spends touching overlapping budgets always lock them in
    the same order, so PostgreSQL never deadlocks on them. One fixed statement
    (:func:`hotsql.budgets`) whatever the number of scopes; :func:`find_budgets_core` is
    the same through SQLAlchemy.
    """
    if not hotsql.usable(conn):
        return find_budgets_core(conn, scopes, lock=lock)
    scopes = list(scopes)
    keys = [scope_key(s) for s in scopes]
    rows = [_driver_row_to_budget(r) for r in hotsql.budgets(conn, list(dict.fromkeys(keys)), lock)]
    found = {scope_key(r.budget.scope) for r in rows}
    return rows, [scope for scope, key in zip(scopes, keys, strict=True) if key not in found]


def load_budgets(conn: Connection, scopes: Iterable[Scope], *, lock: bool) -> list[BudgetRow]:
    """Budgets of ``scopes`` ordered by id (see :func:`find_budgets`); a missing one is
    NotFound."""
    rows, missing = find_budgets(conn, scopes, lock=lock)
    if missing:
        raise not_found(missing[0])
    return rows


def not_found(scope: Scope) -> NotFound:
    return NotFound(f"no {scope.kind} budget for this scope", details=scope_key_details(scope))


def subject_default(conn: Connection, tenant_id: str, dataset_id: str) -> SubjectDefault | None:
    """The dataset budget's limits for new subject budgets, if it has any."""
    q = (
        select(subject_defaults.c.epsilon, subject_defaults.c.delta)
        .join(budgets, budgets.c.id == subject_defaults.c.budget_id)
        .where(
            budgets.c.tenant_id == tenant_id,
            budgets.c.dataset_id == dataset_id,
            budgets.c.subject_id == "",
        )
    )
    row = conn.execute(q).first()
    return None if row is None else SubjectDefault(row.epsilon, row.delta)


def subject_defaults_of(conn: Connection, budget_ids: Iterable[int]) -> dict[int, SubjectDefault]:
    ids = list(budget_ids)
    if not ids:
        return {}
    q = select(subject_defaults).where(subject_defaults.c.budget_id.in_(ids))
    return {r.budget_id: SubjectDefault(r.epsilon, r.delta) for r in conn.execute(q)}


def put_subject_default(conn: Connection, budget_id: int, default: SubjectDefault | None) -> None:
    """Set (or, with None, remove) a dataset budget's subject default."""
    conn.execute(delete(subject_defaults).where(subject_defaults.c.budget_id == budget_id))
    if default is not None:
        conn.execute(
            subject_defaults.insert().values(
                budget_id=budget_id, epsilon=default.epsilon, delta=default.delta
            )
        )


def create_subjects(conn: Connection, missing: Iterable[Scope], now: float) -> list[int]:
    """Create the budgets of ``missing`` subject scopes (one dataset's) from the dataset's
    subject default, in the caller's transaction; returns the ids created (none without a
    default: the caller then reports the subject NotFound).

    Called with the charge's tenant budget locked (every charge touches it), so first
    charges of one tenant's subjects are serialised: two concurrent first charges create one
    budget. ``INSERT … ON CONFLICT DO NOTHING`` in sorted order is a second guard.
    """
    subjects = sorted((m for m in missing if m.kind == "subject"), key=scope_key)
    if not subjects:
        return []
    t, d = subjects[0].tenant_id, subjects[0].dataset_id or ""
    default = subject_default(conn, t, d)
    if default is None:
        return []
    empty = Composition()
    values = [
        {
            "tenant_id": t,
            "dataset_id": d,
            "subject_id": scope.subject_id,
            "epsilon": default.epsilon,
            "delta": default.delta,
            "version": 0,
            "event_count": 0,
            "rdp": curve_text(empty.rdp),
            "atoms": atoms_to_json(empty.atoms),
            "updated_at": now,
        }
        for scope in subjects
        if scope.tenant_id == t and (scope.dataset_id or "") == d
    ]
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(budgets).on_conflict_do_nothing(
        index_elements=["tenant_id", "dataset_id", "subject_id"]
    )
    created = conn.execute(stmt.returning(budgets.c.id), values).scalars().all()
    return list(created)


def charge_budgets(
    conn: Connection, charge: Charge, now: float, *, create: bool
) -> tuple[list[BudgetRow], list[int]]:
    """The charge's budgets, locked, in id order, and the ids of subject budgets created
    for it (``create``: from the dataset's subject default); a budget still missing is
    NotFound."""
    rows, missing = find_budgets(conn, charge.scopes, lock=True)
    created: list[int] = []
    if missing and create:
        created = create_subjects(conn, missing, now)
        # Again even if this call created nothing: on PostgreSQL a concurrent first charge
        # may have created the budget after this statement's snapshot (ON CONFLICT then
        # inserts nothing); a new statement sees it.
        rows, missing = find_budgets(conn, charge.scopes, lock=True)
    if missing:
        raise not_found(missing[0])
    return rows, created


def drop_budgets(conn: Connection, budget_ids: Iterable[int]) -> None:
    """Delete budgets created in this transaction that ended up unused (a refused item of
    a batch must leave nothing behind)."""
    ids = list(budget_ids)
    if ids:
        conn.execute(delete(subject_defaults).where(subject_defaults.c.budget_id.in_(ids)))
        conn.execute(delete(budgets).where(budgets.c.id.in_(ids)))


def scope_key_details(scope: Scope) -> dict[str, str]:
    return {"scope": scope.kind, **{k: v for k, v in scope.to_json().items() if v is not None}}


_LIVE = select(reservations.c.id, reservations.c.charge, reservations.c.budget_ids).where(
    reservations.c.tenant_id == bindparam("tenant"),
    reservations.c.status == "live",
    reservations.c.expires_at > bindparam("now"),
)


def live_reservation_atoms(
    conn: Connection,
    tenant_id: str,
    budget_ids: Iterable[int],
    now: float,
    exclude: str | None = None,
) -> dict[int, Counter[Atom]]:
    """Atoms held by live (unexpired) reservations, per budget id among ``budget_ids``."""
    wanted = set(budget_ids)
    held: dict[int, Counter[Atom]] = {b: Counter() for b in wanted}
    if hotsql.usable(conn):
        live: Iterable[Any] = hotsql.live_reservations(conn, tenant_id, now)
    else:
        live = conn.execute(_LIVE, {"tenant": tenant_id, "now": now})
    for rid, charge_text, ids_text in live:
        if rid == exclude:
            continue
        touched = wanted.intersection(json.loads(ids_text))
        if touched:
            atoms = atoms_of(Charge.from_json(json.loads(charge_text)))
            for b in touched:
                held[b].update(atoms)
    return held


StoredTight = tuple[int, str, float, float | None]
"""(version, accountant, delta, epsilon) of a stored tight figure."""


def stored_tight(conn: Connection, budget_ids: Iterable[int]) -> dict[int, StoredTight]:
    ids = list(budget_ids)
    if not ids:
        return {}
    q = select(tight_figures).where(tight_figures.c.budget_id.in_(ids))
    return {r.budget_id: (r.version, r.accountant, r.delta, r.epsilon) for r in conn.execute(q)}


def store_tight(conn: Connection, budget_id: int, figure: StoredTight) -> None:
    """Keep the newest figure of a budget (an older version never replaces a newer one)."""
    version, accountant, delta, epsilon = figure
    values = {"version": version, "accountant": accountant, "delta": delta, "epsilon": epsilon}
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(tight_figures).values(budget_id=budget_id, **values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["budget_id"],
        set_=values,
        where=tight_figures.c.version <= version,
    )
    conn.execute(stmt)
