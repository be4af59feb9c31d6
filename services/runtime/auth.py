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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.common.errors import PermissionDenied, Unauthenticated
from services.runtime.logging import current_request
from services.runtime.settings import TokenGrant


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
