"""Customer links: valid only as signed, for the order and lines signed, until they expire."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oms_runtime.links import LinkCheck, query, sign, verify

KEY = b"k" * 32
ORDER = uuid.UUID("3f0c2a5e-1111-4222-8333-444455556666")
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=14)


def test_a_link_is_valid_for_its_order_and_lines_until_it_expires():
    params = query(KEY, ORDER, ["2", "1"], LATER)
    assert params["lines"] == "1,2"
    assert verify(KEY, ORDER, params, NOW) == (LinkCheck.valid, ["1", "2"])
    assert verify(KEY, ORDER, params, LATER) == (LinkCheck.expired, [])


@pytest.mark.parametrize(
    "change",
    [
        lambda p: {**p, "lines": "1,2,3"},
        lambda p: {**p, "lines": "1"},
        lambda p: {**p, "expires": str(int(p["expires"]) + 3600)},
        lambda p: {**p, "sig": p["sig"][:-2] + "AA"},
        lambda p: {k: v for k, v in p.items() if k != "sig"},
        lambda p: {**p, "expires": "tomorrow"},
        lambda p: {**p, "lines": ""},
    ],
)
def test_an_altered_or_incomplete_link_is_forged(change):
    params = change(query(KEY, ORDER, ["1", "2"], LATER))
    assert verify(KEY, ORDER, params, NOW) == (LinkCheck.forged, [])


def test_a_link_for_another_order_or_signed_with_another_key_is_forged():
    params = query(KEY, ORDER, ["1"], LATER)
    assert verify(KEY, uuid.uuid4(), params, NOW)[0] is LinkCheck.forged
    assert verify(b"x" * 32, ORDER, params, NOW)[0] is LinkCheck.forged


def test_an_altered_expired_link_is_reported_forged_not_expired():
    params = {**query(KEY, ORDER, ["1"], NOW - timedelta(days=1)), "lines": "2"}
    assert verify(KEY, ORDER, params, NOW)[0] is LinkCheck.forged


def test_a_short_key_is_refused():
    with pytest.raises(ValueError, match="at least 32 bytes"):
        sign(b"short", ORDER, ["1"], LATER)


@given(st.lists(st.text(min_size=1, max_size=5).filter(lambda s: "," not in s), min_size=1, max_size=4, unique=True))
def test_the_signature_depends_on_the_set_of_lines_not_their_order(lines):
    assert sign(KEY, ORDER, lines, LATER) == sign(KEY, ORDER, list(reversed(lines)), LATER)
    assert verify(KEY, ORDER, query(KEY, ORDER, lines, LATER), NOW) == (LinkCheck.valid, sorted(lines))
