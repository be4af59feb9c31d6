"""The servers ``veil audit --service`` starts for itself, and its canaries.

An accountant and a sanitizer on loopback (SQLite in a temporary directory, the in-process
backend), each a :class:`VeilServer` on its own event loop in a daemon thread. The hidden
``--canary`` builds the sanitizer broken on purpose — through ``build_app``'s ``store`` and
``ledger`` replacements, never through a switch in the service — so that the audit is seen
to flag the defects it exists to catch.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert

from services.cli.audit_service import TIMEOUT_S, Endpoints, ServicePlan
from services.sanitizer.ledger import AccountantLedger
from services.sanitizer.ports import ChargeSpec, Held
from services.sanitizer.sessions import PENDING, KeyClaim, Session, SessionStore, releases

if TYPE_CHECKING:
    from services.runtime.server import ServiceApp


class Served:
    """A :class:`VeilServer` on its own event loop in a daemon thread (the audit's clients
    are synchronous, some on threads of their own)."""

    def __init__(self, app: ServiceApp) -> None:
        from services.runtime.server import VeilServer

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = VeilServer(app)
        try:
            self.target = f"127.0.0.1:{self._call(self.server.start())}"
        except BaseException:
            self._halt()
            raise

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT_S)

    def _halt(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    def stop(self) -> None:
        try:
            self._call(self.server.stop(1.0))
        finally:
            self._halt()


class SeededReleasable(SessionStore):
    """Canary ``seeded_release``: every session is stored as unseeded (the old bug)."""

    def create(self, session: Session) -> None:
        super().create(replace(session, params={**session.params, "seeded": False}))


class ForgetfulKeys(SessionStore):
    """Canary ``double_charge``: every claim of a key is a new one; earlier answers and
    concurrent claims are overwritten, never found."""

    def claim_key(
        self, tenant: str, key: str, fingerprint: str, token: str, lease_s: float, ttl_s: float
    ) -> KeyClaim:
        now = time.time()
        with self._tx() as conn:
            conn.execute(delete(releases).where(releases.c.tenant == tenant, releases.c.key == key))
            conn.execute(insert(releases).values(
                tenant=tenant, key=key, fingerprint=fingerprint, result="{}", image=b"",
                expires_at=now + ttl_s, state=PENDING, owner=token, claimed_until=now + lease_s,
            ))  # fmt: skip
        return KeyClaim(token, taken_over=True)


class FreshKeyLedger(AccountantLedger):
    """Canary ``double_charge``: the accountant client with each charge's key replaced by a
    new one, so that no retry finds its reservation."""

    async def reserve(self, charge: ChargeSpec, lease_s: float) -> Held:
        return await super().reserve(replace(charge, key=uuid.uuid4().hex), lease_s)


def sanitizer_app(
    plan: ServicePlan, tmp: Path, accountant: str, tokens: dict[str, Any], delegate: str
) -> ServiceApp:
    """The sanitizer (broken as ``plan.canary`` says), charging ``accountant`` with the
    ``delegate`` token; readiness polled every 0.2 s."""
    from services.inference.backend import SANITIZER_MODELS, InferenceSettings
    from services.sanitizer.app import Settings, build_app

    named: dict[str, Any] = {"store": plan.store, "diffae": plan.diffae}
    inference = InferenceSettings(
        models=list(SANITIZER_MODELS), **{k: v for k, v in named.items() if v is not None}
    )
    chosen: dict[str, Any] = {"default_ddim_steps": plan.steps, "probes": plan.probes}
    settings = Settings(
        host="127.0.0.1", port=0, metrics_port=None, tokens=tokens,
        database_url=f"sqlite:///{tmp / 'sanitizer.sqlite'}", accountant_url=accountant,
        accountant_token=delegate, accountant_timeout_s=10.0, shutdown_grace_s=2.0,
        inference=inference, **{k: v for k, v in chosen.items() if v},
    )  # fmt: skip
    replacements: dict[str, Any] = {}
    if plan.canary == "seeded_release":
        replacements["store"] = SeededReleasable(settings.database_url)
    elif plan.canary == "double_charge":
        replacements["store"] = ForgetfulKeys(settings.database_url)
        replacements["ledger"] = FreshKeyLedger(accountant, delegate, 10.0)
    app = build_app(settings, **replacements)
    app.readiness_interval_s = 0.2
    return app


@contextmanager
def own_servers(plan: ServicePlan) -> Iterator[Endpoints]:
    """An accountant and a sanitizer on loopback, SQLite in a temporary directory; a
    tenant token for the audit and a delegate token for the sanitizer, both made up."""
    from services.accountant.app import Settings, build_app
    from services.runtime.client import wait_until_ready
    from services.runtime.settings import TokenGrant

    audit, delegate = secrets.token_hex(16), secrets.token_hex(16)
    tokens = {
        audit: TokenGrant(tenant="veil-audit", scopes=["*"]),
        delegate: TokenGrant(tenant="veil", scopes=["accountant:*"], delegate=True),
    }
    with tempfile.TemporaryDirectory(prefix="veil-audit-") as tmp, ExitStack() as stack:
        settings = Settings(
            host="127.0.0.1", port=0, metrics_port=None, tokens=tokens, shutdown_grace_s=2.0,
            database_url=f"sqlite:///{Path(tmp) / 'ledger.sqlite'}",
        )  # fmt: skip
        accountant = Served(build_app(settings))
        stack.callback(accountant.stop)
        app = sanitizer_app(plan, Path(tmp), accountant.target, tokens, delegate)
        sanitizer = Served(app)
        stack.callback(sanitizer.stop)
        wait_until_ready(sanitizer.target, timeout=120)
        where = f"own accountant and sanitizer on loopback (in-process backend, SQLite in {tmp})"
        sample = functools.partial(
            app.registry.get_sample_value, "veil_sanitizer_generated_images_total"
        )
        yield Endpoints(
            sanitizer.target, audit, accountant.target, audit, where, lambda: sample() or 0.0
        )
