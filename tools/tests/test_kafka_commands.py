"""The `oms` command against the real test broker (root conftest: `kafka_bootstrap`, `oms_topics`)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from oms_contracts import DEAD_LETTERS, FIXED_TOPICS, fulfillment_requests, order_id_for
from oms_contracts.channel import OrderSubmitted, PaymentCaptured
from oms_contracts.common import Line, Recipient
from oms_contracts.fulfillment import (
    FulfillmentAccepted,
    FulfillmentRequested,
    FulfillmentRequestedData,
    FulfillmentShipped,
)
from oms_contracts.topics import CHANNEL_ORDERS, FULFILLMENT_UPDATES, INVENTORY_RECEIPTS
from oms_runtime.topics import ensure_topics
from oms_tools import cli, samples
from oms_tools.errors import ToolError
from oms_tools.kafka import event_headers, producer
from oms_tools.readiness import wait_until_inventory_knows

from .conftest import end_offsets, read_from

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "demo"


async def _topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def _delete(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


def _lines(output: str) -> dict[str, str]:
    """`created  oms.x` / `exists   oms.y` -> {topic: state}."""
    states = {}
    for line in output.splitlines():
        state, _, name = line.partition(" ")
        if state in ("created", "exists") and name.strip():
            states[name.strip()] = state
    return states


def test_topics_create_makes_new_topics_then_reports_them_existing(oms, kafka_bootstrap, monkeypatch) -> None:
    run = uuid.uuid4().hex[:8]
    # Fresh names, so that the first run really creates them on a broker other tests already set up.
    fresh = tuple(dataclasses.replace(t, name=f"test.cli.{run}.{t.name}") for t in FIXED_TOPICS)
    monkeypatch.setattr(cli, "FIXED_TOPICS", fresh)
    try:
        first = oms("topics", "create", "--bootstrap", kafka_bootstrap, "--partitions", "2")
        assert first.exit_code == 0, first.output
        assert _lines(first.stdout) == {t.name: "created" for t in fresh}
        assert f"{len(fresh)} created, 0 already existed" in first.stdout
        assert {t.name for t in fresh} <= asyncio.run(_topics(kafka_bootstrap))

        second = oms("topics", "create", "--bootstrap", kafka_bootstrap)
        assert second.exit_code == 0, second.output
        assert _lines(second.stdout) == {t.name: "exists" for t in fresh}
        assert f"0 created, {len(fresh)} already existed" in second.stdout
    finally:
        asyncio.run(_delete(kafka_bootstrap, [t.name for t in fresh]))


def test_topics_create_makes_every_fixed_topic(oms, kafka_bootstrap) -> None:
    first = oms("topics", "create", "--bootstrap", kafka_bootstrap, "--partitions", "3")
    assert first.exit_code == 0, first.output
    assert set(_lines(first.stdout)) == {t.name for t in FIXED_TOPICS}
    assert {t.name for t in FIXED_TOPICS} <= asyncio.run(_topics(kafka_bootstrap))
    second = oms("topics", "create", "--bootstrap", kafka_bootstrap)
    assert second.exit_code == 0, second.output
    assert _lines(second.stdout) == {t.name: "exists" for t in FIXED_TOPICS}


def test_topics_create_reports_the_broker_refusal(oms, kafka_bootstrap, monkeypatch) -> None:
    fresh = (dataclasses.replace(FIXED_TOPICS[0], name=f"test.cli.{uuid.uuid4().hex[:8]}.rf"),)
    monkeypatch.setattr(cli, "FIXED_TOPICS", fresh)
    result = oms("topics", "create", "--bootstrap", kafka_bootstrap, "--replication-factor", "3")
    assert result.exit_code == 1, result.output
    assert f"Kafka at {kafka_bootstrap} answered with an error" in result.stderr
    assert "Traceback" not in result.output


def test_demo_order_publishes_a_valid_submission_and_payment(oms, oms_topics) -> None:
    external = f"cli-{uuid.uuid4().hex[:10]}"
    key = f"web-eu:{external}"
    since = end_offsets(oms_topics, CHANNEL_ORDERS.name)
    result = oms(
        "demo", "order", "--external-id", external, "--sku", "TENT-2P:2", "--sku", "KAYAK-2",
        "--country", "AT", "--bootstrap", oms_topics,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    order_id = order_id_for("web-eu", external)
    assert f"order_id     {order_id}" in result.stdout
    assert f"curl -H 'Authorization: Bearer demo-cs-token' http://127.0.0.1:8081/orders/{order_id}" in result.stdout

    records = read_from(oms_topics, since, lambda r: r.key == key.encode(), count=2)
    assert len(records) == 2
    submitted, paid = (CHANNEL_ORDERS.parse(r.value) for r in records)
    assert isinstance(submitted, OrderSubmitted)
    assert isinstance(paid, PaymentCaptured)
    d = submitted.data
    assert d.order_id == order_id
    assert d.shipping_address.country == "AT"
    assert [(line.sku, line.quantity, line.unit_price) for line in d.lines] == [
        ("TENT-2P", 2, Decimal("189.00")),
        ("KAYAK-2", 1, Decimal("499.00")),
    ]
    assert d.grand_total == Decimal("189.00") * 2 + Decimal("499.00") + d.shipping_total
    assert (paid.data.amount, paid.data.currency, paid.data.external_order_id) == (d.grand_total, "EUR", external)
    headers = [dict(r.headers) for r in records]
    assert [h["ce-type"] for h in headers] == [e.TYPE.encode() for e in (OrderSubmitted, PaymentCaptured)]
    assert all(h["content-type"] == b"application/cloudevents+json" for h in headers)
    # One trace: both carry it, each from its own span.
    trace_ids = {h["traceparent"].split(b"-")[1] for h in headers}
    assert len(trace_ids) == 1
    assert trace_ids.pop().decode() in result.stdout


def test_demo_order_without_payment(oms, oms_topics) -> None:
    external = f"cli-{uuid.uuid4().hex[:10]}"
    since = end_offsets(oms_topics, CHANNEL_ORDERS.name)
    result = oms("demo", "order", "--external-id", external, "--no-pay", "--channel", "b2b-eu", "-b", oms_topics)
    assert result.exit_code == 0, result.output
    records = read_from(oms_topics, since, lambda r: r.key == f"b2b-eu:{external}".encode(), count=2, timeout=5)
    assert [CHANNEL_ORDERS.parse(r.value).type for r in records] == [OrderSubmitted.TYPE]


def _stock_files(tmp_path: Path, code: str, skus: list[str]) -> tuple[Path, Path]:
    network = json.loads((DEMO / "network.json").read_text())
    source = {**network["sources"][0], "code": code}
    network_path = tmp_path / "network.json"
    network_path.write_text(json.dumps({"sources": [source]}))
    stock_path = tmp_path / "stock.json"
    lines = [{"sku": sku, "source_code": code, "quantity": i} for i, sku in enumerate(skus, start=1)]
    stock_path.write_text(json.dumps({"stock": lines}))
    return network_path, stock_path


def test_demo_stock_publishes_a_receipt_per_line(oms, oms_topics, tmp_path: Path) -> None:
    # SKUs of this test only: other tests' inventory services read this topic too.
    run = uuid.uuid4().hex[:8]
    skus = [f"T-{run}-{i}" for i in range(3)]
    network_path, stock_path = _stock_files(tmp_path, "WH-EAST", skus)
    since = end_offsets(oms_topics, INVENTORY_RECEIPTS.name)
    result = oms(
        "demo", "stock", "--file", str(stock_path), "--network", str(network_path), "--reference", f"ref-{run}",
        "--no-wait", "--bootstrap", oms_topics,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "published 3 receipt(s) (3 SKU(s))" in result.stdout
    mine = read_from(oms_topics, since, lambda r: r.key.decode().startswith(f"T-{run}-"), count=3)
    receipts = [INVENTORY_RECEIPTS.parse(r.value) for r in mine]
    assert sorted((e.data.sku, e.data.source_code, e.data.quantity, e.data.reference) for e in receipts) == [
        (sku, "WH-EAST", i, f"ref-{run}") for i, sku in enumerate(skus, start=1)
    ]
    assert all(r.key == e.data.sku.encode() for r, e in zip(mine, receipts, strict=True))
    assert all(dict(r.headers)["ce-type"] == b"oms.inventory.stock_received.v1" for r in mine)


def test_demo_stock_waits_for_inventory_and_says_why_it_gave_up(oms, oms_topics, tmp_path: Path) -> None:
    code = f"T-{uuid.uuid4().hex[:8]}"
    network_path, stock_path = _stock_files(tmp_path, code, [f"{code}-SKU"])
    since = end_offsets(oms_topics, INVENTORY_RECEIPTS.name)
    result = oms(
        "demo", "stock", "--file", str(stock_path), "--network", str(network_path), "--wait-timeout", "1",
        "--inventory-url", "http://127.0.0.1:1", "--bootstrap", oms_topics,
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert f"inventory at http://127.0.0.1:1 does not know source(s) {code} after 1s (cannot reach it" in result.stderr
    assert not read_from(oms_topics, since, lambda r: r.key == f"{code}-SKU".encode(), count=1, timeout=2)


class _Inventory(BaseHTTPRequestHandler):
    """A stand-in inventory service whose known sources the test changes."""

    sources: ClassVar[list[dict]] = []

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != "Bearer demo-cs-token":
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps(self.sources).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def test_waiting_until_inventory_knows_the_network() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Inventory)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    lines: list[str] = []

    def wait(codes: list[str], token: str = "demo-cs-token") -> None:
        asyncio.run(
            wait_until_inventory_knows(url, token, codes, seconds=1.0, echo=lambda text, **_: lines.append(text))
        )

    try:
        _Inventory.sources = [{"code": "WH-A", "active": True}, {"code": "WH-B", "active": False}]
        wait(["WH-A"])
        with pytest.raises(ToolError, match=re.escape(f"inventory at {url} does not know source(s) WH-B after 1s")):
            wait(["WH-A", "WH-B"])
        assert lines and "waiting for inventory to know WH-B" in lines[0]
        with pytest.raises(ToolError, match="refused the token"):
            wait(["WH-A"], token="wrong")
    finally:
        server.shutdown()


def _request(source_code: str) -> FulfillmentRequested:
    order_id = uuid.uuid4()
    address = samples.DEMO_ADDRESSES["NL"]
    return FulfillmentRequested(
        source="/oms/order",
        subject=str(order_id),
        data=FulfillmentRequestedData(
            fulfillment_id=uuid.uuid4(),
            order_id=order_id,
            source_code=source_code,
            lines=[Line(line_id="1", sku="STOVE-GAS", quantity=2), Line(line_id="3", sku="BAG-SLEEP", quantity=1)],
            ship_to=address,
            recipient=Recipient(name=address.name, phone=None),
            shipping_method="standard",
            requested_at=datetime.now(UTC),
            ship_by=date.today(),
        ),
    )


async def _publish_requests(bootstrap: str, topic: str, request: FulfillmentRequested, traceparent: str) -> None:
    async with producer(bootstrap, "test-oms-cli") as client:
        # Junk first: the simulator skips what it cannot read and answers the request after it.
        await client.send_and_wait(topic, b"not json", key=request.key().encode())
        headers = [*event_headers(request), ("traceparent", traceparent.encode()), ("tracestate", b"oms=1")]
        await client.send_and_wait(topic, request.to_bytes(), key=request.key().encode(), headers=headers)


def test_demo_ship_once_answers_a_request_with_accepted_and_shipped(oms, oms_topics) -> None:
    code = f"T-{uuid.uuid4().hex[:8]}"
    topic = fulfillment_requests(code).name
    asyncio.run(ensure_topics(oms_topics, [fulfillment_requests(code)], partitions=2))
    request = _request(code)
    traceparent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    since = end_offsets(oms_topics, FULFILLMENT_UPDATES.name)
    asyncio.run(_publish_requests(oms_topics, topic, request, traceparent))
    try:
        result = oms("demo", "ship", "--once", "--source", code, "--timeout", "60", "--bootstrap", oms_topics)
        assert result.exit_code == 0, result.output
        assert "answered 1 fulfillment request(s)" in result.stdout
        assert "skipped" in result.stderr

        key = str(request.data.order_id).encode()
        records = read_from(oms_topics, since, lambda r: r.key == key, count=2)
        assert len(records) == 2
        accepted, shipped = (FULFILLMENT_UPDATES.parse(r.value) for r in records)
        assert isinstance(accepted, FulfillmentAccepted)
        assert isinstance(shipped, FulfillmentShipped)
        for event in (accepted, shipped):
            assert event.data.fulfillment_id == request.data.fulfillment_id
            assert event.data.order_id == request.data.order_id
            assert event.data.source_code == code
        assert [(x.line_id, x.quantity) for x in shipped.data.lines] == [("1", 2), ("3", 1)]
        assert shipped.data.carrier == "PostNL"
        assert shipped.data.tracking_number in str(shipped.data.tracking_url)
        for record in records:
            headers = dict(record.headers)
            assert headers["traceparent"] == traceparent.encode()
            assert headers["tracestate"] == b"oms=1"
            assert headers["ce-type"] == FULFILLMENT_UPDATES.parse(record.value).type.encode()

        # Its offsets are committed: a second run has nothing left to answer.
        again = oms("demo", "ship", "--once", "--source", code, "--timeout", "3", "--bootstrap", oms_topics)
        assert again.exit_code == 1
        assert "no fulfillment request arrived within 3s" in again.stderr
    finally:
        asyncio.run(_delete(oms_topics, [topic]))


def test_demo_ship_needs_the_source_topic(oms, oms_topics) -> None:
    result = oms("demo", "ship", "--once", "--source", f"NOPE-{uuid.uuid4().hex[:6]}", "--bootstrap", oms_topics)
    assert result.exit_code == 1
    assert "not found on Kafka" in result.stderr
    assert "oms demo network" in result.stderr


def test_dlq_tail_prints_a_dead_letter_block(oms, oms_topics) -> None:
    key = f"web-eu:dlq-{uuid.uuid4().hex[:8]}"
    headers = [
        ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("oms-original-topic", CHANNEL_ORDERS.name.encode()),
        ("oms-original-partition", b"2"),
        ("oms-original-offset", b"41"),
        ("oms-error-class", b"ValidationError"),
        ("oms-error-message", b"1 validation error for OrderSubmittedData\ngrand_total\n  does not add up"),
        ("oms-service", b"order"),
    ]
    payload = b'{"specversion": "1.0", "type": "oms.channel.order_submitted.v1", "id": "x", "data": {}}'

    async def dead_letter() -> None:
        async with producer(oms_topics, "test-oms-cli") as client:
            await client.send_and_wait(DEAD_LETTERS.name, payload, key=key.encode(), headers=headers)

    asyncio.run(dead_letter())
    result = oms("dlq", "tail", "--from-beginning", "--no-follow", "--bootstrap", oms_topics)
    assert result.exit_code == 0, result.output
    block = next(b for b in result.stdout.split("\n\n") if key in b)
    assert f"original  {CHANNEL_ORDERS.name}[2]@41" in block
    assert "service   order" in block
    assert "error     ValidationError: 1 validation error for OrderSubmittedData\n" in block
    assert "            grand_total" in block
    assert "event     oms.channel.order_submitted.v1 id x" in block
    assert "trace     00-0af7651916cd43dd8448eb211c80319c" in block
    assert "dead letter(s)" in result.stderr

    newest = oms("dlq", "tail", "--no-follow", "--bootstrap", oms_topics)
    assert newest.exit_code == 0
    assert key not in newest.stdout


def _oms_process(*args: str) -> subprocess.Popen:
    """`oms ...` as its own process, with Ctrl-C (SIGINT) delivered as in a terminal even if this test runs in the
    background (where SIGINT would be inherited as ignored)."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "oms"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_line(stream, text: str, seconds: float = 30.0) -> str:
    deadline = time.monotonic() + seconds
    seen = ""
    while time.monotonic() < deadline:
        line = stream.readline()
        seen += line
        if text in line:
            return seen
        if not line:
            break
    raise AssertionError(f"no line with {text!r} within {seconds}s; saw {seen!r}")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_demo_ship_stops_cleanly_on_a_signal(oms_topics, stop: signal.Signals) -> None:
    code = f"T-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(oms_topics, [fulfillment_requests(code)], partitions=1))
    process = _oms_process("demo", "ship", "--source", code, "--bootstrap", oms_topics)
    try:
        _wait_for_line(process.stdout, "Ctrl-C to stop")
        process.send_signal(stop)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "answered 0 fulfillment request(s)" in out
        assert "Traceback" not in err
    finally:
        process.kill()
        asyncio.run(_delete(oms_topics, [fulfillment_requests(code).name]))


def test_dlq_tail_follows_until_ctrl_c(oms_topics) -> None:
    process = _oms_process("dlq", "tail", "--bootstrap", oms_topics)
    try:
        _wait_for_line(process.stderr, "Ctrl-C to stop")
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "Traceback" not in err
    finally:
        process.kill()


def test_a_dead_letter_whose_json_escapes_a_lone_surrogate_is_printed_with_a_replacement() -> None:
    # Any producer may send `"\ud800"` (valid JSON, not encodable as UTF-8): the block must still print.
    from aiokafka.structs import ConsumerRecord

    from oms_tools.dlq import format_dead_letter

    value = b'{"type": "\\ud800", "id": "x"}'
    record = ConsumerRecord("oms.dlq.v1", 0, 7, 0, 0, None, value, None, len(value), len(value), [])
    block = format_dead_letter(record)
    block.encode("utf-8")  # printable
    assert "event     ? id x" in block
