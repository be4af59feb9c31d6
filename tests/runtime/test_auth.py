import pytest

from services.common.errors import PermissionDenied, Unauthenticated
from services.runtime.auth import (
    Principal,
    TokenAuthenticator,
    current_principal,
    require_scope,
    require_tenant,
    reset_principal,
    set_principal,
)
from services.runtime.settings import TokenGrant


def test_scopes_and_wildcards():
    p = Principal("acme", frozenset({"accountant:*", "sanitizer:preview"}))
    assert p.allows("accountant:spend")
    assert p.allows("sanitizer:preview")
    assert not p.allows("sanitizer:release")
    assert Principal("acme", frozenset({"*"})).allows("anything:at_all")


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), "missing"),
        ((("authorization", "Basic abc"),), "Bearer"),
        ((("authorization", "Bearer "),), "Bearer"),
        ((("authorization", "Bearer wrong"),), "unknown"),
    ],
)
def test_authenticator_refuses(metadata, message):
    auth = TokenAuthenticator({"good": TokenGrant(tenant="acme")})
    with pytest.raises(Unauthenticated, match=message):
        auth.authenticate(metadata)


def test_authenticator_maps_token_to_principal():
    auth = TokenAuthenticator({"good": TokenGrant(tenant="acme", scopes=["a:b"])})
    assert auth.authenticate((("Authorization", b"Bearer good"),)) == Principal(
        "acme", frozenset({"a:b"})
    )


def test_tenant_and_scope_checks():
    with pytest.raises(Unauthenticated):
        current_principal()
    token = set_principal(Principal("acme", frozenset({"accountant:spend"})))
    try:
        assert require_tenant("") == "acme"
        assert require_tenant("acme") == "acme"
        with pytest.raises(PermissionDenied):
            require_tenant("globex")
        require_scope("accountant:spend")
        with pytest.raises(PermissionDenied):
            require_scope("accountant:put_budget")
    finally:
        reset_principal(token)
