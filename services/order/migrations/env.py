from alembic import context

from oms_order.settings import OrderSettings
from oms_order.store import metadata
from oms_runtime.migrations import run

run(context, metadata, OrderSettings().database_url)
