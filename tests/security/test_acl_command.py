"""`oms acl` onboards a 3PL on the real SASL broker: the principal it creates logs in with the password it was given
and has exactly the access the README promises; only a super user may grant."""

from __future__ import annotations

import asyncio
import concurrent.futures

from aiokafka.admin import AIOKafkaAdminClient
from typer.testing import CliRunner

from oms_contracts.topics import FULFILLMENT_UPDATES
from oms_runtime.kafka import KafkaSettings, client_options
from oms_tools.cli import app

from .conftest import SecureBroker


def oms(broker: SecureBroker, login: KafkaSettings, *args: str, stdin: str = ""):
    """`oms ...` in-process, with the environment an operator logged in as `login` would have."""
    env = {
        "OMS_KAFKA_BOOTSTRAP": broker.bootstrap,
        "OMS_KAFKA_SECURITY_PROTOCOL": login.kafka_security_protocol,
        "OMS_KAFKA_SASL_USERNAME": login.kafka_sasl_username,
        "OMS_KAFKA_SASL_PASSWORD": login.kafka_sasl_password.get_secret_value(),
    }
    return CliRunner().invoke(app, list(args), input=stdin, env=env, catch_exceptions=False)


def topics_seen_by(login: KafkaSettings) -> set[str]:
    async def list_topics() -> set[str]:
        admin = AIOKafkaAdminClient(**client_options(login), client_id="oms-test-acl")
        await admin.start()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # the tests' event loop may run in this thread
        return pool.submit(asyncio.run, list_topics()).result()


def test_grant_source_creates_a_principal_that_logs_in_and_sees_only_its_topics(secure_kafka: SecureBroker):
    password = "a-password-for-3pl-nl"
    granted = oms(
        secure_kafka, secure_kafka.admin, "acl", "grant-source", "3PL-A", "--principal", "3pl-nl", "--password-stdin",
        stdin=f"{password}\n",
    )  # fmt: skip
    assert granted.exit_code == 0, granted.output
    assert "principal  User:3pl-nl (SCRAM-SHA-512)" in granted.output
    assert password not in granted.output
    assert "security.protocol=SASL_PLAINTEXT sasl.mechanism=SCRAM-SHA-512" in granted.output

    assert topics_seen_by(secure_kafka.login("3pl-nl", password)) == {
        "oms.fulfillment.requests.3PL-A.v1",
        FULFILLMENT_UPDATES.name,
    }

    shown = oms(secure_kafka, secure_kafka.admin, "acl", "show", "--principal", "3pl-nl")
    assert shown.exit_code == 0, shown.output
    assert "User:3pl-nl" in shown.output and "SCRAM-SHA-512" in shown.output
    assert "ACLs (6):" in shown.output
    assert "READ              group   prefix 3pl-nl." in shown.output


def test_a_generated_password_is_shown_once_and_works(secure_kafka: SecureBroker):
    granted = oms(secure_kafka, secure_kafka.admin, "acl", "grant-source", "3PL-B", "--principal", "3pl-gen")
    assert granted.exit_code == 0, granted.output
    password = next(line.split()[1] for line in granted.output.splitlines() if line.startswith("password "))
    assert topics_seen_by(secure_kafka.login("3pl-gen", password)) == {
        "oms.fulfillment.requests.3PL-B.v1",
        FULFILLMENT_UPDATES.name,
    }


def test_only_a_super_user_may_grant_and_a_wrong_login_is_named_as_such(secure_kafka: SecureBroker):
    as_3pl = oms(secure_kafka, secure_kafka.login("3pl-a"), "acl", "grant-source", "3PL-B", "--principal", "3pl-a")
    assert as_3pl.exit_code == 1
    assert "refused the operation" in as_3pl.output

    wrong = secure_kafka.login("admin", "not-the-admin-password")
    refused = oms(secure_kafka, wrong, "acl", "show")
    assert refused.exit_code == 1
    assert "refused the login" in refused.output
    assert "not-the-admin-password" not in refused.output
