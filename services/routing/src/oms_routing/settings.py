from typing import Annotated, ClassVar

from pydantic import AfterValidator, Field

from oms_contracts.common import RoutingRule, check_rule_chain
from oms_runtime import ServiceSettings, service_field

from .domain import DEFAULT_RULES


class RoutingSettings(ServiceSettings):
    service: ClassVar[str] = "routing"
    database_url: str = service_field(
        "routing", "database_url", "postgresql+asyncpg://oms:oms@127.0.0.1:5432/oms_routing"
    )
    http_port: int = service_field("routing", "http_port", 8082)
    # Plans that may pick a source for an order; the re-plan after the last of them backorders what is left
    # (or makes it unfulfillable when the order denies backorders).
    max_plan_attempts: Annotated[int, Field(ge=1)] = service_field("routing", "max_plan_attempts", 3)
    # The rule chain of every channel without its own, unless one is set over HTTP for channel `*`
    # (OMS_ROUTING_DEFAULT_RULE_CHAIN='["fewest_shipments", "nearest", "lowest_cost"]').
    default_rule_chain: Annotated[list[RoutingRule], Field(min_length=1), AfterValidator(check_rule_chain)] = (
        service_field("routing", "default_rule_chain", list(DEFAULT_RULES))
    )
    # How a new source's fulfillment-request topic is created.
    request_topic_partitions: Annotated[int, Field(ge=1)] = service_field("routing", "request_topic_partitions", 6)
    request_topic_replication: Annotated[int, Field(ge=1)] = service_field("routing", "request_topic_replication", 1)
