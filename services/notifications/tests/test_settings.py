"""What the settings accept for the customer links and the operators' mail, and what they refuse at start-up."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from oms_notifications.settings import NotificationsSettings

KEY = "k" * 32


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("OMS_CUSTOMER_LINK_KEY", "OMS_NOTIFICATIONS_OPS_EMAIL", "OMS_OPS_EMAIL"):
        monkeypatch.delenv(name, raising=False)


def test_by_default_no_link_key_no_operators_and_the_local_order_service():
    settings = NotificationsSettings()

    assert settings.customer_link_key is None
    assert settings.ops_email == []
    links = settings.links
    assert (links.order_url, links.key, links.lifetime) == ("http://127.0.0.1:8081", None, timedelta(days=14))


def test_the_link_key_and_lifetime_come_from_the_environment_and_the_key_never_shows(monkeypatch):
    monkeypatch.setenv("OMS_CUSTOMER_LINK_KEY", KEY)
    monkeypatch.setenv("OMS_NOTIFICATIONS_CUSTOMER_LINK_DAYS", "3")
    monkeypatch.setenv("OMS_NOTIFICATIONS_ORDER_PUBLIC_URL", "https://shop.example")

    settings = NotificationsSettings()

    assert (settings.links.key, settings.links.lifetime) == (KEY.encode(), timedelta(days=3))
    assert settings.links.order_url == "https://shop.example"
    assert KEY not in repr(settings) and KEY not in repr(settings.links)


def test_an_empty_link_key_means_no_key(monkeypatch):
    monkeypatch.setenv("OMS_CUSTOMER_LINK_KEY", "  ")

    assert NotificationsSettings().customer_link_key is None


def test_a_link_key_shorter_than_32_bytes_is_refused_without_showing_it(monkeypatch):
    monkeypatch.setenv("OMS_CUSTOMER_LINK_KEY", "short-secret")

    with pytest.raises(ValidationError) as refused:
        NotificationsSettings()

    assert "at least 32 bytes" in str(refused.value)
    assert "short-secret" not in str(refused.value)


@pytest.mark.parametrize(
    "value",
    [
        "ops@example.com,oncall@example.com",
        " ops@example.com , oncall@example.com ",
        '["ops@example.com", "oncall@example.com"]',
    ],
)
def test_operators_are_a_comma_separated_or_json_list(monkeypatch, value):
    monkeypatch.setenv("OMS_NOTIFICATIONS_OPS_EMAIL", value)

    assert NotificationsSettings().ops_email == ["ops@example.com", "oncall@example.com"]


def test_an_operator_address_that_is_not_one_is_refused(monkeypatch):
    monkeypatch.setenv("OMS_NOTIFICATIONS_OPS_EMAIL", "ops@example.com, not an address")

    with pytest.raises(ValidationError):
        NotificationsSettings()


def test_operators_whose_addresses_do_not_fit_one_recipient_field_are_refused_with_advice(monkeypatch):
    monkeypatch.setenv("OMS_NOTIFICATIONS_OPS_EMAIL", ",".join(f"operator-{n}@example.com" for n in range(20)))

    with pytest.raises(ValidationError) as refused:
        NotificationsSettings()

    assert "distribution list" in str(refused.value)


def test_a_claim_timeout_shorter_than_a_try_can_take_is_refused_at_start_up():
    with pytest.raises(ValidationError, match="CLAIM_TIMEOUT_SECONDS must be at least 20 times"):
        NotificationsSettings(smtp_timeout=30, claim_timeout_seconds=300)

    assert NotificationsSettings(smtp_timeout=30, claim_timeout_seconds=600).claim_timeout_seconds == 600
