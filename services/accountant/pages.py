"""Page tokens of the ledger's paged reads (budgets by creation, history either way).

A token is opaque to clients: base64 JSON of the last row id returned and the direction it
was issued for, checked strictly when it comes back.
"""

from __future__ import annotations

import base64
import binascii
import json

from services.common.errors import InvalidArgument


def check_page_size(page_size: int) -> None:
    if not 1 <= page_size <= 1000:
        raise InvalidArgument("page_size must be in [1, 1000]")


def encode_token(last_id: int, newest_first: bool) -> str:
    raw = json.dumps({"after": last_id, "desc": newest_first}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_token(token: str, newest_first: bool) -> int | None:
    """The row id to continue after (None: the first page); a token that
    :func:`encode_token` did not write, or wrote for the other order, is InvalidArgument."""
    if not token:
        return None
    bad = InvalidArgument("malformed page_token", details={"field": "page.page_token"})
    if len(token) > 256:
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        after, desc = data["after"], data["desc"]
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
        raise bad from None
    # Only what encode_token writes: a row id (a signed 64-bit integer) and a bool.
    if type(after) is not int or not 0 <= after < 2**63 or type(desc) is not bool:
        raise bad
    if desc != newest_first:
        raise InvalidArgument(
            "page_token was issued for the other order", details={"field": "page.page_token"}
        )
    return after
