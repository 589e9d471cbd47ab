"""Principals and ACLs on a broker that authenticates (SASL/SCRAM) and authorizes (StandardAuthorizer).

What each principal may do is data here: a fulfillment source reads only its own request topic, in consumer groups
named after its principal, and writes only fulfillment updates; each OMS service reads and writes exactly the topics
its code consumes and publishes (a test compares this table with the services themselves).

aiokafka's admin client has no call for SCRAM credentials or ACLs, but its protocol layer has the ACL requests
(CreateAcls, DescribeAcls), and AlterUserScramCredentials / DescribeUserScramCredentials (KIP-554) are defined below
from Kafka's protocol reference. They go through the admin client's own connection, so they log in as the operator
(OMS_KAFKA_SASL_USERNAME, a super user or one allowed ALTER on the cluster). The SCRAM credential is salted and
hashed here (PBKDF2, RFC 5802), as Kafka's own Admin client does: the password never travels to the broker.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest_v1, DescribeAclsRequest
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import CompactArray, CompactBytes, CompactString, Int8, Int16, Int32, Schema, TaggedFields

from oms_contracts import DEAD_LETTERS, Topic, fulfillment_requests
from oms_contracts.topics import (
    CHANNEL_ORDERS,
    FULFILLMENT_UPDATES,
    INVENTORY_ALLOCATIONS,
    INVENTORY_RECEIPTS,
    INVENTORY_STOCK,
    NOTIFICATIONS,
    ORDER_EVENTS,
    ROUTING_NETWORK,
    ROUTING_PLANS,
)

# Kafka's wire codes (org.apache.kafka.common.resource / acl).


class ResourceType(enum.IntEnum):
    ANY = 1
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5


class PatternType(enum.IntEnum):
    ANY = 1
    MATCH = 2
    LITERAL = 3
    PREFIXED = 4


class Operation(enum.IntEnum):
    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12


class Permission(enum.IntEnum):
    ANY = 1
    DENY = 2
    ALLOW = 3


SCRAM_MECHANISMS = {"SCRAM-SHA-256": (1, "sha256"), "SCRAM-SHA-512": (2, "sha512")}
# Kafka refuses fewer than 4096 iterations; 8192 is what its tools use for new users in examples.
SCRAM_ITERATIONS = 8192
REQUEST_TOPIC_PREFIX = fulfillment_requests("").name.removesuffix(".v1")  # "oms.fulfillment.requests."
CLUSTER = "kafka-cluster"


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW entry: `principal` may do `operation` on the resource (a name, or every name with that prefix)."""

    principal: str  # User:<name>
    resource: ResourceType
    name: str
    operation: Operation
    pattern: PatternType = PatternType.LITERAL
    host: str = "*"

    def describe(self) -> str:
        pattern = "prefix " if self.pattern == PatternType.PREFIXED else ""
        return f"{self.principal:<24} {self.operation.name:<17} {self.resource.name.lower():<7} {pattern}{self.name}"


def user(name: str) -> str:
    return name if name.startswith("User:") else f"User:{name}"


def _allow(principal: str, resource: ResourceType, name: str, *ops: Operation, prefixed: bool = False) -> list[Acl]:
    pattern = PatternType.PREFIXED if prefixed else PatternType.LITERAL
    return [Acl(user(principal), resource, name, op, pattern) for op in ops]


def group_prefix(principal: str) -> str:
    """The consumer groups a source may use: its principal's name and a dot, e.g. `3pl-nl.requests`."""
    return f"{principal.removeprefix('User:')}."


def source_acls(source_code: str, principal: str) -> list[Acl]:
    """A fulfillment source: READ its own request topic (in its own groups), WRITE fulfillment updates. Nothing else:
    not another source's requests, not the order events (customer data), not the channels' orders."""
    return [
        *_allow(
            principal, ResourceType.TOPIC, fulfillment_requests(source_code).name, Operation.READ, Operation.DESCRIBE
        ),
        *_allow(
            principal, ResourceType.GROUP, group_prefix(principal), Operation.READ, Operation.DESCRIBE, prefixed=True
        ),
        *_allow(principal, ResourceType.TOPIC, FULFILLMENT_UPDATES.name, Operation.WRITE, Operation.DESCRIBE),
    ]


@dataclass(frozen=True)
class ServiceAccess:
    """What one OMS service does on Kafka: the topics it consumes (groups `oms-{service}.{topic}`), the topics its
    outbox relay publishes to (the dead letters included), and request topics by prefix."""

    reads: tuple[Topic, ...]
    writes: tuple[Topic, ...]
    writes_request_topics: bool = False  # order: one topic per source
    creates_request_topics: bool = False  # routing: creates a source's topic when the source joins


SERVICES: dict[str, ServiceAccess] = {
    "order": ServiceAccess(
        reads=(CHANNEL_ORDERS, ROUTING_PLANS, INVENTORY_ALLOCATIONS, FULFILLMENT_UPDATES),
        writes=(ORDER_EVENTS, DEAD_LETTERS),
        writes_request_topics=True,
    ),
    "routing": ServiceAccess(
        # Not the fulfillment updates: routing re-plans on the order service's order.replan_requested.
        reads=(ORDER_EVENTS, INVENTORY_ALLOCATIONS, INVENTORY_STOCK),
        writes=(ROUTING_PLANS, ROUTING_NETWORK, DEAD_LETTERS),
        creates_request_topics=True,
    ),
    "inventory": ServiceAccess(
        reads=(ROUTING_NETWORK, INVENTORY_RECEIPTS, ROUTING_PLANS, FULFILLMENT_UPDATES, ORDER_EVENTS),
        writes=(INVENTORY_ALLOCATIONS, INVENTORY_STOCK, DEAD_LETTERS),
    ),
    "notifications": ServiceAccess(
        # The stock topic for the operators' low-stock alerts.
        reads=(ORDER_EVENTS, ROUTING_PLANS, INVENTORY_ALLOCATIONS, INVENTORY_STOCK),
        writes=(NOTIFICATIONS, DEAD_LETTERS),
    ),
}


def service_principal(service: str) -> str:
    return f"oms-{service}"


def service_acls(service: str, principal: str | None = None) -> list[Acl]:
    """What an OMS service's principal needs, and nothing more. No IDEMPOTENT_WRITE on the cluster: since Kafka 3.0
    (KIP-679) an idempotent producer may start with WRITE on any topic."""
    access = SERVICES[service]
    who = principal or service_principal(service)
    acls = _allow(who, ResourceType.GROUP, f"oms-{service}.", Operation.READ, Operation.DESCRIBE, prefixed=True)
    for topic in access.reads:
        acls += _allow(who, ResourceType.TOPIC, topic.name, Operation.READ, Operation.DESCRIBE)
    for topic in access.writes:
        acls += _allow(who, ResourceType.TOPIC, topic.name, Operation.WRITE, Operation.DESCRIBE)
    if access.writes_request_topics:
        acls += _allow(
            who, ResourceType.TOPIC, REQUEST_TOPIC_PREFIX, Operation.WRITE, Operation.DESCRIBE, prefixed=True
        )
    if access.creates_request_topics:
        acls += _allow(
            who, ResourceType.TOPIC, REQUEST_TOPIC_PREFIX, Operation.CREATE, Operation.DESCRIBE, prefixed=True
        )
    return list(dict.fromkeys(acls))


def new_password() -> str:
    """A password to hand over once: 32 random URL-safe characters."""
    return secrets.token_urlsafe(24)


# The requests aiokafka lacks or sends one ACL at a time ------------------------------------------------------------


class _AlterUserScramCredentialsResponse(Response):
    API_KEY = 51
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "results",
            CompactArray(
                ("user", CompactString("utf-8")),
                ("error_code", Int16),
                ("error_message", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _AlterUserScramCredentialsStruct(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 51
    API_VERSION = 0
    RESPONSE_TYPE = _AlterUserScramCredentialsResponse
    SCHEMA = Schema(
        (
            "deletions",
            CompactArray(("name", CompactString("utf-8")), ("mechanism", Int8), ("tags", TaggedFields)),
        ),
        (
            "upsertions",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("mechanism", Int8),
                ("iterations", Int32),
                ("salt", CompactBytes),
                ("salted_password", CompactBytes),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _AlterUserScramCredentials(Request[_AlterUserScramCredentialsStruct]):
    API_KEY = 51

    def __init__(self, upsertions: list[tuple[Any, ...]], deletions: list[tuple[Any, ...]]) -> None:
        self._upsertions = upsertions
        self._deletions = deletions

    def build(self, request_struct_class: type[_AlterUserScramCredentialsStruct]) -> _AlterUserScramCredentialsStruct:
        return request_struct_class(self._deletions, self._upsertions, {})


class _DescribeUserScramCredentialsResponse(Response):
    API_KEY = 50
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("error_message", CompactString("utf-8")),
        (
            "results",
            CompactArray(
                ("user", CompactString("utf-8")),
                ("error_code", Int16),
                ("error_message", CompactString("utf-8")),
                (
                    "credential_infos",
                    CompactArray(("mechanism", Int8), ("iterations", Int32), ("tags", TaggedFields)),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _DescribeUserScramCredentialsStruct(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 50
    API_VERSION = 0
    RESPONSE_TYPE = _DescribeUserScramCredentialsResponse
    SCHEMA = Schema(
        ("users", CompactArray(("name", CompactString("utf-8")), ("tags", TaggedFields))), ("tags", TaggedFields)
    )


class _DescribeUserScramCredentials(Request[_DescribeUserScramCredentialsStruct]):
    API_KEY = 50

    def __init__(self, users: list[str] | None) -> None:
        self._users = users

    def build(
        self, request_struct_class: type[_DescribeUserScramCredentialsStruct]
    ) -> _DescribeUserScramCredentialsStruct:
        users = None if self._users is None else [(name, {}) for name in self._users]
        return request_struct_class(users, {})


class _CreateAcls(Request[CreateAclsRequest_v1]):
    """CreateAcls with every entry in one request (aiokafka's CreateAclsRequest carries one)."""

    API_KEY = 30

    def __init__(self, acls: Sequence[Acl]) -> None:
        self._acls = acls

    def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
        return request_struct_class(
            [(a.resource, a.name, a.pattern, a.principal, a.host, a.operation, Permission.ALLOW) for a in self._acls]
        )


def _raise_for(code: int, message: str | None, what: str) -> None:
    if code:
        raise for_code(code)(f"{what}: {message or ''}".rstrip(": "))


def salted_password(password: str, salt: bytes, iterations: int, mechanism: str = "SCRAM-SHA-512") -> bytes:
    """SCRAM's SaltedPassword: Hi(password, salt, i) = PBKDF2 with the mechanism's HMAC (RFC 5802, section 2.2)."""
    _, digest = SCRAM_MECHANISMS[mechanism]
    return hashlib.pbkdf2_hmac(digest, password.encode(), salt, iterations)


async def upsert_scram_user(
    admin: AIOKafkaAdminClient,
    name: str,
    password: str,
    *,
    mechanism: str = "SCRAM-SHA-512",
    iterations: int = SCRAM_ITERATIONS,
) -> None:
    """Create the SCRAM credential of `name`, or replace its password."""
    code, _ = SCRAM_MECHANISMS[mechanism]
    salt = secrets.token_bytes(32)
    upsertion = (name, code, iterations, salt, salted_password(password, salt, iterations, mechanism), {})
    response = await admin._send_request(_AlterUserScramCredentials([upsertion], []))
    for result_user, error_code, error_message, _ in response.results:
        _raise_for(error_code, error_message, f"setting the SCRAM credential of {result_user}")


async def scram_users(admin: AIOKafkaAdminClient) -> dict[str, list[str]]:
    """Every user with a SCRAM credential, and its mechanisms."""
    response = await admin._send_request(_DescribeUserScramCredentials(None))
    _raise_for(response.error_code, response.error_message, "listing SCRAM users")
    names = {code: name for name, (code, _) in SCRAM_MECHANISMS.items()}
    found: dict[str, list[str]] = {}
    for result_user, error_code, error_message, infos, _ in response.results:
        _raise_for(error_code, error_message, f"describing the SCRAM credential of {result_user}")
        found[result_user] = sorted(names.get(mechanism, str(mechanism)) for mechanism, _, _ in infos)
    return dict(sorted(found.items()))


async def create_acls(admin: AIOKafkaAdminClient, acls: Iterable[Acl]) -> None:
    """Add ALLOW entries (an entry that exists already is left as it is)."""
    entries = list(dict.fromkeys(acls))
    if not entries:
        return
    response = await admin._send_request(_CreateAcls(entries))
    for acl, (error_code, error_message) in zip(entries, response.creation_responses, strict=True):
        _raise_for(error_code, error_message, f"creating ACL {acl.describe()}")


async def describe_acls(admin: AIOKafkaAdminClient, principal: str | None = None) -> list[Acl]:
    """Every ALLOW entry on the broker, or those of one principal, sorted by principal."""
    request = DescribeAclsRequest(
        ResourceType.ANY,
        None,
        PatternType.ANY,
        user(principal) if principal else None,
        None,
        Operation.ANY,
        Permission.ANY,
    )
    response = await admin._send_request(request)
    _raise_for(response.error_code, response.error_message, "listing ACLs")
    found = []
    for resource_type, name, pattern, entries in response.resources:
        for who, host, operation, permission in entries:
            if permission == Permission.ALLOW:
                found.append(
                    Acl(who, ResourceType(resource_type), name, Operation(operation), PatternType(pattern), host)
                )
    return sorted(found)
