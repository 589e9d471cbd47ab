"""The inbox on real PostgreSQL: an event is known by its CloudEvent (source, id), rows from before sources were kept
still count for every source, and what is older than the retention is forgotten in bounded chunks."""

from __future__ import annotations

import uuid
from datetime import timedelta

import sqlalchemy as sa

from oms_runtime import metrics
from oms_runtime.consumer import prune_inbox
from oms_runtime.testing import deliver


async def inbox_rows(service) -> list[tuple[str, str, uuid.UUID]]:
    async with service.database.connect() as conn:
        rows = await conn.execute(sa.text("SELECT consumer, source, event_id FROM inbox ORDER BY received_at"))
        return [tuple(row) for row in rows]


async def test_the_same_id_from_two_sources_is_two_events_and_each_is_applied_once(
    make_service, database_url, topic, probe, receipt, applied
):
    """CloudEvents identify an event by source and id together: two channels may well pick the same id."""
    service = make_service(database_url, topic, probe)
    shared = uuid.uuid4()
    from_shop = receipt("from-shop").model_copy(update={"id": shared, "source": "/channels/shop"})
    from_wms = receipt("from-wms").model_copy(update={"id": shared, "source": "/wms/east"})

    assert await deliver(service, topic, from_shop, from_wms) == []
    assert await deliver(service, topic, from_wms, from_shop) == []

    assert await applied(service) == ["from-shop", "from-wms"]
    assert sorted((source, event_id) for _, source, event_id in await inbox_rows(service)) == [
        ("/channels/shop", shared),
        ("/wms/east", shared),
    ]


async def test_a_redelivered_event_its_handler_refuses_is_skipped_not_dead_lettered(
    make_service, database_url, topic, probe, receipt, applied
):
    """A batch is applied first as if nothing in it had been seen, and recorded in the inbox at the end: a
    redelivered event then meets a handler that has moved on (a state machine refuses a transition it made). That
    ends with the event skipped as a duplicate and the rest applied, never in a dead letter."""
    service = make_service(database_url, topic, probe)
    first, second = receipt("first"), receipt("second")
    assert await deliver(service, topic, first) == []
    probe.refuse_seen = True

    assert await deliver(service, topic, first, second) == []
    assert await deliver(service, topic, second, second) == []

    assert await applied(service) == ["first", "second"]


async def test_a_batch_of_unseen_events_is_recorded_in_the_inbox_by_the_statement_that_writes_its_outbox_rows(
    make_service, database_url, topic, probe, receipt, applied, monkeypatch
):
    service = make_service(database_url, topic, probe)
    sent: list[str] = []
    monkeypatch.setattr(metrics, "statement_done", lambda query, *_: sent.append(" ".join(query.split())))

    assert await deliver(service, topic, receipt("a"), receipt("b"), b"not json") != []  # the dead letter

    batch = sent[: sent.index("COMMIT;") + 1]  # then the test's own reading of the outbox
    assert [q.split()[0] for q in batch] == ["BEGIN;", "INSERT", "WITH", "COMMIT;"]  # the handler's insert, the claim
    assert batch[2].startswith("WITH w0 AS ( INSERT INTO inbox") and "INSERT INTO outbox" in batch[2]
    assert await applied(service) == ["a", "b"]


async def test_an_event_applied_before_the_inbox_kept_sources_is_not_applied_again(
    make_service, database_url, topic, probe, receipt, applied
):
    """Rows written before the upgrade (or by an instance not upgraded yet) have source '': they count for any
    source, so an event redelivered across the upgrade is still skipped."""
    service = make_service(database_url, topic, probe)
    before = receipt("applied-before-the-upgrade")
    consumer = service.consumers[0].name
    async with service.database.transaction() as pg:
        await pg.execute("INSERT INTO inbox (consumer, event_id) VALUES ($1, $2)", consumer, before.id)

    assert await deliver(service, topic, before, receipt("new")) == []

    assert await applied(service) == ["new"]


async def test_inbox_rows_older_than_the_retention_are_pruned_in_chunks_and_newer_ones_kept(make_service, database_url):
    service = make_service(database_url)
    async with service.database.transaction() as pg:
        await pg.execute(
            "INSERT INTO inbox (consumer, source, event_id, received_at) "
            "SELECT 'c', '/s', gen_random_uuid(), now() - make_interval(days => d) "
            "FROM generate_series(1, 25) AS n, LATERAL (SELECT CASE WHEN n <= 23 THEN 8 ELSE 6 END AS d) AS x"
        )

    assert await prune_inbox(service.database, timedelta(days=7), chunk=5) == 23
    assert len(await inbox_rows(service)) == 2
    assert await prune_inbox(service.database, timedelta(days=7), chunk=5) == 0


async def test_a_running_service_prunes_its_inbox(make_service, database_url, wait_until):
    service = make_service(database_url, inbox_retention=timedelta(hours=1), inbox_prune_interval_s=0.2)
    async with service.database.transaction() as pg:
        await pg.execute(
            "INSERT INTO inbox (consumer, source, event_id, received_at) VALUES "
            "('c', '/s', gen_random_uuid(), now() - interval '2 hours'), ('c', '/s', gen_random_uuid(), now())"
        )

    async with service.lifespan(service.http):

        async def pruned() -> bool:
            return len(await inbox_rows(service)) == 1

        await wait_until(pruned, "the inbox pruned by the service's own worker")
        # Rows that age past the retention later go at the next pass.
        async with service.database.transaction() as pg:
            await pg.execute("UPDATE inbox SET received_at = now() - interval '3 hours'")
        await wait_until(lambda: _empty(service), "pruned again at the next interval")


async def _empty(service) -> bool:
    return await inbox_rows(service) == []
