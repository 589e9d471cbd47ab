"""A service through outages of its database and its broker, on the real ones: each reached through a TCP proxy the
test opens and closes (a proxy closed refuses connections and cuts the open ones)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator

import asyncpg
import httpx
import uvicorn

from oms_contracts import DEAD_LETTERS
from oms_runtime.testing import record


async def publish(producer, topic, events):
    for event in events:
        await producer.send_and_wait(topic.name, event.to_bytes(), key=event.key().encode())


def through(proxy, database_url: str) -> str:
    """The same database, reached through the proxy."""
    scheme, _, rest = database_url.partition("://")
    credentials, _, location = rest.partition("@")
    _, _, database = location.partition("/")
    return f"{scheme}://{credentials}@{proxy.address}/{database}"


@contextlib.asynccontextmanager
async def serving(service) -> AsyncIterator[httpx.AsyncClient]:
    """The service's HTTP app under a real uvicorn server, as `Service.run` serves it; a client of it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(service.http, host="127.0.0.1", port=port, log_config=None))
    running = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            yield http
    finally:
        server.should_exit = True
        await running


async def answers(http: httpx.AsyncClient, path: str) -> httpx.Response | None:
    try:
        return await http.get(path)
    except httpx.TransportError:
        return None


async def test_a_service_started_while_kafka_and_the_database_are_down_serves_health_and_becomes_ready_when_they_return(
    make_service, database_url, oms_topics, kafka_topic, probe, receipt, applied, producer, tcp_proxy, wait_until
):
    topic = await kafka_topic()
    postgres, kafka = tcp_proxy(database_url.rpartition("@")[2].partition("/")[0]), tcp_proxy(oms_topics)
    service = make_service(through(postgres, database_url), topic, probe, bootstrap=kafka.address)
    seen: list[httpx.Response] = []

    async def readyz_says(problems: dict[str, str] | None) -> bool:
        response = await answers(http, "/readyz")
        seen.append(response)
        if problems is None:
            return response is not None and response.status_code == 200
        return (
            response is not None
            and response.status_code == 503
            and response.json() == {"status": "unavailable", "problems": problems}
        )

    async with serving(service) as http:

        async def healthy() -> bool:
            response = await answers(http, "/healthz")
            return response is not None and response.status_code == 200

        await wait_until(healthy, "/healthz answering while Kafka and PostgreSQL are down")
        everything = {
            "database": "database unreachable",
            "kafka": "kafka unreachable",
            "consumers": "consumers not started yet",
        }
        await wait_until(lambda: readyz_says(everything), "/readyz naming all three")

        await postgres.open()
        await wait_until(
            lambda: readyz_says({k: v for k, v in everything.items() if k != "database"}),
            "/readyz no longer naming the database once it is back",
        )

        await kafka.open()
        await wait_until(lambda: readyz_says(None), "/readyz answering 200 once Kafka is back too", within=60)

        await publish(producer, topic, [receipt("after-the-outage")])

        async def processed() -> bool:
            return await applied(service) == ["after-the-outage"]

        await wait_until(processed, "a record consumed and applied after both came back")

    assert all(r is None or "127.0.0.1" not in r.text for r in seen), "no address in any answer"


async def test_no_valid_message_is_dead_lettered_while_the_database_is_down_and_all_are_applied_after(
    make_service,
    database_url,
    postgres_url,
    oms_topics,
    kafka_topic,
    probe,
    receipt,
    applied,
    producer,
    tcp_proxy,
    topic_reader,
    wait_until,
    caplog,
):
    topic = await kafka_topic(partitions=3)
    postgres = tcp_proxy(database_url.rpartition("@")[2].partition("/")[0])
    await postgres.open()
    service = make_service(through(postgres, database_url), topic, probe, bootstrap=oms_topics)
    database_name = database_url.rpartition("/")[2]
    references = [f"r{i}" for i in range(45)]
    events = [receipt(reference, sku=f"SKU-{i % 7}") for i, reference in enumerate(references)]

    async def applied_count(count: int):
        async def check() -> bool:
            return len(await applied(service)) >= count

        await wait_until(check, f"{count} records applied", within=60)

    async with topic_reader(DEAD_LETTERS.name, from_end=True) as dead_letters:
        dead_before = await dead_letters.total()
        with caplog.at_level(logging.WARNING, logger="oms_runtime.consumer"):
            async with service.lifespan(service.http):
                await publish(producer, topic, events[:15])
                await applied_count(15)

                # A batch holds its transaction open when the database goes away under it.
                probe.gate, probe.entered = asyncio.Event(), asyncio.Event()
                await publish(producer, topic, events[15:30])
                await asyncio.wait_for(probe.entered.wait(), 30)
                # The server ends every session of the service's database (as a restart does), then no connection
                # gets through until the test says so.
                admin = await asyncpg.connect(postgres_url)
                try:
                    await admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = $1 AND pid <> pg_backend_pid()",
                        database_name,
                    )

                    async def sessions_gone() -> bool:
                        left = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"
                        return await admin.fetchval(left, database_name) == 0

                    await wait_until(sessions_gone, "the service's sessions terminated")
                finally:
                    await admin.close()
                await postgres.close()
                probe.gate.set()
                await publish(producer, topic, events[30:])

                async def retried() -> bool:
                    return sum("transient failure" in r.getMessage() for r in caplog.records) >= 3

                await wait_until(retried, "the consumers retrying while the database is down", within=60)
                assert len(await _applied_directly(database_url)) < len(events)

                await postgres.open()
                await applied_count(len(events))

                async def outbox_empty() -> bool:
                    return await _outbox_size(database_url) == 0

                await wait_until(outbox_empty, "the relay caught up")
            assert await dead_letters.total() == dead_before, "nothing was dead-lettered"

    assert sorted(await _applied_directly(database_url)) == sorted(references), "each applied once"


async def test_an_unexpected_error_of_a_handler_cut_off_from_its_database_is_retried_not_dead_lettered(
    make_service, database_url, topic, probe, receipt, consume, applied, tcp_proxy, wait_until, caplog
):
    """A handler cut off mid-transaction may fail with anything; the rollback that follows fails on the lost
    connection, and that is what the consumer classifies: the message is tried again, never dead-lettered."""
    postgres = tcp_proxy(database_url.rpartition("@")[2].partition("/")[0])
    await postgres.open()
    service = make_service(through(postgres, database_url), topic, probe)
    probe.gate, probe.odd_failures = asyncio.Event(), 1

    with caplog.at_level(logging.WARNING, logger="oms_runtime.consumer"):
        consuming = asyncio.create_task(consume(service, topic, [record(topic.name, receipt("r1").to_bytes())]))
        await asyncio.wait_for(probe.entered.wait(), 30)
        await postgres.close()
        probe.gate.set()

        async def tried_again() -> bool:
            return sum("transient failure" in r.getMessage() for r in caplog.records) >= 2

        await wait_until(tried_again, "the message held back while the database is down")
        await postgres.open()
        emitted = await asyncio.wait_for(consuming, 60)

    assert emitted == [], "no dead letter"
    assert await applied(service) == ["r1"]


async def _applied_directly(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return [row["reference"] for row in await conn.fetch("SELECT reference FROM applied")]
    finally:
        await conn.close()


async def _outbox_size(database_url: str) -> int:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return await conn.fetchval("SELECT count(*) FROM outbox")
    finally:
        await conn.close()
