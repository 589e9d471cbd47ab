"""A broker of these tests' own that authenticates (SASL/SCRAM-SHA-512) and authorizes (StandardAuthorizer; nothing is
allowed that no ACL allows), started by deploy/kafka/kafka.sh exactly as an operator would start one, once per session,
with a principal per fulfillment source and per OMS service made by the `oms acl` code.

Port: OMS_TEST_SASL_KAFKA_PORT (`make test` sets it to the test broker's port + 300), controller on the next port."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from oms_contracts import FIXED_TOPICS, fulfillment_requests
from oms_runtime.kafka import KafkaSettings, client_options
from oms_runtime.topics import ensure_topics
from oms_tools import acl

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"
SOURCES = {"3PL-A": "3pl-a", "3PL-B": "3pl-b"}


@dataclass
class SecureBroker:
    bootstrap: str
    admin_password: str
    passwords: dict[str, str] = field(default_factory=dict)

    def login(self, principal: str, password: str | None = None) -> KafkaSettings:
        """The connection settings of `principal`, as a service or a 3PL would set them (its own password unless
        another is given)."""
        return KafkaSettings(
            kafka_bootstrap=self.bootstrap,
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="SCRAM-SHA-512",
            kafka_sasl_username=principal,
            kafka_sasl_password=password or self.passwords[principal],
        )

    @property
    def admin(self) -> KafkaSettings:
        return self.login("admin", self.admin_password)


def _port(kafka_bootstrap: str) -> int:
    configured = os.environ.get("OMS_TEST_SASL_KAFKA_PORT")
    return int(configured) if configured else int(kafka_bootstrap.rpartition(":")[2]) + 300


async def _prepare(broker: SecureBroker) -> None:
    """The topics, as `oms topics create` and routing would make them, and every principal with its ACLs."""
    await ensure_topics(broker.admin, [*FIXED_TOPICS, *(fulfillment_requests(code) for code in SOURCES)], partitions=2)
    admin = AIOKafkaAdminClient(**client_options(broker.admin), client_id="oms-test-acl")
    await admin.start()
    try:
        for code, principal in SOURCES.items():
            broker.passwords[principal] = acl.new_password()
            await acl.upsert_scram_user(admin, principal, broker.passwords[principal])
            await acl.create_acls(admin, acl.source_acls(code, principal))
        for service in acl.SERVICES:
            principal = acl.service_principal(service)
            broker.passwords[principal] = acl.new_password()
            await acl.upsert_scram_user(admin, principal, broker.passwords[principal])
            await acl.create_acls(admin, acl.service_acls(service))
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def secure_kafka(kafka_bootstrap: str) -> Iterator[SecureBroker]:
    port = _port(kafka_bootstrap)
    password = secrets.token_urlsafe(18)
    env = {
        **os.environ,
        "OMS_KAFKA_PORT": str(port),
        "OMS_KAFKA_SECURITY": "sasl",
        "OMS_KAFKA_ADMIN_PASSWORD": password,
        "OMS_KAFKA_HEAP": "512m",
    }
    env.pop("OMS_KAFKA_STATE", None)
    env.pop("OMS_KAFKA_CONTROLLER_PORT", None)

    def kafka_sh(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(KAFKA_SH), command], env=env, capture_output=True, text=True, timeout=300)

    # A fresh state every session: the admin's password is new, and a broker an interrupted run left is stopped.
    kafka_sh("reset")
    started = kafka_sh("start")
    if started.returncode != 0:
        kafka_sh("reset")
        pytest.fail(f"the SASL broker on port {port} did not start:\n{started.stderr}", pytrace=False)
    try:
        broker = SecureBroker(f"127.0.0.1:{port}", password)
        # In a thread of its own: the tests' event loop may already run in this one.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _prepare(broker)).result()
        yield broker
    finally:
        kafka_sh("reset")


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 30.0) -> None:
    """Poll until `check` holds; fail saying what did not happen."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f}s: {what}")
        await asyncio.sleep(0.1)
