"""The batch consumer's guarantees, on a real PostgreSQL without a broker: every event applied once (inbox), every
record that can never be applied dead-lettered with its error while the rest of its batch goes through, and
transient failures retried rather than dropped."""

import json
import uuid

import pytest

from oms_contracts import DEAD_LETTERS, Topic
from oms_contracts.inventory import StockCounted, StockReceived
from oms_runtime import Only, metrics
from oms_runtime.testing import deliver, record

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def service(make_service, database_url, topic, probe):
    return make_service(database_url, topic, probe)


def dead_letters(emitted):
    return [e for e in emitted if e.topic == DEAD_LETTERS.name]


async def test_a_redelivered_event_id_is_skipped(service, topic, probe, receipt, applied):
    event = receipt("r1")
    assert await deliver(service, topic, event) == []
    assert await deliver(service, topic, event) == []
    assert await applied(service) == ["r1"]
    # Run again as unseen (the usual case costs a round trip less so), rolled back when the inbox had it; then skipped.
    assert probe.batches == [["r1"], ["r1"]]


async def test_the_same_event_twice_in_one_batch_is_applied_once(service, topic, probe, receipt, applied):
    first, second = receipt("r1"), receipt("r2")
    assert await deliver(service, topic, first, second, first) == []
    assert await applied(service) == ["r1", "r2"]
    assert probe.batches == [["r1", "r2", "r1"], ["r1", "r2"]]  # rolled back once the inbox saw r1 twice


async def test_a_handlers_last_write_goes_with_the_batchs_inbox_record_and_outbox_rows_in_one_statement(
    service, topic, probe, receipt, applied, monkeypatch
):
    sent: list[str] = []
    done = metrics.statement_done
    monkeypatch.setattr(metrics, "statement_done", lambda query, *a: (sent.append(query), done(query, *a)))
    probe.write_last = True
    r1, r3 = receipt("r1"), receipt("r3")
    assert await deliver(service, topic, r1, receipt("r2")) == []
    assert await applied(service) == ["r1", "r2"]
    [last] = [q for q in sent if "INSERT INTO applied" in q]
    assert "INSERT INTO inbox" in last and "INSERT INTO outbox" in last
    assert sent[sent.index(last) + 1] == "COMMIT;"

    # Redelivered, and twice in one batch: the write is rolled back with the batch, and made once in the batch that
    # claims its events first.
    sent.clear()
    assert await deliver(service, topic, r1, r3, r3) == []
    assert await applied(service) == ["r1", "r2", "r3"]
    assert probe.batches[-1] == ["r3"]
    assert sum("INSERT INTO applied" in q for q in sent) == 2


async def test_an_invalid_record_is_dead_lettered_with_its_error_and_the_rest_of_its_batch_is_applied(
    service, topic, probe, receipt, applied, consume
):
    undecodable = b'{"specversion": "1.0", "type": "oms.inventory.stock_received.v1", "data": {'
    zero = json.loads(receipt("zero").to_bytes())
    zero["data"]["quantity"] = 0
    schema_invalid = json.dumps(zero).encode()
    records = [
        record(topic.name, receipt("r1").to_bytes(), "SKU-1"),
        record(topic.name, undecodable, "SKU-9", headers=[("traceparent", TRACEPARENT.encode())]),
        record(topic.name, schema_invalid, "SKU-1"),
        record(topic.name, receipt("r2").to_bytes(), "SKU-1"),
    ]

    emitted = await consume(service, topic, records)

    assert await applied(service) == ["r1", "r2"]
    assert probe.batches == [["r1", "r2"]], "valid records of the batch are applied together"
    assert [e.topic for e in emitted] == [DEAD_LETTERS.name, DEAD_LETTERS.name]
    garbage, invalid = emitted
    assert garbage.payload == undecodable and garbage.key == "SKU-9"
    assert invalid.payload == schema_invalid and invalid.key == "SKU-1"
    for letter, original in ((garbage, records[1]), (invalid, records[2])):
        assert letter.headers["oms-original-topic"] == topic.name
        assert letter.headers["oms-original-partition"] == str(original.partition)
        assert letter.headers["oms-original-offset"] == str(original.offset)
        assert letter.headers["oms-error-class"] == "ValidationError"
        assert letter.headers["oms-service"] == "probe"
    assert "Invalid JSON" in garbage.headers["oms-error-message"]
    assert "data.quantity: Input should be greater than 0" in invalid.headers["oms-error-message"]
    assert garbage.headers["traceparent"] == TRACEPARENT, "the dead letter stays in the trace of the original"


async def test_an_unexpected_error_for_one_message_of_a_batch_dead_letters_only_that_message(
    service, topic, probe, receipt, applied
):
    events = [receipt("r1"), receipt("r2"), receipt("boom"), receipt("r4"), receipt("r5")]

    emitted = await deliver(service, topic, *events)

    assert await applied(service) == ["r1", "r2", "r4", "r5"]
    # The batch failed as a whole, rolled back, and was replayed one message at a time.
    assert probe.batches == [["r1", "r2", "boom", "r4", "r5"], ["r1"], ["r2"], ["boom"], ["r4"], ["r5"]]
    [letter] = emitted
    assert letter.topic == DEAD_LETTERS.name
    assert letter.payload == events[2].to_bytes() and letter.key == events[2].key()
    assert letter.headers["oms-error-class"] == "RuntimeError"
    assert letter.headers["oms-error-message"] == "cannot apply boom"


async def test_a_refused_message_is_dead_lettered_alone(service, topic, receipt, applied):
    events = [receipt("r1"), receipt("refuse-1"), receipt("r3")]

    emitted = await deliver(service, topic, *events)

    assert await applied(service) == ["r1", "r3"]
    [letter] = emitted
    assert letter.payload == events[1].to_bytes()
    assert letter.headers["oms-error-class"] == "Refused"
    assert letter.headers["oms-error-message"] == "source WH-1 does not take refuse-1"


async def test_a_transient_failure_is_retried_and_then_applied_exactly_once(service, topic, probe, receipt, applied):
    probe.transient_failures = 2

    emitted = await deliver(service, topic, receipt("r1"), receipt("r2"))

    assert emitted == [], "nothing is dead-lettered for a failure that a retry cures"
    assert await applied(service) == ["r1", "r2"]
    assert probe.batches == [["r1", "r2"]] * 3


async def test_a_redelivered_dead_letter_is_not_dead_lettered_twice(service, topic, receipt, consume):
    garbage = record(topic.name, b"not json at all", "SKU-1")
    refused = record(topic.name, receipt("refuse-1").to_bytes(), "SKU-1")

    assert len(await consume(service, topic, [garbage, refused])) == 2
    assert await consume(service, topic, [garbage, refused]) == []
    assert await consume(service, topic, [refused]) == []
    assert await consume(service, topic, [garbage]) == []


async def test_a_transient_failure_while_stopping_leaves_the_message_for_redelivery(
    service, topic, probe, receipt, applied
):
    """A shutdown stops the retries; the message must then be left for the next consumer, not dead-lettered."""
    consumer = service.consumers[0]
    event = receipt("r1")
    consumer.stopping = True
    probe.transient_failures = 1

    assert await deliver(service, topic, event) == []
    assert await applied(service) == []

    consumer.stopping = False
    assert await deliver(service, topic, event) == []
    assert await applied(service) == ["r1"], "not claimed by the inbox, so the redelivery is applied"


async def test_a_record_whose_key_cannot_be_stored_as_text_is_still_dead_lettered(
    service, topic, receipt, applied, consume
):
    # PostgreSQL text and jsonb cannot hold NUL: were the dead letter not writable, the batch would be redelivered
    # forever and the partition would never move on.
    garbage = record(topic.name, b"\x00\x01", "WH-1\x00SKU-1", headers=[("traceparent", b"\x00bad")])
    [letter] = await consume(service, topic, [garbage, record(topic.name, receipt("r1").to_bytes(), "SKU-1")])
    assert letter.topic == DEAD_LETTERS.name
    assert letter.payload == b"\x00\x01"
    assert letter.key == "WH-1\ufffdSKU-1"
    assert await applied(service) == ["r1"]


async def test_a_record_with_null_or_binary_headers_is_applied_or_dead_lettered_with_only_readable_trace_headers(
    service, topic, receipt, applied, consume
):
    odd = [("x", b"\xff\xfe"), ("y", None)]
    records = [
        record(topic.name, receipt("r1").to_bytes(), "SKU-1", headers=[*odd, ("traceparent", None)]),
        record(topic.name, b"{}", "SKU-1", headers=[*odd, ("traceparent", None), ("tracestate", b"\xff")]),
        record(topic.name, b"[]", "SKU-1", headers=[*odd, ("traceparent", b"\xff\xfe")]),
        record(topic.name, b"null", "SKU-1", headers=[*odd, ("traceparent", TRACEPARENT.encode())]),
    ]

    null_trace, binary_trace, readable_trace = await consume(service, topic, records)

    assert await applied(service) == ["r1"]
    assert [letter.payload for letter in (null_trace, binary_trace, readable_trace)] == [b"{}", b"[]", b"null"]
    assert "traceparent" not in null_trace.headers and "tracestate" not in null_trace.headers
    assert "traceparent" not in binary_trace.headers
    assert readable_trace.headers["traceparent"] == TRACEPARENT, "other odd headers do not cost the trace"


async def test_an_invalid_record_the_service_handles_itself_is_not_dead_lettered(
    make_service, database_url, topic, probe, receipt, applied, consume
):
    handled = []

    async def reject(tx, invalid):
        handled.append(invalid.record.offset)
        return invalid.record.key == b"handled"

    service = make_service(database_url, topic, probe, on_invalid=reject)
    valid = receipt("r1")
    records = [
        record(topic.name, b"{}", "handled"),
        record(topic.name, b"{}", "other"),
        record(topic.name, valid.to_bytes(), valid.key()),
    ]

    emitted = await consume(service, topic, records)

    assert handled == [records[0].offset, records[1].offset]
    assert [e.key for e in dead_letters(emitted)] == ["other"]
    assert await applied(service) == ["r1"]


async def test_a_dead_letter_keeps_at_most_the_configured_bytes_of_the_original_and_says_so(
    make_service, database_url, topic, probe, consume
):
    """Whole, a record near the broker's limit plus its error headers would be more than the broker takes, and the
    dead letter would be parked instead of read."""
    service = make_service(database_url, topic, probe, dead_letter_max_bytes=1000)
    big, small = b"{" + b"x" * 5000, b"{" + b"y" * 999

    letters = await consume(service, topic, [record(topic.name, big, "SKU-1"), record(topic.name, small, "SKU-1")])

    cut, whole = letters
    assert cut.payload == big[:1000]
    assert (cut.headers["oms-truncated"], cut.headers["oms-original-size"]) == ("true", "5001")
    assert whole.payload == small and "oms-truncated" not in whole.headers and "oms-original-size" not in whole.headers


def test_the_default_dead_letter_limit_leaves_room_below_the_brokers_default_message_size():
    from oms_runtime import ServiceSettings
    from oms_runtime.consumer import DEAD_LETTER_MAX_BYTES

    assert ServiceSettings.model_fields["dead_letter_max_bytes"].default == DEAD_LETTER_MAX_BYTES == 900_000
    assert DEAD_LETTER_MAX_BYTES + 4000 * 4 + 64 * 1024 < 1_048_588, "value, error message, headers, key"


async def test_a_dead_letter_replayed_after_a_fix_is_applied_and_the_original_record_is_never_applied_twice(
    service, topic, probe, receipt, applied, consume
):
    """A dead letter is recorded in the inbox by the record's position: its replay (`oms dlq replay`), a new record
    of the same event, is applied once the cause is fixed; the original record redelivered is neither dead-lettered
    again nor applied."""
    event = receipt("refuse-until-fixed")
    original = record(topic.name, event.to_bytes(), event.key(), headers=[("x-channel", b"web-eu")])
    [letter] = await consume(service, topic, [original])
    assert letter.headers["oms-error-class"] == "Refused"
    assert letter.headers["x-channel"] == "web-eu", "the original's text headers travel with it, for a replay"

    probe.fixed.add("refuse-until-fixed")
    replayed = record(topic.name, letter.payload, letter.key, headers=[("oms-replayed-from", b"oms.dlq.v1[0]@7")])
    assert await consume(service, topic, [replayed]) == []
    assert await applied(service) == ["refuse-until-fixed"]

    assert await consume(service, topic, [original]) == [], "the original redelivered: not dead-lettered again"
    assert await consume(service, topic, [replayed]) == [], "the replay redelivered"
    assert await applied(service) == ["refuse-until-fixed"], "applied once"


async def test_a_record_without_an_event_id_is_dead_lettered_each_time_it_is_sent_never_applied(
    service, topic, receipt, applied, consume
):
    # A producer that leaves out the id and sends the same bytes twice (a retry, a replay): were the id made up at
    # each read, each copy would be a new event to the inbox, and applied.
    document = json.loads(receipt("no-id").to_bytes())
    del document["id"]
    value = json.dumps(document).encode()

    emitted = await consume(service, topic, [record(topic.name, value, "SKU-1")])
    emitted += await consume(service, topic, [record(topic.name, value, "SKU-1")])

    assert await applied(service) == []
    assert [dict(e.headers)["oms-error-message"] for e in dead_letters(emitted)] == [
        "1 validation error(s): id: Field required"
    ] * 2


async def test_records_of_types_the_consumer_does_not_handle_are_skipped_unread_by_their_type_header(
    make_service, database_url, probe, receipt, applied, consume
):
    topic = Topic(
        f"oms.test.probe.{uuid.uuid4().hex[:10]}.v1",
        (StockReceived, StockCounted),
        key="sku",
        description="Receipts and counts, of which the probe handles receipts",
    )
    service = make_service(database_url)

    @service.consumer(topic, handles=(StockReceived,))
    async def apply_stock_receipts(tx, events):
        await probe(tx, events)

    received, counted = StockReceived.TYPE.encode(), StockCounted.TYPE.encode()
    records = [
        record(topic.name, receipt("r1").to_bytes(), "SKU-1", headers=[("ce-type", received)]),
        # Named as a count: not even read, so neither applied nor dead-lettered.
        record(topic.name, b"not json at all", "SKU-1", headers=[("ce-type", counted)]),
        record(topic.name, b"{}", "SKU-1", headers=[("ce_type", counted)]),
        # A type the topic does not know, or no type header: read, as every record used to be.
        record(topic.name, receipt("r2").to_bytes(), "SKU-1", headers=[("ce-type", b"oms.somewhere.else.v1")]),
        record(topic.name, receipt("r3").to_bytes(), "SKU-1"),
    ]

    assert await consume(service, topic, records) == []
    assert await applied(service) == ["r1", "r2", "r3"]
    assert await consume(service, topic, [records[1]]) == []
    assert probe.batches == [["r1", "r2", "r3"]], "a batch of skipped records alone opens no transaction"
    group = {
        "messaging_system": "kafka",
        "messaging_destination_name": topic.name,
        "messaging_consumer_group_name": f"oms-probe.{topic.name}",
    }
    assert metrics.sample("oms_consumer_messages_total", {**group, "oms_outcome": "skipped"}) == 3
    assert metrics.sample("oms_consumer_messages_total", {**group, "oms_outcome": "applied"}) == 3


async def test_a_consumer_that_handles_a_type_only_for_some_values_of_a_header_skips_the_rest_unread(
    make_service, database_url, probe, receipt, applied, consume
):
    service = make_service(database_url)
    topic = Topic(
        f"oms.test.probe.{uuid.uuid4().hex[:10]}.v1",
        (StockReceived,),
        key="sku",
        description="Receipts, of which the probe handles those at two sources",
    )

    @service.consumer(topic, only=(Only(StockReceived, "x-source", frozenset({"WH-1", "WH-2"})),))
    async def apply_stock_receipts(tx, events):
        await probe(tx, events)

    received = StockReceived.TYPE.encode()
    records = [
        record(topic.name, receipt("r1").to_bytes(), "SKU-1", headers=[("ce-type", received), ("x-source", b"WH-1")]),
        # Another value: not even read.
        record(topic.name, b"not json", "SKU-1", headers=[("ce-type", received), ("x-source", b"WH-9")]),
        record(topic.name, receipt("r2").to_bytes(), "SKU-1", headers=[("x-source", b"WH-2"), ("ce_type", received)]),
        # Without the header (or without a type), read as always.
        record(topic.name, receipt("r3").to_bytes(), "SKU-1", headers=[("ce-type", received)]),
        record(topic.name, receipt("r4").to_bytes(), "SKU-1", headers=[("x-source", b"WH-9")]),
    ]

    assert await consume(service, topic, records) == []
    assert await applied(service) == ["r1", "r2", "r3", "r4"]


async def test_only_a_batch_that_wrote_to_the_outbox_wakes_the_relay(service, topic, receipt, consume, monkeypatch):
    """A relay pass that finds nothing still costs a transaction (three round trips): batches that publish nothing,
    most stock levels in routing and most plans in notifications, do not ask for one."""
    woken: list[bool] = []
    monkeypatch.setattr(service.relay, "wake", lambda: woken.append(True))

    assert await deliver(service, topic, receipt("r1")) == []
    assert woken == []

    emitted = await consume(service, topic, [record(topic.name, b'{"specversion": "1.0", "data": {', "SKU-9")])
    assert len(dead_letters(emitted)) == 1
    assert woken == [True]
