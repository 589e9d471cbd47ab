"""The faults: each injector breaks one thing while orders flow, says when it hit, and returns once what it broke
is back (every service ready again). Recovery of the flow itself is measured afterwards, from the topics."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
import uuid
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from oms_contracts.topics import CHANNEL_ORDERS, FULFILLMENT_UPDATES, INVENTORY_RECEIPTS

from . import traffic
from .system import Infra, Instance, Services

# A crash point fires at each pass through it with this probability: under load a service dies within seconds of
# being armed, at a batch (or relay pass) that is not always the first.
CRASH_ODDS = 0.1
# How long an armed service may take to reach its crash point before the suite gives up on that one.
CRASH_WITHIN_S = 120.0
# How long a second instance stays in the consumer groups before it leaves again.
SECOND_INSTANCE_S = 5.0


@dataclass
class Fault:
    kind: str  # kill9, crash:<point>, term, broker-kill, postgres-restart, rebalance, duplicates, poison
    target: str  # a service, "kafka", "postgres", or what was sent
    at: float = 0.0  # when it hit (epoch seconds)
    # Its last disruption (a rebalance's second one, when the extra instance leaves): recovery counts from here.
    last_at: float = 0.0
    back_at: float = 0.0  # every service ready again
    happened: bool = True  # a crash point not reached in time did not happen
    detail: str = ""
    # Filled in by the checker: until an order placed after it had its request out, and its confirmation sent.
    recovery_s: float | None = None
    mail_recovery_s: float | None = None


@dataclass
class Poison:
    """A record no service can apply, or one with odd headers around a valid event, and what must become of it at
    each service that reads its topic."""

    label: str
    topic: str
    key: str | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    expect: dict[str, str]  # service -> "dead letter" | "rejected" | "applied"
    event_id: uuid.UUID | None = None  # the id order.rejected names (rejected_event_id)
    order: traffic.Planned | None = None  # a valid order with odd headers: it must end like any other
    partition: int = -1
    offset: int = -1


@dataclass
class Context:
    infra: Infra
    services: Services
    publisher: traffic.Publisher
    channels: traffic.Channels
    rng: random.Random
    poison: list[Poison] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)  # topic -> records published again
    _poison_rounds: int = 0


async def _back(ctx: Context, fault: Fault, timeout: float = 300.0) -> Fault:
    fault.back_at = await ctx.services.wait_ready(
        [i for i in ctx.services.instances.values() if i.wanted], timeout=timeout
    )
    return fault


async def _stop(ctx: Context, service: str, how: str) -> Fault:
    """kill -9 (a crash: nothing flushed, no hook runs) or TERM (a graceful stop) of a service's primary instance;
    returns once it is gone. The supervisor starts it again."""
    instance = ctx.services.primary(service)
    fault = Fault(how, service)
    sig = signal.SIGKILL if how == "kill9" else signal.SIGTERM
    fault.at = fault.last_at = ctx.services.signal(instance, sig, how)
    await ctx.services.gone(instance)
    if how == "term":
        fault.detail = f"stopped in {time.time() - fault.at:.1f} s"
    return fault


async def kill9(ctx: Context, service: str) -> list[Fault]:
    return [await _back(ctx, await _stop(ctx, service, "kill9"))]


async def term(ctx: Context, service: str) -> list[Fault]:
    return [await _back(ctx, await _stop(ctx, service, "term"))]


async def crash_at(ctx: Context, point: str, service: str, by: str) -> list[Fault]:
    """Stop the service (`by`: kill9 or term, a fault of its own) and have the supervisor start it with the crash
    point armed; wait for it to die there. The supervisor then starts it again unarmed. An armed restart after a
    kill -9 meets the crash point while it is still recovering, which is the harder case."""
    instance = ctx.services.primary(service)
    instance.arm_next = f"{point}:{CRASH_ODDS}"
    stop = await _stop(ctx, service, by)
    stop.detail = f"restarted with {point} armed"
    crash = Fault(f"crash:{point}", service)
    deadline = time.monotonic() + CRASH_WITHIN_S
    while time.monotonic() < deadline:
        crashes = [e for e in ctx.services.exits if e.instance == instance.name and e.at > stop.at and e.crash_point]
        if crashes:
            crash.at = crash.last_at = crashes[0].at
            await _back(ctx, crash)
            stop.back_at = crash.back_at
            return [stop, crash]
        await asyncio.sleep(0.2)
    crash.happened = False
    crash.detail = f"not reached within {CRASH_WITHIN_S:.0f} s"
    if instance.alive() and instance.armed:
        ctx.services.signal(instance, signal.SIGTERM, "disarming")
        await ctx.services.gone(instance)
    await _back(ctx, crash)
    stop.back_at = crash.back_at
    return [stop, crash]


async def broker_kill(ctx: Context) -> list[Fault]:
    fault = Fault("broker-kill", "kafka")
    fault.at = fault.last_at = time.time()
    await asyncio.to_thread(ctx.infra.kill_broker)
    await asyncio.sleep(1.0)  # down for a moment: clients see connections refused, not only a reset
    await asyncio.to_thread(ctx.infra.start_broker)
    fault.detail = f"broker answering again after {time.time() - fault.at:.1f} s"
    return [await _back(ctx, fault)]


async def postgres_restart(ctx: Context) -> list[Fault]:
    fault = Fault("postgres-restart", "postgres")
    fault.at = fault.last_at = time.time()
    await asyncio.to_thread(ctx.infra.restart_postgres_immediately)
    fault.detail = f"accepting connections again after {time.time() - fault.at:.1f} s"
    return [await _back(ctx, fault)]


async def rebalance(ctx: Context, services: list[str]) -> list[Fault]:
    """A second instance of each service joins its consumer groups, stays a few seconds under load, and leaves."""
    fault = Fault("rebalance", "+".join(services))
    fault.at = time.time()
    seconds: list[Instance] = [ctx.services.add(service, second=True) for service in services]
    await ctx.services.wait_ready(seconds, timeout=300)
    await asyncio.sleep(SECOND_INSTANCE_S)
    for second in seconds:
        second.wanted = False
        ctx.services.signal(second, signal.SIGTERM, "stop")
    fault.last_at = time.time()
    for second in seconds:
        await ctx.services.gone(second)
        del ctx.services.instances[second.name]
    fault.detail = f"second instance(s) in the groups for {fault.last_at - fault.at:.1f} s"
    return [await _back(ctx, fault)]


# -- duplicates -------------------------------------------------------------------------------------------------

# Topic -> the consumer groups that read it: a record is "processed" once every one of them committed past it.
_READERS = {
    topic.name: (topic, tuple(f"oms-{service}.{topic.name}" for service in services))
    for topic, services in (
        (CHANNEL_ORDERS, ("order",)),
        (FULFILLMENT_UPDATES, ("order", "inventory")),
        (INVENTORY_RECEIPTS, ("inventory",)),
    )
}
# Receipts other than stock_received (counts replace on-hand) are not sent by the suite.
_DUPLICATED_TYPES = {
    "oms.channel.order_submitted.v1",
    "oms.channel.payment_captured.v1",
    "oms.channel.payment_failed.v1",
    "oms.channel.cancellation_requested.v1",
    "oms.fulfillment.accepted.v1",
    "oms.fulfillment.shipped.v1",
    "oms.fulfillment.delivered.v1",
    "oms.inventory.stock_received.v1",
}


async def duplicates(ctx: Context, per_topic: int) -> list[Fault]:
    """Publish again, byte for byte (key, value, headers), records every reader has already applied: channel orders
    and payments, fulfillment updates, receipts. Each must change nothing."""
    fault = Fault("duplicates", "channel orders, payments, fulfillment updates, receipts")
    fault.at = fault.last_at = time.time()
    picked = {name: await _processed_records(ctx, name, per_topic) for name in _READERS}
    for name, records in picked.items():
        for record in records:
            await ctx.publisher.send(
                name, record.value, record.key.decode() if record.key else None, list(record.headers)
            )
        ctx.duplicates[name] = ctx.duplicates.get(name, 0) + len(records)
    fault.detail = ", ".join(f"{len(r)} on {name}" for name, r in picked.items())
    return [await _back(ctx, fault)]


async def _processed_records(ctx: Context, name: str, wanted: int) -> list:
    topic, groups = _READERS[name]
    admin = AIOKafkaAdminClient(bootstrap_servers=ctx.infra.bootstrap)
    await admin.start()
    try:
        committed: dict[TopicPartition, int] = {}
        for group in groups:
            for tp, meta in (await admin.list_consumer_group_offsets(group)).items():
                if tp.topic == name and meta.offset >= 0:
                    committed[tp] = min(committed.get(tp, meta.offset), meta.offset)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=ctx.infra.bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    found = []
    try:
        starts = await consumer.beginning_offsets(list(committed))
        candidates = [(tp, o) for tp, end in committed.items() for o in range(starts[tp], end)]
        ctx.rng.shuffle(candidates)
        for tp, offset in candidates[: wanted * 4]:
            consumer.assign([tp])
            consumer.seek(tp, offset)
            records = (await consumer.getmany(tp, timeout_ms=5000, max_records=1)).get(tp, [])
            if not records or records[0].value is None:
                continue
            try:
                event = topic.parse(records[0].value)
            except ValueError:
                continue  # poison sent earlier: not a processed event
            if event.type in _DUPLICATED_TYPES:
                found.append(records[0])
            if len(found) == wanted:
                break
    finally:
        await consumer.stop()
    return found


# -- poison -----------------------------------------------------------------------------------------------------

_DL = "dead letter"
_BOTH = {"order": _DL, "inventory": _DL}


def poison_set(round_no: int) -> list[Poison]:
    """Records a hostile or broken producer could publish; event ids fresh per round."""
    ids = uuid.uuid5(uuid.NAMESPACE_URL, f"oms-faults:poison:{round_no}")
    content = ("content-type", b"application/cloudevents+json")
    channel_key = f"poison:{round_no}"

    def valid_order(label: str, headers: list[tuple[str, bytes | None]]) -> Poison:
        order = traffic.plan(f"poison{round_no}-{label.replace(' ', '-')}", 0, round_no, kind="plain")
        order.headers = headers
        return Poison(
            label, CHANNEL_ORDERS.name, order.key, order.records[0], headers, {"order": "applied"}, order=order
        )

    def submission(event_id: uuid.UUID, **change) -> bytes:
        order = traffic.plan(f"poison{round_no}-typed", 0, round_no, kind="plain")
        document = json.loads(order.records[0])
        document["id"] = str(event_id)
        for path, value in change.items():
            *parents, last = path.split(".")
            node = document
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            node[int(last) if isinstance(node, list) else last] = value
        return json.dumps(document).encode()

    huge_id, typed_id = uuid.uuid5(ids, "huge"), uuid.uuid5(ids, "typed")
    shipped = {
        "specversion": "1.0",
        "id": str(uuid.uuid5(ids, "shipped")),
        "type": "oms.fulfillment.shipped.v1",
        "source": "/sources/WH-EAST",
        "data": {"fulfillment_id": "not-a-uuid", "order_id": 42, "source_code": "WH-EAST", "lines": "all"},
    }
    receipt = {
        "specversion": "1.0",
        "id": str(uuid.uuid5(ids, "receipt")),
        "type": "oms.inventory.stock_received.v1",
        "source": "/wms/WH-EAST",
        "data": {"sku": traffic.SCARCE[0], "source_code": traffic.SCARCE_AT, "quantity": -5, "reason": "restock"},
    }
    payment = {
        "specversion": "1.0",
        "id": str(uuid.uuid5(ids, "payment")),
        "type": "oms.channel.payment_captured.v1",
        "source": "/channels/web-eu",
        "data": {"channel": "web-eu", "external_order_id": "x", "amount": [1, 2], "currency": 978},
    }
    unknown = {**payment, "id": str(uuid.uuid5(ids, "unknown")), "type": "oms.channel.order_teleported.v1"}
    return [
        Poison(
            "bad JSON",
            CHANNEL_ORDERS.name,
            channel_key,
            b'{"specversion":"1.0","type":"oms.channel.order_submitted.v1","data":{"lines":[',
            [content],
            {"order": _DL},
        ),
        Poison("binary body", CHANNEL_ORDERS.name, channel_key, bytes(range(256)) * 4, [], {"order": _DL}),
        Poison("null value", CHANNEL_ORDERS.name, channel_key, None, [], {"order": _DL}),
        valid_order("binary headers", [content, ("x-binary", b"\xff\xfe\x00"), ("traceparent", b"\xff\xfe")]),
        valid_order("null header", [content, ("x-null", None)]),
        Poison(
            "huge submission near the size limit",
            CHANNEL_ORDERS.name,
            channel_key,
            submission(huge_id, **{"data.external_order_id": "x" * 1_000_000}),
            [content],
            {"order": "rejected"},
            event_id=huge_id,
        ),
        Poison(
            "huge garbage near the size limit",
            FULFILLMENT_UPDATES.name,
            str(uuid.uuid5(ids, "order")),
            b"\x00garbage" * 125_000,
            [],
            _BOTH,
        ),
        Poison(
            "wrong types in a submission",
            CHANNEL_ORDERS.name,
            channel_key,
            submission(typed_id, **{"data.lines.0.quantity": "three", "data.grand_total": 12.5}),
            [content],
            {"order": "rejected"},
            event_id=typed_id,
        ),
        Poison(
            "wrong types in a payment",
            CHANNEL_ORDERS.name,
            channel_key,
            json.dumps(payment).encode(),
            [],
            {"order": _DL},
        ),
        Poison(
            "unknown event type", CHANNEL_ORDERS.name, channel_key, json.dumps(unknown).encode(), [], {"order": _DL}
        ),
        Poison(
            "wrong types in a shipment",
            FULFILLMENT_UPDATES.name,
            str(uuid.uuid5(ids, "order")),
            json.dumps(shipped).encode(),
            [content],
            _BOTH,
        ),
        Poison(
            "negative receipt, binary header",
            INVENTORY_RECEIPTS.name,
            traffic.SCARCE[0],
            json.dumps(receipt).encode(),
            [("x-binary", b"\xfe\xff")],
            {"inventory": _DL},
        ),
    ]


async def poison(ctx: Context) -> list[Fault]:
    ctx._poison_rounds += 1
    fault = Fault("poison", "channel orders, fulfillment updates, receipts")
    fault.at = fault.last_at = time.time()
    made = poison_set(ctx._poison_rounds)
    for p in made:
        sent = await ctx.publisher.send(p.topic, p.value, p.key, p.headers)
        p.partition, p.offset = sent.partition, sent.offset
        if p.order is not None:
            p.order.submitted_at = sent.timestamp / 1000
            # Its payment follows as a channel would send it, with the same odd headers.
            await ctx.publisher.send(p.topic, p.order.records[1], p.key, p.headers)
            ctx.channels.orders.append(p.order)
    ctx.poison += made
    fault.detail = f"{len(made)} records"
    return [await _back(ctx, fault)]
