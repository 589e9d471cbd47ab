"""One mail as the bytes handed to the SMTP server: a text and an HTML alternative of the same message.

Written out directly rather than through the standard library's `EmailMessage`, whose header parsing and folding
cost more CPU than everything else the service does for an order (issue 10's profile). What is written is the same
MIME any mail reader takes: headers in ASCII (RFC 2047 encoded words for anything else), both bodies in UTF-8,
base64 encoded, so no line of the body is too long and no byte needs 8BITMIME. Parsed by `email`, it reads back
as the message it was made from (services/notifications/tests/test_mime.py).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from email.header import Header
from email.utils import formataddr

_CRLF = "\r\n"


def header(value: str) -> str:
    """A header value as it may be sent: as is when it is printable ASCII, else as RFC 2047 encoded words (so that a
    line break in it can never start another header)."""
    if value.isascii() and value.isprintable():
        return value
    return Header(value, "utf-8", maxlinelen=76).encode(linesep=_CRLF)


def address(name: str | None, addr_spec: str) -> str:
    """`Name <local@domain>`, the name quoted or encoded as it needs."""
    return formataddr((name or "", addr_spec), charset="utf-8")


def compose(
    *,
    sender: str,
    to: Sequence[str],
    subject: str,
    date: str,
    message_id: str,
    text: str,
    html: str,
    boundary: str,
    extra: Sequence[tuple[str, str]] = (),
) -> bytes:
    """The mail: `sender` and `to` as `address()` makes them, `boundary` a token found in neither body (a base64
    body cannot hold one with a '-' in it)."""
    lines = [
        f"From: {sender}",
        f"To: {', '.join(to)}",
        f"Subject: {header(subject)}",
        f"Date: {date}",
        f"Message-ID: {message_id}",
        *(f"{name}: {header(value)}" for name, value in extra),
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative; boundary="{boundary}"',
        "",
    ]
    for subtype, body in (("plain", text), ("html", html)):
        lines += [
            f"--{boundary}",
            f'Content-Type: text/{subtype}; charset="utf-8"',
            "Content-Transfer-Encoding: base64",
            "",
            base64.encodebytes(body.encode("utf-8")).decode("ascii").rstrip("\n").replace("\n", _CRLF),
        ]
    lines += [f"--{boundary}--", ""]
    return _CRLF.join(lines).encode("ascii")
