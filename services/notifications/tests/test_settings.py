"""What the settings accept for the customer links, and what they refuse at start-up."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from oms_notifications.settings import NotificationsSettings

KEY = "k" * 32


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("OMS_CUSTOMER_LINK_KEY",):
        monkeypatch.delenv(name, raising=False)


def test_by_default_no_link_key_and_the_local_order_service():
    settings = NotificationsSettings()

    assert settings.customer_link_key is None
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
