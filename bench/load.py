"""The channels: an open-loop load generator, run as a process of its own so that nothing else in the harness can
delay its schedule.

Order i is due at t0 + i / rate, whatever happened to the orders before it (open loop: a slow system does not slow
the offered load, so queueing shows as latency). The scheduler sleeps until the next order is due and then sends
every order that is due, each as `order_submitted` then `payment_captured` (same key, so the payment stays behind
its order), as a channel does. Its own lag (send time minus due time, per order) is measured and reported, and the
harness refuses a point where the generator fell behind: then the point measured the generator, not the system.

    python -m bench.load --bootstrap 127.0.0.1:20092 --tag p1 --seed 7 --rate 50 --seconds 20

Writes JSON lines on stdout: ready, start (t0), progress (twice a second), done (counts and lag).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from array import array

from aiokafka import AIOKafkaProducer

from bench import orders as bench_orders
from bench.stats import percentile

SUBMITTED = b"oms.channel.order_submitted.v1"
PAID = b"oms.channel.payment_captured.v1"
CONTENT = ("content-type", b"application/cloudevents+json")


def emit(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def play(args: argparse.Namespace) -> None:
    count = round(args.rate * args.seconds)
    orders = bench_orders.build(args.tag, count, args.seed, args.channels)
    # As a channel would publish: acknowledged by every in-sync replica, idempotent.
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap,
        client_id=f"bench-channels-{args.tag}",
        acks="all",
        enable_idempotence=True,
        linger_ms=1,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    sub_headers = [CONTENT, ("ce-type", SUBMITTED)]
    pay_headers = [CONTENT, ("ce-type", PAID)]
    acked = errors = 0

    def done(future: asyncio.Future) -> None:
        nonlocal acked, errors
        if future.cancelled() or future.exception() is not None:
            errors += 1
        else:
            acked += 1

    lags = array("d")
    emit(event="ready", orders=count)
    t0 = time.time() + 0.2
    emit(event="start", t0=t0)
    next_progress = t0
    interval = 1.0 / args.rate
    i = 0
    pending: list[asyncio.Future] = []
    while i < count:
        now = time.time()
        due = t0 + i * interval
        if due > now:
            await asyncio.sleep(due - now)
            now = time.time()
        # Everything due by now goes out at once: a late scheduler catches up in a burst, as a real backlog would.
        while i < count and t0 + i * interval <= now:
            order = orders[i]
            lags.append(time.time() - (t0 + i * interval))
            first = await producer.send(args.topic, order.submitted, key=order.key, headers=sub_headers)
            second = await producer.send(args.topic, order.payment, key=order.key, headers=pay_headers)
            first.add_done_callback(done)
            second.add_done_callback(done)
            pending.append(second)
            i += 1
        if now >= next_progress:
            emit(event="progress", sent=i, lag_max=max(lags) if lags else 0.0)
            next_progress = now + 0.5
            pending = [f for f in pending if not f.done()]
    await producer.flush()
    await asyncio.gather(*pending, return_exceptions=True)
    await producer.stop()
    ordered = sorted(lags)
    emit(
        event="done",
        planned=count,
        sent=i,
        acked_messages=acked,
        failed_messages=errors,
        lag_p50=percentile(ordered, 50) if ordered else 0.0,
        lag_p99=percentile(ordered, 99) if ordered else 0.0,
        lag_max=ordered[-1] if ordered else 0.0,
        finished=time.time(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", default="oms.channel.orders.v1")
    parser.add_argument("--tag", required=True, help="makes the external order ids of this point unique")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--channels", type=int, default=len(bench_orders.CHANNELS), help="how many channels")
    parser.add_argument("--rate", type=float, required=True, help="orders per second")
    parser.add_argument("--seconds", type=float, required=True)
    asyncio.run(play(parser.parse_args()))


if __name__ == "__main__":
    main()
