"""What `oms acl` grants is exactly what the code does: each service's ACLs match the topics its FastStream app
consumes and publishes, and a source's ACLs name only its own request topic, its groups and the updates topic."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import unquote

import pytest

from oms_contracts import DEAD_LETTERS, fulfillment_requests
from oms_contracts.topics import FULFILLMENT_UPDATES
from oms_tools import acl, asyncapi
from oms_tools.acl import Operation, PatternType, ResourceType
from oms_tools.cli import app


def _documented() -> dict[str, tuple[set[str], set[str]]]:
    """Per service, the addresses its AsyncAPI document receives from and sends to (generated from its app)."""
    found = {}
    for service, document in asyncapi.documents().items():
        received, sent = set(), set()
        for operation in document["operations"].values():
            channel = document["channels"][unquote(operation["channel"]["$ref"].removeprefix("#/channels/"))]
            (received if operation["action"] == "receive" else sent).add(channel["address"])
        found[service] = (received, sent)
    return found


def _granted(acls: list[acl.Acl], *operations: Operation) -> set[str]:
    return {
        a.name + ("*" if a.pattern == PatternType.PREFIXED else "")
        for a in acls
        if a.resource == ResourceType.TOPIC and a.operation in operations
    }


def test_every_service_may_read_and_write_exactly_the_topics_its_app_consumes_and_publishes():
    documented = _documented()
    assert set(documented) == set(acl.SERVICES)
    for service, (received, sent) in documented.items():
        acls = acl.service_acls(service)
        assert _granted(acls, Operation.READ) == received, service
        # The dead letters are written by every service's runtime, and are not part of its AsyncAPI document; the
        # order service's per-source topics are documented under their pattern.
        expected_writes = {
            address.replace(fulfillment_requests("{source_code}").name, f"{acl.REQUEST_TOPIC_PREFIX}*")
            for address in sent
        } | {DEAD_LETTERS.name}
        assert _granted(acls, Operation.WRITE) == expected_writes, service


def test_every_service_reads_only_in_its_own_consumer_groups_and_only_routing_creates_topics():
    for service in acl.SERVICES:
        acls = acl.service_acls(service)
        groups = {(a.name, a.pattern) for a in acls if a.resource == ResourceType.GROUP}
        assert groups == {(f"oms-{service}.", PatternType.PREFIXED)}
        assert not [a for a in acls if a.resource == ResourceType.CLUSTER], "no cluster-wide rights"
        creates = _granted(acls, Operation.CREATE)
        assert creates == ({f"{acl.REQUEST_TOPIC_PREFIX}*"} if service == "routing" else set()), service


def test_a_source_gets_its_own_request_topic_its_groups_and_the_updates_topic_and_nothing_else():
    acls = acl.source_acls("3PL-NL", "3pl-nl")
    assert {(a.principal, a.resource, a.name, a.pattern, a.operation) for a in acls} == {
        ("User:3pl-nl", ResourceType.TOPIC, fulfillment_requests("3PL-NL").name, PatternType.LITERAL, Operation.READ),
        (
            "User:3pl-nl",
            ResourceType.TOPIC,
            fulfillment_requests("3PL-NL").name,
            PatternType.LITERAL,
            Operation.DESCRIBE,
        ),
        ("User:3pl-nl", ResourceType.GROUP, "3pl-nl.", PatternType.PREFIXED, Operation.READ),
        ("User:3pl-nl", ResourceType.GROUP, "3pl-nl.", PatternType.PREFIXED, Operation.DESCRIBE),
        ("User:3pl-nl", ResourceType.TOPIC, FULFILLMENT_UPDATES.name, PatternType.LITERAL, Operation.WRITE),
        ("User:3pl-nl", ResourceType.TOPIC, FULFILLMENT_UPDATES.name, PatternType.LITERAL, Operation.DESCRIBE),
    }


def test_the_salted_password_is_the_one_scram_logs_in_with():
    # RFC 7677's SCRAM-SHA-256 exchange (user "user", password "pencil"): the client proof derived from our salted
    # password is the one in the RFC, so the broker checks logins against what we store.
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    salted = acl.salted_password("pencil", salt, 4096, "SCRAM-SHA-256")
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth_message = f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r={nonce}"
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message.encode(), "sha256").digest()
    proof = bytes(k ^ s for k, s in zip(client_key, signature, strict=True))
    assert base64.b64encode(proof).decode() == "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    assert len(acl.salted_password("pencil", salt, 4096, "SCRAM-SHA-512")) == 64


@pytest.mark.parametrize(
    ("args", "stdin", "says"),
    [
        (["acl", "grant-source", "3PL-NL", "--password-stdin"], "short\n", "at least 12 characters"),
        (["acl", "grant-source", "3PL NL"], "", "is not a source code"),
        (["acl", "grant-source", "3PL-NL", "--principal", "3pl nl"], "", "a principal is 1 to 100"),
        (["acl", "grant-service", "billing"], "", "'billing' is not one of"),
        (["acl", "grant-service", "order", "--keep-password", "--password-stdin"], "", "either --keep-password"),
    ],
)
def test_invalid_input_is_refused_before_anything_reaches_the_broker(oms, args, stdin, says):
    result = oms.runner.invoke(app, args, input=stdin, env={"OMS_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert result.exit_code == 2, result.output
    assert says in " ".join(result.output.split())
