"""Signed, expiring links for customers: what a mail may let its reader do without an account.

Notifications puts a link in a mail; the order service checks it when the customer follows it. Both hold the same
secret key (OMS_CUSTOMER_LINK_KEY). The link names the order, the lines it is about and when it expires; the
signature is an HMAC-SHA256 over exactly those, so changing any of them (another order, another line, a later
expiry) makes it fail. Pure functions: no I/O, no clock of their own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum

# Below this a key can be guessed; 32 bytes is the HMAC-SHA256 block of security it is meant to give.
MIN_KEY_BYTES = 32


class LinkCheck(StrEnum):
    valid = "valid"
    forged = "forged"  # missing, malformed, or not made with our key over these values
    expired = "expired"


def _message(order_id: uuid.UUID, lines: Iterable[str], expires: int) -> bytes:
    # Sorted and length-prefixed: the same lines in another order sign alike, and no choice of line ids can make
    # two different lists encode to the same bytes.
    parts = [str(order_id), str(expires), *(f"{len(line)}:{line}" for line in sorted(lines))]
    return "\n".join(parts).encode()


def _check_key(key: bytes) -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"a customer link key needs at least {MIN_KEY_BYTES} bytes")
    return key


def sign(key: bytes, order_id: uuid.UUID, lines: Iterable[str], expires: datetime) -> str:
    """The signature of a link to these lines of an order, valid until `expires`."""
    digest = hmac.new(_check_key(key), _message(order_id, lines, _epoch(expires)), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def query(key: bytes, order_id: uuid.UUID, lines: Iterable[str], expires: datetime) -> dict[str, str]:
    """The query parameters of a signed link: `lines` (comma-separated), `expires` (Unix seconds), `sig`."""
    lines = sorted(lines)
    return {"lines": ",".join(lines), "expires": str(_epoch(expires)), "sig": sign(key, order_id, lines, expires)}


def verify(key: bytes, order_id: uuid.UUID, params: Mapping[str, str], now: datetime) -> tuple[LinkCheck, list[str]]:
    """Check a followed link's parameters; returns the verdict and, when valid, the lines it names.

    Forgery is checked before expiry, so an altered link is never reported as merely expired."""
    try:
        lines = [line for line in params["lines"].split(",") if line]
        expires = int(params["expires"])
        given = params["sig"]
    except (KeyError, ValueError, AttributeError):
        return LinkCheck.forged, []
    if not lines:
        return LinkCheck.forged, []
    expected = sign(key, order_id, lines, datetime.fromtimestamp(expires, UTC))
    if not hmac.compare_digest(expected.encode(), given.encode()):
        return LinkCheck.forged, []
    if _epoch(now) >= expires:
        return LinkCheck.expired, []
    return LinkCheck.valid, sorted(lines)


def _epoch(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("a link's expiry must be an aware datetime")
    return int(moment.timestamp())
