from alembic import context

from oms_routing.settings import RoutingSettings
from oms_routing.store import metadata
from oms_runtime.migrations import run

run(context, metadata, RoutingSettings().database_url)
