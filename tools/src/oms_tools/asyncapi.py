"""The AsyncAPI documents of the four services, generated from their FastStream apps into docs/asyncapi/.

`make asyncapi` (python -m oms_tools.asyncapi) rewrites them; tests/test_docs.py fails when they are stale."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from oms_inventory.app import create_service as inventory
from oms_inventory.settings import InventorySettings
from oms_notifications.app import create_service as notifications
from oms_notifications.settings import NotificationsSettings
from oms_order.app import create_service as order
from oms_order.settings import OrderSettings
from oms_routing.app import create_service as routing
from oms_routing.settings import RoutingSettings

DOCS = Path(__file__).resolve().parents[3] / "docs" / "asyncapi"
# The documents describe the contract, not one deployment: the server address is a placeholder.
_BROKER = "kafka:9092"


def documents() -> dict[str, dict[str, Any]]:
    services = {
        "order": order(OrderSettings(kafka_bootstrap=_BROKER)),
        "routing": routing(RoutingSettings(kafka_bootstrap=_BROKER)),
        "inventory": inventory(InventorySettings(kafka_bootstrap=_BROKER)),
        "notifications": notifications(NotificationsSettings(kafka_bootstrap=_BROKER)),
    }
    return {name: service.asyncapi.to_specification().to_jsonable() for name, service in services.items()}


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write(directory: Path = DOCS) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in documents().items():
        path = directory / f"{name}.json"
        path.write_text(render(document))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        print(path)
