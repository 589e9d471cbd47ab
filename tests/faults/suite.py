"""One run of the fault suite: start the system, let orders flow, inject the faults of a size one after another,
stop the orders, drain with no faults, check, report.

Two sizes: `bounded` (inside `make test`: every kind of fault once but the rebalance, a few orders a second) and
`full` (`make faults`: every kind several times, every service each time, at a steady modest rate).
OMS_FAULTS_SIZE chooses; OMS_FAULTS_RATE overrides the rate of either."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from oms_contracts import FIXED_TOPICS
from oms_notifications.settings import NotificationsSettings
from oms_runtime.topics import ensure_topics

from . import checker, injectors, traffic
from .system import ROOT, SERVICES, TOKEN, Infra, MailSink, Ports, Services, migrate

CRASH_POINTS = ("consumer.after_commit", "relay.after_publish")


@dataclass(frozen=True)
class Size:
    name: str
    rate: float  # orders per second, offered open-loop
    schedule: tuple[tuple[str, ...], ...]  # the faults, in order: (kind, arguments...)
    warmup_s: float  # orders before the first fault: the flow's own pace, to read recoveries against
    gap_s: float  # after a fault's recovery, before the next
    tail_s: float  # orders after the last fault
    drain_s: float  # the deadline for everything to settle once the orders stop
    duplicates_per_topic: int
    restock_every_s: float = 5.0

    @property
    def restock_units(self) -> int:
        """Per scarce SKU and restock: about 70 % of what the orders ask of it meanwhile, so lines keep waiting."""
        weights = dict(traffic.MIX)
        scarce_share = (weights["backorder"] + weights["whole"]) / sum(weights.values())
        per_sku = self.rate * scarce_share * (4 / 3) / len(traffic.SCARCE)
        return max(1, round(0.7 * per_sku * self.restock_every_s))


BOUNDED = Size(
    name="bounded",
    rate=6.0,
    # Every kind once but the rebalance (a second instance takes a minute to start on a busy 2-core machine; `make
    # faults` has one per service). The crash points are armed by a kill -9 and a TERM, which count as those too.
    schedule=(
        ("crash", "consumer.after_commit", "inventory", "kill9"),
        ("broker-kill",),
        ("poison",),
        ("postgres-restart",),
        ("duplicates",),
        ("crash", "relay.after_publish", "order", "term"),
    ),
    warmup_s=8.0,
    gap_s=2.0,
    tail_s=5.0,
    drain_s=300.0,
    duplicates_per_topic=15,
)


def _full_schedule(seed: int) -> tuple[tuple[str, ...], ...]:
    """Each crash point in each service (armed half by kill -9, half by TERM), one more kill -9 of each service,
    three broker kills, PostgreSQL restarts, duplicate and poison rounds, a rebalance of each service; shuffled."""
    faults: list[tuple[str, ...]] = []
    for i, service in enumerate(SERVICES):
        faults += [
            ("crash", "consumer.after_commit", service, ("kill9", "term")[i % 2]),
            ("crash", "relay.after_publish", service, ("term", "kill9")[i % 2]),
            ("kill9", service),
            ("rebalance", service),
        ]
    faults += [("broker-kill",), ("postgres-restart",), ("duplicates",), ("poison",)] * 3
    random.Random(seed).shuffle(faults)
    return tuple(faults)


FULL = Size(
    name="full",
    rate=20.0,
    schedule=_full_schedule(7),
    warmup_s=20.0,
    gap_s=4.0,
    tail_s=10.0,
    drain_s=1800.0,
    duplicates_per_topic=40,
)
SIZES = {s.name: s for s in (BOUNDED, FULL)}


def chosen_size() -> Size:
    size = SIZES[os.environ.get("OMS_FAULTS_SIZE", "bounded")]
    rate = os.environ.get("OMS_FAULTS_RATE")
    if rate:
        size = Size(**{**asdict(size), "rate": float(rate)})
    return size


# The services run with the notification service's default number of SMTP connections.
SMTP_CONNECTIONS = NotificationsSettings.model_fields["smtp_connections"].default
UNKNOWN_NEVER_RECEIVED = "incomplete: mails unknown, never received"


@dataclass
class Outcome:
    size: str
    rate: float
    started: str
    seconds: float
    orders: dict[str, int]
    counts: dict[str, dict[str, int]]
    faults: list[injectors.Fault]
    latency: dict[str, dict[str, float | None]]
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def in_flight_allowance(self) -> int:
        """Mails at most once may lose: one in flight per SMTP connection at each hard exit of the notification
        service (kill -9 or a crash point; a TERM finishes what it hands over). Such a mail is `unknown`, listed for
        the operators, never resent; any more than this is a defect."""
        hard_exits = sum(
            1
            for f in self.faults
            if f.target == "notifications" and f.happened and (f.kind == "kill9" or f.kind.startswith("crash:"))
        )
        return hard_exits * SMTP_CONNECTIONS

    @property
    def failures(self) -> dict[str, int]:
        found = {f"{family}: {what}": n for family, c in self.counts.items() for what, n in c.items() if n}
        if found.get(UNKNOWN_NEVER_RECEIVED, 0) <= self.in_flight_allowance:
            found.pop(UNKNOWN_NEVER_RECEIVED, None)
        return found


async def inject(ctx: injectors.Context, spec: tuple[str, ...], size: Size) -> list[injectors.Fault]:
    kind, *args = spec
    if kind == "kill9":
        return await injectors.kill9(ctx, args[0])
    if kind == "term":
        return await injectors.term(ctx, args[0])
    if kind == "crash":
        return await injectors.crash_at(ctx, *args)
    if kind == "broker-kill":
        return await injectors.broker_kill(ctx)
    if kind == "postgres-restart":
        return await injectors.postgres_restart(ctx)
    if kind == "rebalance":
        return await injectors.rebalance(ctx, list(args))
    if kind == "duplicates":
        return await injectors.duplicates(ctx, size.duplicates_per_topic)
    if kind == "poison":
        return await injectors.poison(ctx)
    raise ValueError(f"unknown fault {spec}")


async def _eventually(check, what: str, timeout: float = 120.0, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            last = await check()
            if last:
                return last
        await asyncio.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s (last seen: {last!r})")


async def _network(services: Services, warehouse: traffic.Warehouse) -> None:
    """The network in routing and, through its topic, in inventory; the opening stock; routing seeing it."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(headers=headers, timeout=10) as http:
        r = await http.put(services.primary("routing").url("/network"), json=traffic.NETWORK)
        assert r.status_code == 200, r.text

        async def inventory_knows():
            r = await http.get(services.primary("inventory").url("/sources"))
            return r.status_code == 200 and {s["code"] for s in r.json() if s["active"]} >= set(traffic.SOURCES)

        await _eventually(inventory_knows, "inventory to know the network")
        await warehouse.open()

        async def routing_sees(sku: str):
            probe = traffic.plan("probe", 0, 0, kind="plain")
            body = {
                "order_id": str(probe.order_id),
                "channel": "web-eu",
                "placed_at": "2026-11-25T10:00:00Z",
                "currency": "EUR",
                "amount": "10.00",
                "lines": [{"line_id": "1", "sku": sku, "quantity": 1}],
                "shipping_address": {"name": "A", "line1": "B", "city": "Berlin", "country": "DE"},
                "shipping_method": "standard",
                "options": {},
            }
            r = await http.post(services.primary("routing").url("/simulate"), json=body)
            return r.status_code == 200 and r.json()["shipments"]

        for sku in (traffic.PLENTY[-1], traffic.SCARCE[-1]):
            await _eventually(lambda sku=sku: routing_sees(sku), f"routing to see the stock of {sku}")


async def _sample_oversold(infra: Infra, found: Counter) -> None:
    """Every two seconds: any (sku, source) with more reserved than on hand, as the run goes (faults included)."""
    while True:
        try:
            found["oversold"] += await checker.oversold_now(infra)
            found["samples"] += 1
        except Exception:
            found["unreadable"] += 1  # PostgreSQL being restarted
        await asyncio.sleep(2.0)


async def _drain(infra: Infra, orders: list[traffic.Planned], deadline_s: float) -> float:
    """Until every valid order is where it must end and nothing is left to do; returns how long it took (the
    checker counts whatever is still not done at the deadline)."""
    t0 = time.monotonic()
    wanted = {str(o.order_id): o.expected for o in orders if o.valid}
    while time.monotonic() - t0 < deadline_s:
        try:
            rows = await checker.fetch(infra, "order", "SELECT order_id, status FROM orders")
            at_end = sum(1 for r in rows if wanted.get(str(r["order_id"])) == r["status"])
            [pending] = await checker.fetch(
                infra, "notifications", "SELECT count(*) AS n FROM notifications WHERE status = 'pending'"
            )
            if at_end == len(wanted) and pending["n"] == 0:
                left = await checker.leftovers(infra, orders)
                if not any(left.values()):
                    return time.monotonic() - t0
        except Exception:
            pass
        await asyncio.sleep(2.0)
    return time.monotonic() - t0


async def run(size: Size, run_dir: Path, seed: int = 7) -> Outcome:
    log_dir = run_dir / "logs"
    await asyncio.to_thread(log_dir.mkdir, parents=True, exist_ok=True)
    started, t_start = time.strftime("%Y-%m-%d %H:%M:%S"), time.monotonic()
    ports = Ports()
    infra = Infra(ROOT / ".cache" / "faults" / "state", ports, log_dir / "infra.log")
    sink = MailSink(ports.smtp, run_dir / "mails.jsonl", log_dir / "mailsink.log")
    services = Services(infra, ports, log_dir)
    publisher = traffic.Publisher(infra.bootstrap, "faults-channels")
    sources = traffic.Sources(infra.bootstrap, traffic.Publisher(infra.bootstrap, "faults-sources"))
    sampler: asyncio.Task[None] | None = None

    def say(what: str) -> None:
        print(f"faults [{time.monotonic() - t_start:6.1f} s] {what}", flush=True)

    try:
        await asyncio.to_thread(infra.start)
        await asyncio.gather(*(asyncio.to_thread(migrate, infra, s, log_dir / "setup.log") for s in SERVICES))
        await ensure_topics(infra.bootstrap, FIXED_TOPICS, partitions=6)
        say("broker and database up, migrated, topics created")
        sink.start()
        for service in SERVICES:
            services.add(service)
        services.start_supervising()
        await services.wait_ready(timeout=300)
        warehouse = traffic.Warehouse(publisher, size.restock_every_s, size.restock_units)
        await _network(services, warehouse)
        say("services ready, network and stock loaded")
        sources.start()
        channels = traffic.Channels(publisher, f"f{int(time.time())}", seed, size.rate)
        oversold: Counter = Counter()
        sampler = asyncio.create_task(_sample_oversold(infra, oversold))
        channels.start()
        warehouse.start_restocking()
        await asyncio.sleep(size.warmup_s)
        first_fault = time.time()
        ctx = injectors.Context(infra, services, publisher, channels, random.Random(seed))
        faults = []
        for spec in size.schedule:
            for fault in await inject(ctx, spec, size):
                faults.append(fault)
                say(f"{fault.kind} {fault.target}: {fault.detail or 'done'}")
            await asyncio.sleep(size.gap_s)
        await asyncio.sleep(size.tail_s)
        await channels.stop()
        await warehouse.stop_restocking()
        topped = await warehouse.top_up(channels.orders)
        say(f"{len(channels.orders)} orders placed; draining")
        drained_s = await _drain(infra, channels.orders, size.drain_s)
        sampler.cancel()
        say(f"drained in {drained_s:.0f} s; checking")
        evidence = await checker.collect(
            infra,
            channels.orders,
            warehouse.units_received(),
            sources.units_shipped(),
            sink.mails(),
            ctx.poison,
            services.exits,
            oversold["oversold"],
        )
        counts = checker.count(evidence)
        requested = checker.first_requests(evidence)
        checker.recovery(faults, channels.orders, requested, evidence.confirmed_at)
        outcome = Outcome(
            size=size.name,
            rate=size.rate,
            started=started,
            seconds=round(time.monotonic() - t_start, 1),
            orders=dict(Counter(o.kind for o in channels.orders)),
            counts=counts,
            faults=faults,
            latency={
                "request": checker.latency(channels.orders, requested, first_fault),
                "confirmation": checker.latency(channels.orders, evidence.confirmed_at, first_fault),
            },
            notes={
                "drain_s": round(drained_s, 1),
                "final_top_up": topped,
                "duplicates_published": ctx.duplicates,
                "poison_records": len(ctx.poison),
                "dead_letters": len(evidence.dead_letters),
                "mails": len(evidence.mails),
                "mails delivered twice, by the fault before the second delivery": checker.repeats_after(
                    faults, evidence.mails
                ),
                "oversold_samples_taken": oversold["samples"],
                "channel_resends": publisher.retries,
                "sources_restarts": sources.restarts,
                "channel_lag_max_s": round(channels.lag_max, 2),
                "service_exits": len(services.exits),
            },
        )
        write_report(outcome, run_dir)
        await asyncio.to_thread(_write_orders, run_dir / "orders.jsonl", channels.orders, evidence, requested)
        return outcome
    finally:
        if sampler is not None:
            sampler.cancel()
        await sources.stop()
        await publisher.stop()
        await services.stop_all()
        sink.stop()
        await asyncio.to_thread(infra.stop)


KIND_NAMES = {
    "kill9": "kill -9 of a service",
    "crash:consumer.after_commit": "crash after a consumer's DB commit, before its offset commit",
    "crash:relay.after_publish": "crash after the relay's publish, before its outbox delete",
    "term": "TERM of a service (graceful)",
    "broker-kill": "kill -9 of the broker, then restart",
    "postgres-restart": "PostgreSQL immediate restart",
    "rebalance": "second instance joins and leaves (rebalance)",
    "duplicates": "processed events published again",
    "poison": "poison records",
}


def fault_rows(faults: list[injectors.Fault]) -> list[dict[str, object]]:
    rows = []
    for kind, name in KIND_NAMES.items():
        of_kind = [f for f in faults if f.kind == kind and f.happened]
        row: dict[str, object] = {
            "kind": name,
            "injected": len(of_kind),
            "targets": dict(Counter(f.target for f in of_kind)),
            "missed": sum(1 for f in faults if f.kind == kind and not f.happened),
        }
        for label, times in (
            ("recovery", sorted(f.recovery_s for f in of_kind if f.recovery_s is not None)),
            ("mail_recovery", sorted(f.mail_recovery_s for f in of_kind if f.mail_recovery_s is not None)),
        ):
            row[f"{label}_median_s"] = times[len(times) // 2] if times else None
            row[f"{label}_max_s"] = times[-1] if times else None
        rows.append(row)
    return rows


def markdown(outcome: Outcome) -> str:
    lines = [
        f"Fault suite, size {outcome.size}: {sum(outcome.orders.values())} orders at {outcome.rate:g}/s "
        f"({', '.join(f'{k} {n}' for k, n in sorted(outcome.orders.items()))}), started {outcome.started}, "
        f"{outcome.seconds:.0f} s in all.",
        "",
        "| fault | injected | order flow resumed: median / max | mail flow resumed: median / max |",
        "|---|---|---|---|",
    ]

    def seconds(value: object) -> str:
        return "-" if value is None else f"{value:.1f} s"

    for row in fault_rows(outcome.faults):
        lines.append(
            f"| {row['kind']} | {row['injected']} | {seconds(row['recovery_median_s'])} / "
            f"{seconds(row['recovery_max_s'])} | {seconds(row['mail_recovery_median_s'])} / "
            f"{seconds(row['mail_recovery_max_s'])} |"
        )
    request, confirmation = outcome.latency["request"], outcome.latency["confirmation"]
    lines += [
        "",
        f"Before the first fault, submission to fulfillment request: median {seconds(request['median_s'])}, p95 "
        f"{seconds(request['p95_s'])}; to confirmation mail: median {seconds(confirmation['median_s'])}, p95 "
        f"{seconds(confirmation['p95_s'])}.",
        "",
        "| check | count |",
        "|---|---|",
    ]
    for family, found in outcome.counts.items():
        for what, n in found.items():
            lines.append(f"| {family}: {what} | {n} |")
    lines += [
        "",
        f"At most once, a mail in flight when the notification service dies is `unknown` and never resent: up to "
        f"{outcome.in_flight_allowance} of them may never reach the mail server in this run (one per SMTP connection "
        "per hard exit of that service); more is a failure.",
        "",
        "Notes: " + json.dumps(outcome.notes),
    ]
    return "\n".join(lines) + "\n"


def _write_orders(
    path: Path, orders: list[traffic.Planned], evidence: checker.Evidence, first_request: dict[str, float]
) -> None:
    """One line per order: what it was, where it ended, when it was placed, requested and confirmed."""
    with path.open("w") as out:
        for o in orders:
            oid = str(o.order_id)
            line = {
                "index": o.index,
                "kind": o.kind,
                "order_id": oid,
                "expected": o.expected,
                "status": evidence.status.get(oid),
                "submitted_at": o.submitted_at,
                "first_request_at": first_request.get(oid),
                "confirmed_at": evidence.confirmed_at.get(oid),
            }
            out.write(json.dumps(line) + "\n")


def write_report(outcome: Outcome, run_dir: Path) -> None:
    (run_dir / "results.json").write_text(
        json.dumps({**asdict(outcome), "fault_rows": fault_rows(outcome.faults)}, indent=1, default=str)
    )
    (run_dir / "report.md").write_text(markdown(outcome))
