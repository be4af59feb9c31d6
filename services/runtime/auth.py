"""Bearer-token authentication and tenant/scope authorization.

Tokens arrive as ``authorization: Bearer <token>`` metadata and map (from settings) to a
:class:`Principal`: one tenant and a set of scopes. The auth interceptor puts the
principal in a context variable for the duration of the RPC; core code asks for it with
:func:`current_principal` and checks tenants with :func:`require_tenant`, so no servicer
parses metadata itself. Tokens are compared in constant time.
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from services.common.errors import PermissionDenied, Unauthenticated
from services.runtime.logging import current_request
from services.runtime.settings import TokenGrant

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant and the scopes its token grants."""

    tenant: str
    scopes: frozenset[str]
    subject: str | None = None
    """Set for a data subject's own token: the only subject it acts for."""
    delegate: bool = False
    """A service acting for other tenants (see ``TokenGrant.delegate``)."""

    def allows(self, scope: str) -> bool:
        """True if ``scope`` (``service:action``) is granted, directly or by a wildcard."""
        service = scope.split(":", 1)[0]
        return bool({"*", f"{service}:*", scope} & self.scopes)


_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "veil_principal", default=None
)


class Authenticator(Protocol):
    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal:
        """The principal of the request's bearer token; Unauthenticated otherwise."""
        ...


class TokenAuthenticator:
    """Maps bearer tokens to principals, as configured in settings."""

    def __init__(self, tokens: Mapping[str, TokenGrant]) -> None:
        self._grants = [
            (token.encode(), Principal(g.tenant, frozenset(g.scopes), g.subject, g.delegate))
            for token, g in tokens.items()
        ]

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal:
        """Return the principal for the request's bearer token or raise Unauthenticated."""
        header = next((v for k, v in metadata or () if k.lower() == "authorization"), None)
        if header is None:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        text = header.decode() if isinstance(header, bytes) else header
        scheme, _, token = text.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        presented = token.strip().encode()
        found: Principal | None = None
        for known, principal in self._grants:  # no early exit: timing does not reveal which
            if hmac.compare_digest(known, presented):
                found = principal
        if found is None:
            raise Unauthenticated("unknown bearer token")
        return found


class ReloadingAuthenticator:
    """:class:`TokenAuthenticator` over the settings' tokens plus ``tokens_file``, re-read
    when the file changes: a rotated Secret takes effect without a restart. The file's
    identity (modification time, size, inode; a Kubernetes Secret mount swaps a symlink) is
    looked at no more than once per ``check_s``; a file that no longer parses keeps the
    tokens in force and is logged, once per change."""

    def __init__(
        self,
        base: Mapping[str, TokenGrant],
        path: Path | None,
        check_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base, self._path, self._check_s, self._clock = dict(base), path, check_s, clock
        self._seen: tuple[int, int, int] | None = None
        self._checked = -float("inf")
        self._current = TokenAuthenticator(self._base)
        if path is not None:
            self._current = TokenAuthenticator(self._load(path, initial=True))

    def _identity(self, path: Path) -> tuple[int, int, int] | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _load(self, path: Path, *, initial: bool = False) -> dict[str, TokenGrant]:
        from pydantic import TypeAdapter

        self._seen = self._identity(path)
        extra = TypeAdapter(dict[str, TokenGrant]).validate_json(path.read_bytes())
        if not initial:
            log.info("token file %s reloaded: %d tokens", path, len(extra))
        return {**self._base, **extra}

    def _refresh(self) -> None:
        now = self._clock()
        if self._path is None or now - self._checked < self._check_s:
            return
        self._checked = now
        identity = self._identity(self._path)
        if identity is None or identity == self._seen:
            return
        try:
            self._current = TokenAuthenticator(self._load(self._path))
        except (OSError, ValueError) as exc:
            log.error(
                "token file %s changed but cannot be read (%s); the tokens in force stay",
                self._path,
                type(exc).__name__,
            )

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal:
        self._refresh()
        return self._current.authenticate(metadata)


def set_principal(principal: Principal | None) -> contextvars.Token:
    """Bind the principal for the current RPC (used by the auth interceptor)."""
    return _principal.set(principal)


def reset_principal(token: contextvars.Token) -> None:
    """Undo :func:`set_principal`."""
    _principal.reset(token)


def current_principal() -> Principal:
    """The principal of the RPC being served; Unauthenticated outside an authenticated RPC."""
    principal = _principal.get()
    if principal is None:
        raise Unauthenticated("no authenticated caller")
    return principal


def require_tenant(requested: str = "") -> str:
    """The tenant a request acts for: the caller's, or PermissionDenied if it names another.

    An empty ``requested`` means "my tenant". A delegate token (a Veil service's) may name
    any tenant: it acts for the tenant its own caller authenticated as, and the RPC's access
    line says so (``tenant=<requested> via=<the delegate's tenant>``).
    """
    principal = current_principal()
    if requested and principal.delegate:
        request = current_request()
        if request is not None:
            request.tenant, request.via = requested, principal.tenant
        return requested
    if requested and requested != principal.tenant:
        raise PermissionDenied("the token does not grant access to this tenant")
    return principal.tenant


def require_scope(scope: str) -> Principal:
    """The caller's principal if it holds ``scope``; PermissionDenied otherwise."""
    principal = current_principal()
    if not principal.allows(scope):
        raise PermissionDenied(f"the token lacks scope {scope!r}")
    return principal
