from alembic import context

from oms_notifications.settings import NotificationsSettings
from oms_notifications.store import metadata
from oms_runtime.migrations import run

run(context, metadata, NotificationsSettings().database_url)
