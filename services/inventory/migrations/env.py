from alembic import context

from oms_inventory.settings import InventorySettings
from oms_inventory.store import metadata
from oms_runtime.migrations import run

run(context, metadata, InventorySettings().database_url)
