"""The fulfillment sources of the benchmark: one process that reads every source's request topic and answers each
`fulfillment.requested.v1` with `fulfillment.accepted.v1` and `fulfillment.shipped.v1` on the updates topic, keyed by
order id, carrying the request's trace context, as `oms demo ship` does.

It builds the answers as JSON directly rather than through the Pydantic models (bench/tests checks that they
validate against the contract): the simulator shares the two cores with the system under test, and its cost per
order must stay small next to the services'. Offsets are committed after the answers are acknowledged.

    python -m bench.threepl --bootstrap 127.0.0.1:20092 --topics oms.fulfillment.requests.WH-EAST.v1,...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import uuid
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

UPDATES = "oms.fulfillment.updates.v1"
_NAMESPACE = uuid.UUID("0b7f3f0e-4a86-4b1b-8f65-5b8c8f2d3a10")
CONTENT = ("content-type", b"application/cloudevents+json")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def answers(request: bytes) -> list[tuple[str, bytes]] | None:
    """(event type, body) of the accepted and shipped answers to one request; None for anything else (a cancel
    request: everything here ships at once)."""
    event = json.loads(request)
    if event.get("type") != "oms.fulfillment.requested.v1":
        return None
    d = event["data"]
    ref = {"fulfillment_id": d["fulfillment_id"], "order_id": d["order_id"], "source_code": d["source_code"]}
    source = f"/sources/{d['source_code']}"
    now = _now()
    tracking = f"00340{uuid.UUID(d['fulfillment_id']).int % 10**13:013d}"
    out = []
    for kind, data in (
        ("accepted", ref),
        (
            "shipped",
            {
                **ref,
                "carrier": "DHL",
                "service": "Paket",
                "tracking_number": tracking,
                "tracking_url": f"https://www.dhl.de/en/privatkunden.html?piececode={tracking}",
                "shipped_at": now,
                "lines": [{"line_id": x["line_id"], "quantity": x["quantity"]} for x in d["lines"]],
            },
        ),
    ):
        etype = f"oms.fulfillment.{kind}.v1"
        body = {
            "specversion": "1.0",
            "id": str(uuid.uuid5(_NAMESPACE, f"{d['fulfillment_id']}:{kind}")),
            "type": etype,
            "source": source,
            "time": now,
            "subject": d["order_id"],
            "datacontenttype": "application/json",
            "data": data,
        }
        out.append((etype, json.dumps(body, separators=(",", ":")).encode()))
    return out


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumer = AIOKafkaConsumer(
        *args.topics.split(","),
        bootstrap_servers=args.bootstrap,
        group_id="bench-3pl",
        client_id="bench-3pl",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=1000,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap, client_id="bench-3pl", acks="all", enable_idempotence=True, linger_ms=2
    )
    await producer.start()
    await consumer.start()
    handled = 0
    print(json.dumps({"event": "ready"}), flush=True)
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=1000)
            if not batch:
                continue
            futures = []
            offsets = {}
            for tp, records in batch.items():
                for record in records:
                    made = answers(record.value or b"")
                    if made is None:
                        continue
                    trace = [(k, v) for k, v in record.headers if k in ("traceparent", "tracestate") and v]
                    for etype, body in made:
                        headers = [CONTENT, ("ce-type", etype.encode()), *trace]
                        futures.append(await producer.send(UPDATES, body, key=record.key, headers=headers))
                    handled += 1
                offsets[TopicPartition(tp.topic, tp.partition)] = records[-1].offset + 1
            await asyncio.gather(*futures)
            await consumer.commit(offsets)
    finally:
        await consumer.stop()
        await producer.stop()
        print(json.dumps({"event": "done", "handled": handled}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topics", required=True, help="comma-separated request topics")
    asyncio.run(serve(parser.parse_args()))
    sys.exit(0)


if __name__ == "__main__":
    main()
