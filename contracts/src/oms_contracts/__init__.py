"""The one vocabulary between OMS services and the outside world: topics, CloudEvents and their payloads."""

from .common import ORDER_NAMESPACE, order_id_for
from .envelope import CONTENT_TYPE, CloudEvent
from .topics import ALL_EVENTS, DEAD_LETTERS, FIXED_TOPICS, Topic, fulfillment_requests

__all__ = [
    "ALL_EVENTS",
    "CONTENT_TYPE",
    "DEAD_LETTERS",
    "FIXED_TOPICS",
    "ORDER_NAMESPACE",
    "CloudEvent",
    "Topic",
    "fulfillment_requests",
    "order_id_for",
]
