import pytest

from oms_order.app import create_service
from oms_order.settings import OrderSettings


@pytest.fixture(scope="session")
def order_service(service_database):
    """The order service's consumers and HTTP app on a fresh, migrated database (no broker needed)."""
    return create_service(OrderSettings(database_url=service_database("order"), api_tokens={"cs-token": "cs-agent"}))
