"""The `oms` command: topics, the demo network, stock and orders, a 3PL simulator and the dead letters.

Every command is asynchronous inside and ends with one of these exit codes: 0 done, 1 failed (an error answer
from Kafka or a service), 2 invalid input (options, demo files), 3 Kafka or a service unreachable. Expected
failures print one line on stderr, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
from aiokafka import ConsumerRecord
from pydantic import TypeAdapter, ValidationError

from oms_contracts import DEAD_LETTERS, FIXED_TOPICS, fulfillment_requests
from oms_contracts.common import BackorderPolicy
from oms_contracts.topics import CHANNEL_ORDERS, INVENTORY_RECEIPTS
from oms_contracts.types import SourceCode
from oms_runtime import outbox as relay_outbox
from oms_runtime.kafka import Kafka, KafkaSettings
from oms_runtime.topics import ensure_topics

from . import acl, demo, dlq, outbox, samples, trace
from .dlq import tail
from .errors import FAILED, INVALID, UNREACHABLE, ToolError
from .kafka import (
    admin,
    existing_topics,
    new_traceparent,
    producer,
    require_topics,
    send,
    talking_to,
    trace_id_of,
)
from .readiness import wait_until_inventory_knows
from .ship import Shipper

T = TypeVar("T")

EXIT_CODES = "Exit codes: 0 done, 1 failed, 2 invalid input, 3 Kafka or a service unreachable."

app = typer.Typer(
    name="oms",
    help="Operate and demo the OMS: create its Kafka topics, load the demo network and stock, place demo orders, "
    "play a 3PL, read the dead letters.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
topics_app = typer.Typer(help="The OMS's Kafka topics.", no_args_is_help=True, rich_markup_mode="markdown")
demo_app = typer.Typer(
    help="The demo: network, stock, orders and a shipping simulator. Typical order: `oms topics create`, start the "
    "services, `oms demo network`, `oms demo stock`, `oms demo ship` (in another terminal), `oms demo order`.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
dlq_app = typer.Typer(
    help="Dead letters on oms.dlq.v1: messages a service could never process.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(topics_app, name="topics")
app.add_typer(demo_app, name="demo")
outbox_app = typer.Typer(
    help="Messages a service's outbox relay could never publish (too large, a topic that does not exist): it parks "
    "them so that the rest of the service's output goes on. List them, put them back after a fix, or drop them.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
acl_app = typer.Typer(
    help="Who may do what on a broker with SASL/SCRAM and ACLs: a principal per fulfillment source and per service.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(dlq_app, name="dlq")
app.add_typer(outbox_app, name="outbox")
app.add_typer(acl_app, name="acl")


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the Kafka client's own log messages (connection retries).")
    ] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # Without --verbose the Kafka client's retries would bury the one line that says what went wrong.
    logging.getLogger("aiokafka").setLevel(logging.INFO if verbose else logging.CRITICAL + 1)


# Options and their validation ------------------------------------------------------------------------------------


def _check_bootstrap(value: str) -> str:
    servers = [part.strip() for part in value.split(",")]
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise typer.BadParameter(f"{server!r} is not host:port (e.g. 127.0.0.1:9092)")
    return ",".join(servers)


def _check_url(value: str) -> str:
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError) as error:
        raise typer.BadParameter(f"{value!r} is not a URL: {error}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise typer.BadParameter(f"{value!r} is not an http(s) URL such as http://127.0.0.1:8082")
    return value.rstrip("/")


def _check_token(value: str) -> str:
    if not value.strip() or any(c.isspace() for c in value):
        raise typer.BadParameter("a bearer token is one word with no spaces")
    return value


_SOURCE_CODE: TypeAdapter[str] = TypeAdapter(SourceCode)


def _check_sources(values: list[str] | None) -> list[str] | None:
    for value in values or ():
        try:
            _SOURCE_CODE.validate_python(value)
        except ValidationError:
            raise typer.BadParameter(f"{value!r} is not a source code (letters, digits, '-' and '_')") from None
    return values


Bootstrap = Annotated[
    str,
    typer.Option(
        "--bootstrap",
        "-b",
        envvar="OMS_KAFKA_BOOTSTRAP",
        callback=_check_bootstrap,
        help="Kafka bootstrap servers, host:port[,host:port...].",
    ),
]
Token = Annotated[
    str,
    typer.Option(
        "--token",
        envvar="OMS_TOKEN",
        callback=_check_token,
        help="Bearer token for the OMS HTTP APIs (demo-cs-token is the local demo's; never use it elsewhere).",
    ),
]
NetworkPath = Annotated[
    Path | None,
    typer.Option(
        "--network",
        dir_okay=False,
        show_default=f"{demo.DEFAULT_DIR_SHOWN}/{demo.NETWORK_FILE}",
        help='The demo network (JSON: {"sources": [...]}, each a routing Source).',
    ),
]
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_TOKEN = "demo-cs-token"


# Running a command -------------------------------------------------------------------------------------------------


def _fail(error: ToolError) -> typer.Exit:
    typer.secho(f"error: {error.message}", fg=typer.colors.RED, err=True)
    return typer.Exit(error.exit_code)


def _kafka(bootstrap: str) -> KafkaSettings:
    """The connection every Kafka client of a command uses: --bootstrap, and the login (OMS_KAFKA_SECURITY_PROTOCOL,
    OMS_KAFKA_SASL_USERNAME, OMS_KAFKA_SASL_PASSWORD, OMS_KAFKA_SSL_*) from the environment, as the services read it."""
    try:
        return KafkaSettings(kafka_bootstrap=bootstrap)
    except ValidationError as error:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())
        raise _fail(ToolError(f"Kafka settings: {problems}", INVALID)) from None


def _run(make: Callable[[], Awaitable[T]], *, kafka: Kafka | None = None, stoppable: bool = False) -> T | None:
    """Run one command's coroutine; expected failures end the process with a message and an exit code.

    A `stoppable` command (one that runs until stopped) ends normally on Ctrl-C or SIGTERM and returns None; any
    other command interrupted exits with code 130."""

    async def main() -> T | None:
        if stoppable:
            task = asyncio.current_task()
            with contextlib.suppress(NotImplementedError, RuntimeError):  # no signal handlers on this platform
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            if kafka is None:
                return await make()
            async with talking_to(kafka):
                return await make()
        except asyncio.CancelledError:
            if stoppable:
                return None
            raise

    try:
        return asyncio.run(main())
    except ToolError as error:
        raise _fail(error) from None
    except KeyboardInterrupt:
        if stoppable:
            return None
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def _load(loader: Callable[[], T]) -> T:
    try:
        return loader()
    except ToolError as error:
        raise _fail(error) from None


# oms topics create -------------------------------------------------------------------------------------------------


@topics_app.callback()
def _topics() -> None:
    """The OMS's Kafka topics."""


@topics_app.command("create", epilog=EXIT_CODES)
def topics_create(
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    partitions: Annotated[
        int, typer.Option("--partitions", "-p", min=1, max=10_000, help="Partitions of each topic created.")
    ] = 6,
    replication_factor: Annotated[
        int,
        typer.Option("--replication-factor", "-r", min=1, max=32, help="Replicas of each topic created."),
    ] = 1,
) -> None:
    """Create the OMS's fixed topics (oms_contracts.FIXED_TOPICS) that do not exist yet.

    Idempotent: existing topics are left as they are and reported as existing. A source's request topic is not one
    of them: the routing service creates it when the source joins the network."""
    topics = FIXED_TOPICS
    kafka = _kafka(bootstrap)
    created = _run(
        lambda: ensure_topics(kafka, topics, partitions=partitions, replication_factor=replication_factor),
        kafka=kafka,
    )
    for topic in topics:
        typer.echo(f"{'created' if topic.name in created else 'exists '}  {topic.name}")
    typer.echo(
        f"{len(topics)} topics on {bootstrap}: {len(created)} created, {len(topics) - len(created)} already existed"
    )


# oms demo network --------------------------------------------------------------------------------------------------


@demo_app.callback()
def _demo() -> None:
    """The demo: network, stock, orders and a shipping simulator."""


def _body_of(response: httpx.Response) -> str:
    try:
        text = json.dumps(response.json(), indent=2, ensure_ascii=False)
    except ValueError:
        text = response.text
    text = text.strip() or "(empty body)"
    return text if len(text) <= 4000 else text[:4000] + "…"


@demo_app.command("network", epilog=EXIT_CODES)
def demo_network(
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            dir_okay=False,
            show_default=f"{demo.DEFAULT_DIR_SHOWN}/{demo.NETWORK_FILE}",
            help='The network to load: {"sources": [...]}, each a routing Source.',
        ),
    ] = None,
    url: Annotated[
        str,
        typer.Option("--url", envvar="OMS_ROUTING_URL", callback=_check_url, help="The routing service's base URL."),
    ] = "http://127.0.0.1:8082",
    token: Token = DEFAULT_TOKEN,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait for the answer.")] = 30.0,
) -> None:
    """Load the demo fulfillment network into the routing service, one source at a time.

    The file is validated against the contracts first. Each source is created or replaced with PUT
    /network/sources/{code}: routing creates its request topic, then announces it on oms.routing.network.v1. Sources
    the file does not name are left as they are, so sources another client added are never deactivated (the whole
    network is replaced only by PUT /network, which this command does not use)."""
    network, path = _load(lambda: demo.load_network(file))

    async def put_each() -> list[tuple[str, httpx.Response]]:
        answers = []
        try:
            async with httpx.AsyncClient(timeout=timeout, headers={"Authorization": f"Bearer {token}"}) as client:
                for source in network.sources:
                    endpoint = f"{url}/network/sources/{source.code}"
                    response = await client.put(endpoint, json=source.model_dump(mode="json"))
                    if not response.is_success:
                        raise ToolError(
                            f"PUT {endpoint} answered {response.status_code} {response.reason_phrase}:\n"
                            f"{_body_of(response)}" + _loaded_before(answers),
                            FAILED,
                        )
                    answers.append((source.code, response))
        except httpx.TimeoutException:
            raise ToolError(
                f"the routing service at {url} did not answer within {timeout:g}s" + _loaded_before(answers),
                UNREACHABLE,
            ) from None
        except httpx.TransportError as error:
            raise ToolError(
                f"cannot reach the routing service at {url} ({error or type(error).__name__})"
                + _loaded_before(answers),
                UNREACHABLE,
            ) from None
        return answers

    answers = _run(put_each)
    created = sum(response.status_code == 201 for _, response in answers)
    typer.echo(
        f"PUT {url}/network/sources/{{code}}: {len(answers)} sources from {path}, {created} created, "
        f"{len(answers) - created} replaced; no other source touched"
    )
    for _, response in answers:
        try:
            s = response.json()
        except ValueError:
            continue
        state = "active" if s.get("active", True) else "inactive"
        countries = ",".join(s.get("countries", []))
        typer.echo(
            f"  {s.get('code', '?'):<10} {s.get('type', '?'):<9} {state:<8} {s.get('name', '')} (ships to {countries})"
        )


def _loaded_before(answers: list[tuple[str, httpx.Response]]) -> str:
    if not answers:
        return ""
    return f"\n(loaded before it: {', '.join(code for code, _ in answers)})"


# oms demo stock ----------------------------------------------------------------------------------------------------


@demo_app.command("stock", epilog=EXIT_CODES)
def demo_stock(
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            dir_okay=False,
            show_default=f"{demo.DEFAULT_DIR_SHOWN}/{demo.STOCK_FILE}",
            help='The stock to receive: {"stock": [{"sku", "source_code", "quantity"}, ...]}.',
        ),
    ] = None,
    network_file: NetworkPath = None,
    reference: Annotated[str, typer.Option("--reference", help="The delivery reference the receipts carry.")] = (
        "demo-stock"
    ),
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="First wait until inventory knows every source of the network (receipts for a source it has not "
            "heard of wait only a grace period for it, then go to the dead letters).",
        ),
    ] = True,
    wait_timeout: Annotated[
        float, typer.Option("--wait-timeout", min=0, help="Seconds to wait for inventory before giving up.")
    ] = 60.0,
    inventory_url: Annotated[
        str,
        typer.Option(
            "--inventory-url", envvar="OMS_INVENTORY_URL", callback=_check_url, help="The inventory service's base URL."
        ),
    ] = "http://127.0.0.1:8083",
    token: Token = DEFAULT_TOKEN,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
) -> None:
    """Receive the demo stock: one inventory.stock_received.v1 per (sku, source) on oms.inventory.receipts.v1.

    Keyed by sku, published with the OMS producer settings (idempotent, acks=all). Inventory holds receipts for a
    source it has not heard of only for a grace period (then they go to the dead letters), so this first waits until
    inventory lists every source the stock names (GET /sources): run it after `oms demo network`. Each run is a new
    delivery and adds the quantities again."""
    stock, _ = _load(lambda: demo.load_stock(file))
    network, network_path = _load(lambda: demo.load_network(network_file))
    _load(lambda: stock.check_sources(network, network_path))
    if not reference.strip() or len(reference) > 200:
        raise typer.BadParameter("1 to 200 characters", param_hint="--reference")
    receipts = [samples.stock_received(s.sku, s.source_code, s.quantity, reference=reference) for s in stock.stock]
    kafka = _kafka(bootstrap)

    async def publish() -> None:
        await require_topics(kafka, [INVENTORY_RECEIPTS.name], "run `oms topics create` first")
        if wait:
            sources = {line.source_code for line in stock.stock}
            await wait_until_inventory_knows(inventory_url, token, sources, seconds=wait_timeout, echo=typer.echo)
        async with producer(kafka, "oms-demo-stock") as client:
            await asyncio.gather(*(send(client, INVENTORY_RECEIPTS.name, receipt) for receipt in receipts))

    _run(publish, kafka=kafka)
    by_sku: dict[str, list[str]] = {}
    for line in stock.stock:
        by_sku.setdefault(line.sku, []).append(f"{line.source_code} {line.quantity}")
    typer.echo(
        f"published {len(receipts)} receipt(s) ({len(by_sku)} SKU(s)) on {INVENTORY_RECEIPTS.name}, "
        f"reference {reference}"
    )
    for sku, where in by_sku.items():
        typer.echo(f"  {sku:<12} {', '.join(where)}")
    for sku in stock.nowhere_in_stock:
        typer.echo(f"  {sku:<12} nowhere in stock: an order of it is backordered")


# oms demo order ----------------------------------------------------------------------------------------------------


def _parse_lines(values: list[str], catalogue: demo.Catalogue) -> list[tuple[str, int, str]]:
    lines = []
    for value in values:
        sku, sep, qty = value.partition(":")
        sku = sku.strip()
        if sep and not qty.strip().isdigit():
            raise typer.BadParameter(f"{value!r}: the quantity after ':' must be a whole number", param_hint="--sku")
        quantity = int(qty) if sep else 1
        if quantity < 1:
            raise typer.BadParameter(f"{value!r}: quantity must be at least 1", param_hint="--sku")
        if sku not in catalogue.skus:
            known = ", ".join(catalogue.skus)
            raise typer.BadParameter(f"{sku!r} is not in the demo catalogue ({known})", param_hint="--sku")
        lines.append((sku, quantity, format(catalogue.price(sku), "f")))
    return lines


@demo_app.command("order", epilog=EXIT_CODES)
def demo_order(
    external_id: Annotated[
        str | None,
        typer.Option(
            "--external-id",
            show_default="demo-<time>-<random>",
            help="The channel's order number. The same id again is a duplicate submission of the same order.",
        ),
    ] = None,
    channel: Annotated[str, typer.Option("--channel", help="The sales channel publishing the order.")] = "web-eu",
    skus: Annotated[
        list[str] | None,
        typer.Option(
            "--sku",
            metavar="SKU[:QTY]",
            show_default="the catalogue's default_order",
            help="An order line (repeatable); the price comes from the demo catalogue.",
        ),
    ] = None,
    country: Annotated[
        str,
        typer.Option(
            "--country",
            help=f"Ship-to country, one of {', '.join(samples.DEMO_ADDRESSES)} (a demo address in each; no demo source "
            "serves CH).",
        ),
    ] = "DE",
    pay: Annotated[
        bool, typer.Option("--pay/--no-pay", help="Also publish payment_captured for the grand total.")
    ] = True,
    ship_complete: Annotated[
        bool, typer.Option("--ship-complete", help="Ask for one shipment only (never split).")
    ] = False,
    backorder_policy: Annotated[
        BackorderPolicy,
        typer.Option("--backorder-policy", help="deny: lines nowhere in stock are cancelled and refunded."),
    ] = BackorderPolicy.allow,
    catalogue_file: Annotated[
        Path | None,
        typer.Option(
            "--catalogue",
            dir_okay=False,
            show_default=f"{demo.DEFAULT_DIR_SHOWN}/{demo.CATALOGUE_FILE}",
            help="The demo catalogue: SKUs with names and prices.",
        ),
    ] = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    order_url: Annotated[
        str,
        typer.Option(
            "--order-url",
            envvar="OMS_ORDER_URL",
            callback=_check_url,
            help="The order service's base URL (for the read-back line printed).",
        ),
    ] = "http://127.0.0.1:8081",
    token: Token = DEFAULT_TOKEN,
) -> None:
    """Place a demo order as a sales channel: order_submitted, then payment_captured (unless --no-pay).

    Both go to oms.channel.orders.v1 keyed "{channel}:{external_order_id}", in one new trace. Prints the order_id
    (UUIDv5 of that key) and how to read the order back."""
    catalogue, _ = _load(lambda: demo.load_catalogue(catalogue_file))
    country = country.strip().upper()
    if country not in samples.DEMO_ADDRESSES:
        raise typer.BadParameter(
            f"no demo address in {country!r}; one of {', '.join(samples.DEMO_ADDRESSES)}", param_hint="--country"
        )
    lines = _parse_lines(skus or catalogue.default_order or list(catalogue.skus)[:1], catalogue)
    external = external_id or f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    address = samples.DEMO_ADDRESSES[country]
    try:
        submitted = samples.order_submitted(
            external,
            lines,
            channel_name=channel,
            currency=catalogue.currency,
            address=address,
            email=samples.demo_email(address),
            ship_complete=ship_complete,
            backorder_policy=backorder_policy.value,
        )
    except ValidationError as error:
        raise _fail(ToolError(f"the order would not be valid:\n{demo.describe(error)}", INVALID)) from None
    events: list[Any] = [submitted]
    if pay:
        events.append(samples.payment_captured(submitted))
    first = new_traceparent()
    traces = [first, *(new_traceparent(trace_id_of(first)) for _ in events[1:])]
    kafka = _kafka(bootstrap)

    async def publish() -> None:
        await require_topics(kafka, [CHANNEL_ORDERS.name], "run `oms topics create` first")
        async with producer(kafka, f"oms-demo-channel-{channel}"[:100]) as client:
            for event, traceparent in zip(events, traces, strict=True):
                await send(client, CHANNEL_ORDERS.name, event, [("traceparent", traceparent.encode())])

    _run(publish, kafka=kafka)
    d = submitted.data
    names = {sku: item.name for sku, item in catalogue.skus.items()}
    typer.echo(f"order_id     {d.order_id}")
    typer.echo(f"channel      {d.channel}, external order id {d.external_order_id}")
    for line in d.lines:
        typer.echo(f"line {line.line_id:<7} {line.quantity} x {line.sku} ({names[line.sku]}) at {line.unit_price}")
    typer.echo(f"total        {d.currency} {d.grand_total} (shipping {d.shipping_total})")
    a = d.shipping_address
    typer.echo(f"ship to      {a.name}, {a.line1}, {a.postal_code} {a.city}, {a.country}")
    published = " + ".join(e.type.removeprefix("oms.channel.").removesuffix(".v1") for e in events)
    typer.echo(f"published    {published} on {CHANNEL_ORDERS.name}, key {submitted.key()}")
    typer.echo(f"trace_id     {trace_id_of(first)}")
    typer.echo("read it back:")
    typer.echo(f"  curl -H 'Authorization: Bearer {token}' {order_url}/orders/{d.order_id}")


# oms demo ship -----------------------------------------------------------------------------------------------------


@demo_app.command("ship", epilog=EXIT_CODES)
def demo_ship(
    sources: Annotated[
        list[str] | None,
        typer.Option(
            "--source",
            "-s",
            metavar="CODE",
            callback=_check_sources,
            show_default="every source in the demo network",
            help="A source to play (repeatable).",
        ),
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Stop after answering one fulfillment request.")] = False,
    delay: Annotated[
        float, typer.Option("--delay", min=0, max=3600, help="Seconds between accepting and shipping.")
    ] = 0.0,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=0,
            help="Stop after this many seconds (0: never); with --once, no request by then is an error.",
        ),
    ] = 0.0,
    network_file: NetworkPath = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
) -> None:
    """Play the WMS/3PL of fulfillment sources: answer each fulfillment request with accepted, then shipped.

    Each source reads oms.fulfillment.requests.{code}.v1 in its own consumer group (oms-demo-ship-{code}, from the
    earliest request not yet answered) and publishes fulfillment.accepted.v1 and fulfillment.shipped.v1 (carrier,
    tracking number and URL, every line) on oms.fulfillment.updates.v1 keyed by order_id, carrying the request's
    traceparent. Cancel requests are ignored: everything ships at once. Runs until Ctrl-C."""
    codes = list(dict.fromkeys(sources or ())) or _load(lambda: demo.load_network(network_file))[0].codes
    kafka = _kafka(bootstrap)
    shipper = Shipper(kafka, codes, typer.echo, once=once, delay=delay, stop_after=timeout or None)
    _run(shipper.run, kafka=kafka, stoppable=True)
    typer.echo(f"answered {shipper.handled} fulfillment request(s)")


# oms dlq tail ------------------------------------------------------------------------------------------------------


@dlq_app.callback()
def _dlq() -> None:
    """Dead letters on oms.dlq.v1."""


@dlq_app.command("tail", epilog=EXIT_CODES)
def dlq_tail(
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Start with the oldest dead letter kept, not with new ones.")
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Keep waiting for new dead letters (until Ctrl-C).")
    ] = True,
    full: Annotated[bool, typer.Option("--full", help="Print whole payloads, not their first 600 characters.")] = False,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
) -> None:
    """Print dead letters, one block each: where the message came from (original topic, partition, offset), the
    service that gave up on it, the error class and message, its key, event type and payload.

    Reads without a consumer group, so tailing never moves anyone's offsets."""
    count = 0
    kafka = _kafka(bootstrap)

    async def run() -> None:
        nonlocal count
        count = await tail(kafka, typer.echo, from_beginning=from_beginning, follow=follow, full=full)

    _run(run, kafka=kafka, stoppable=True)
    if not follow:
        typer.echo(f"{count} dead letter(s)", err=True)


# oms dlq replay ----------------------------------------------------------------------------------------------------

_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _check_time(value: str | None) -> datetime | None:
    """An RFC 3339 time (UTC when it has no offset), or a duration ago: 30m, 2h, 7d."""
    if value is None:
        return None
    text = value.strip()
    if text[:-1].isdigit() and text[-1:] in _DURATION:
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * _DURATION[text[-1]])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is neither a time (2026-12-01T10:00:00Z) nor a duration ago (2h)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _check_positions(values: list[str] | None) -> list[str] | None:
    for value in values or ():
        partition, sep, offset = value.partition(":")
        if not sep or not partition.isdigit() or not offset.isdigit():
            raise typer.BadParameter(f"{value!r} is not PARTITION:OFFSET of {DEAD_LETTERS.name} (e.g. 2:41)")
    return values


@dlq_app.command("replay", epilog=EXIT_CODES)
def dlq_replay(
    at: Annotated[
        list[str] | None,
        typer.Option(
            "--at",
            metavar="PARTITION:OFFSET",
            callback=_check_positions,
            help="A dead letter's position on oms.dlq.v1, as `oms dlq tail` shows it (repeatable).",
        ),
    ] = None,
    topic: Annotated[str | None, typer.Option("--topic", help="Only dead letters of this original topic.")] = None,
    error_class: Annotated[
        str | None, typer.Option("--error-class", help="Only those dead-lettered with this error class (Refused...).")
    ] = None,
    service: Annotated[str | None, typer.Option("--service", help="Only those the service dead-lettered.")] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only those dead-lettered at or after: a time (RFC 3339) or a duration ago (2h)."),
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Only those dead-lettered before: a time or a duration ago.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be replayed; publish nothing.")] = False,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
) -> None:
    """Publish chosen dead letters again to the topic they came from, after the cause is fixed (a source now known,
    a bug fixed): the original key and value and the original's headers, plus `oms-replayed-from` naming the dead
    letter, with the OMS producer settings (idempotent, acks=all), in the order they were dead-lettered.

    Choose by position (`--at`) and/or by filters, which all must match; at least one is needed. The consumer
    applies a replayed event as new (a dead letter is remembered by its position, not its event) or dead-letters it
    again. A dead letter whose value was cut (over 900 kB) is not replayed: the original is not in it."""
    if not (at or topic or error_class or service or since or until):
        raise typer.BadParameter("choose with --at or a filter (--topic, --error-class, --service, --since, --until)")
    kafka = _kafka(bootstrap)
    selection = dlq.Selection(
        at=frozenset((int(p), int(o)) for p, _, o in (value.partition(":") for value in at or ())),
        original_topic=topic,
        error_class=error_class,
        service=service,
        since=_check_time(since),
        until=_check_time(until),
    )

    async def replay() -> tuple[int, int]:
        letters = await dlq.chosen(kafka, selection)
        existing = await existing_topics(kafka)
        ready: list[ConsumerRecord] = []
        skipped = 0
        for letter in letters:
            why = dlq.why_not_replayable(letter)
            original = dict(letter.headers or ()).get("oms-original-topic", b"").decode("utf-8", "replace")
            if why is None and original not in existing:
                why = f"its topic {original} does not exist on Kafka at {bootstrap}"
            if why is not None:
                typer.echo(f"skipped  {dlq.describe(letter)}: {why}", err=True)
                skipped += 1
            else:
                ready.append(letter)
        if dry_run:
            for letter in ready:
                typer.echo(f"would replay  {dlq.describe(letter)}")
            return len(ready), skipped
        async with producer(kafka, "oms-dlq-replay") as client:
            for letter in ready:
                original = dict(letter.headers).get("oms-original-topic", b"").decode()
                # One at a time, acknowledged, in the order they were dead-lettered: a key's events stay in order.
                await client.send_and_wait(original, letter.value, key=letter.key, headers=dlq.replayed_headers(letter))
                typer.echo(f"replayed  {dlq.describe(letter)}")
        return len(ready), skipped

    result = _run(replay, kafka=kafka)
    done, skipped = result or (0, 0)
    typer.echo(f"{done} dead letter(s) {'would be ' if dry_run else ''}replayed, {skipped} skipped", err=True)


# oms outbox parked / retry / drop -----------------------------------------------------------------------------------

log = logging.getLogger("oms_tools.outbox")

Service = Annotated[
    outbox.ServiceName,
    typer.Option("--service", "-s", case_sensitive=False, help="Whose outbox: the service's own database."),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        show_default=False,
        help="The service's database; by default OMS_<SERVICE>_DATABASE_URL, else OMS_DATABASE_URL, else the local "
        "one of `make run` (the password is never printed).",
    ),
]


@outbox_app.callback()
def _outbox() -> None:
    """Messages a service's outbox relay parked."""


@outbox_app.command("parked", epilog=EXIT_CODES)
def outbox_parked(
    service: Service,
    database_url: DatabaseUrl = None,
    full: Annotated[bool, typer.Option("--full", help="Print whole payloads and keys.")] = False,
) -> None:
    """List the service's parked messages, oldest first: topic, key, event type, the error that parked it, when it
    was written and parked, after how many tries, and its payload."""
    url = outbox.database_url(service, database_url)

    async def read() -> list[Any]:
        async with outbox.transaction(url) as pg:
            return await relay_outbox.parked(pg)

    rows = _run(read) or []
    for row in rows:
        typer.echo(outbox.format_parked(row, full=full))
    typer.echo(f"{len(rows)} parked message(s) in {service.value}'s outbox", err=True)


@outbox_app.command("retry", epilog=EXIT_CODES)
def outbox_retry(
    service: Service,
    ids: Annotated[list[int] | None, typer.Argument(help="Parked message ids (as `oms outbox parked` shows).")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every parked message of the service.")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Put parked messages back into the outbox, after the cause is fixed (the topic created, a limit raised).

    They join the outbox behind everything waiting there, in the order they were parked in, and the running
    service's relay publishes them within a second; one that still cannot be published is parked again."""
    if bool(ids) == every:
        raise typer.BadParameter("name parked message ids, or --all (not both)", param_hint="IDS / --all")
    url = outbox.database_url(service, database_url)

    async def move() -> list[int]:
        async with outbox.transaction(url) as pg:
            return await relay_outbox.retry_parked(pg, None if every else ids)

    moved = _run(move) or []
    if not every and (missing := sorted(set(ids or ()) - set(moved))):
        # The transaction committed what it found: the others were retried or dropped already, or never existed.
        typer.echo(f"no parked message {', '.join(map(str, missing))} in {service.value}'s outbox", err=True)
    typer.echo(
        f"{len(moved)} parked message(s) back in {service.value}'s outbox"
        + (f": {', '.join(map(str, moved))}" if moved else "")
    )
    if not every and not moved:
        raise typer.Exit(FAILED)


@outbox_app.command("drop", epilog=EXIT_CODES)
def outbox_drop(
    service: Service,
    message_id: Annotated[int, typer.Argument(metavar="ID", help="The parked message's id.")],
    reason: Annotated[str, typer.Option("--reason", help="Why it may be lost (kept in the log line).")],
    database_url: DatabaseUrl = None,
) -> None:
    """Delete one parked message for good, saying why. It is never published; the line this prints (and logs) is
    what remains of it."""
    if not reason.strip():
        raise typer.BadParameter("say why the message may be lost", param_hint="--reason")
    url = outbox.database_url(service, database_url)

    async def drop() -> Any:
        async with outbox.transaction(url) as pg:
            return await relay_outbox.drop_parked(pg, message_id)

    row = _run(drop)
    if row is None:
        raise _fail(ToolError(f"no parked message {message_id} in {service.value}'s outbox", FAILED))
    log.warning(
        "dropped parked message %d of %s (topic %s, key %s, %s, %d bytes): %s",
        row["id"],
        service.value,
        row["topic"],
        row["key"],
        row["error_class"],
        len(row["payload"]),
        reason,
    )
    typer.echo(f"dropped parked message {row['id']} of {service.value} ({row['topic']}, key {row['key']}): {reason}")


# oms acl -----------------------------------------------------------------------------------------------------------

_PRINCIPAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MIN_PASSWORD = 12


def _check_principal(value: str | None) -> str | None:
    if value is not None and not _PRINCIPAL.fullmatch(value):
        raise typer.BadParameter(f"{value!r}: a principal is 1 to 100 letters, digits, '.', '_' and '-'")
    return value


Principal = Annotated[
    str | None,
    typer.Option("--principal", callback=_check_principal, help="The SCRAM user name (ACLs name it User:<name>)."),
]
PasswordStdin = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help=f"Read the password (at least {MIN_PASSWORD} characters) from the first line of standard input, instead "
        "of generating one.",
    ),
]
KeepPassword = Annotated[
    bool,
    typer.Option("--keep-password", help="Leave the principal's SCRAM credential as it is; only add the ACLs."),
]


@acl_app.callback()
def _acl() -> None:
    """Principals and ACLs. Runs as the operator: OMS_KAFKA_SECURITY_PROTOCOL, OMS_KAFKA_SASL_USERNAME and
    OMS_KAFKA_SASL_PASSWORD of a super user (the broker's admin)."""


def _password(from_stdin: bool, keep: bool) -> tuple[str | None, bool]:
    """The password to set (None: keep the credential) and whether it was generated here."""
    if keep:
        if from_stdin:
            raise typer.BadParameter("either --keep-password or --password-stdin", param_hint="--keep-password")
        return None, False
    if not from_stdin:
        return acl.new_password(), True
    password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < MIN_PASSWORD:
        raise typer.BadParameter(
            f"the first line of standard input must hold a password of at least {MIN_PASSWORD} characters",
            param_hint="--password-stdin",
        )
    return password, False


def _grant(kafka: KafkaSettings, principal: str, password: str | None, acls: list[acl.Acl]) -> None:
    async def grant() -> None:
        async with admin(kafka) as client:
            if password is not None:
                await acl.upsert_scram_user(client, principal, password)
            await acl.create_acls(client, acls)

    _run(grant, kafka=kafka)


def _report(kafka: KafkaSettings, principal: str, password: str | None, generated: bool, acls: list[acl.Acl]) -> None:
    protocol = kafka.kafka_security_protocol if kafka.kafka_security_protocol.startswith("SASL_") else "SASL_SSL"
    typer.echo(f"principal  User:{principal} (SCRAM-SHA-512)")
    if password is None:
        typer.echo("password   unchanged")
    elif generated:
        typer.echo(f"password   {password}")
        typer.echo("           shown once: hand it over now over a safe channel (--password-stdin sets your own)")
    else:
        typer.echo("password   set from standard input")
    typer.echo(
        f"connect    bootstrap.servers={kafka.kafka_bootstrap} security.protocol={protocol} "
        "sasl.mechanism=SCRAM-SHA-512"
    )
    typer.echo(f"ACLs ({len(acls)}, ALLOW from any host):")
    for entry in acls:
        typer.echo(f"  {entry.describe()}")


@acl_app.command("grant-source", epilog=EXIT_CODES)
def acl_grant_source(
    source: Annotated[str, typer.Argument(metavar="SOURCE_CODE", help="The source's code in the network.")],
    principal: Principal = None,
    password_stdin: PasswordStdin = False,
    keep_password: KeepPassword = False,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
) -> None:
    """Onboard a fulfillment source (a 3PL, a WMS, a dropshipper): a SCRAM principal, READ on its own request topic
    oms.fulfillment.requests.{SOURCE_CODE}.v1 in consumer groups named `{principal}.*`, WRITE on
    oms.fulfillment.updates.v1. Nothing else: no other source's requests, no order events, no channel orders.

    The principal defaults to the source code in lower case. Idempotent: run it again to rotate the password (or
    with --keep-password to only restore the ACLs)."""
    _check_sources([source])
    who = principal or source.lower()
    _check_principal(who)
    password, generated = _password(password_stdin, keep_password)
    kafka = _kafka(bootstrap)
    acls = acl.source_acls(source, who)
    _grant(kafka, who, password, acls)
    typer.echo(f"source     {source}: reads {fulfillment_requests(source).name} in groups {acl.group_prefix(who)}*")
    _report(kafka, who, password, generated, acls)


@acl_app.command("grant-service", epilog=EXIT_CODES)
def acl_grant_service(
    service: Annotated[
        str, typer.Argument(metavar="SERVICE", help=f"One of {', '.join(acl.SERVICES)}.", show_default=False)
    ],
    principal: Principal = None,
    password_stdin: PasswordStdin = False,
    keep_password: KeepPassword = False,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
) -> None:
    """Give an OMS service its principal (default oms-SERVICE) and exactly the ACLs its code needs: READ on the topics
    it consumes in groups `oms-SERVICE.*`, WRITE on the topics its outbox publishes to (the dead letters included);
    order WRITE on every source's request topic, routing CREATE on them. Start the service with
    OMS_KAFKA_SECURITY_PROTOCOL, OMS_KAFKA_SASL_USERNAME and OMS_KAFKA_SASL_PASSWORD."""
    if service not in acl.SERVICES:
        raise typer.BadParameter(f"{service!r} is not one of {', '.join(acl.SERVICES)}", param_hint="SERVICE")
    who = principal or acl.service_principal(service)
    password, generated = _password(password_stdin, keep_password)
    kafka = _kafka(bootstrap)
    acls = acl.service_acls(service, who)
    _grant(kafka, who, password, acls)
    _report(kafka, who, password, generated, acls)


@acl_app.command("show", epilog=EXIT_CODES)
def acl_show(principal: Principal = None, bootstrap: Bootstrap = DEFAULT_BOOTSTRAP) -> None:
    """List the SCRAM users and the ACLs on the broker (or those of one principal)."""
    kafka = _kafka(bootstrap)

    async def read() -> tuple[dict[str, list[str]], list[acl.Acl]]:
        async with admin(kafka) as client:
            return await acl.scram_users(client), await acl.describe_acls(client, principal)

    users, acls = _run(read, kafka=kafka)
    if principal is not None:
        users = {name: mechanisms for name, mechanisms in users.items() if name == principal}
    typer.echo(f"SCRAM users ({len(users)}):")
    for name, mechanisms in users.items():
        typer.echo(f"  User:{name:<23} {', '.join(mechanisms)}")
    typer.echo(f"ACLs ({len(acls)}):")
    for entry in acls:
        typer.echo(f"  {entry.describe()}")


# oms trace ---------------------------------------------------------------------------------------------------------

_SERVICES_TRACED = ("oms-order", "oms-routing", "oms-inventory", "oms-notifications")


def _check_order_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an order id (a UUID)") from None


@app.command("trace", epilog=EXIT_CODES)
def trace_order(
    order_id: Annotated[str, typer.Argument(callback=_check_order_id, help="The order's id (a UUID).")],
    files: Annotated[
        list[Path] | None,
        typer.Option(
            "--file",
            "-f",
            dir_okay=False,
            show_default="$OMS_TRACE_FILE, else .cache/run/traces.jsonl (make run's)",
            help="A trace file the services write (OMS_TRACE_FILE: one JSON span per line); repeat for several.",
        ),
    ] = None,
    jaeger_url: Annotated[
        str | None,
        typer.Option(
            "--jaeger-url",
            envvar="OMS_JAEGER_URL",
            callback=lambda v: _check_url(v) if v else v,
            help="Read the trace from Jaeger's HTTP query API instead (e.g. http://localhost:16686).",
        ),
    ] = None,
    width: Annotated[int | None, typer.Option("--width", min=40, help="Columns (default: the terminal's).")] = None,
) -> None:
    """Print one order's trace as a waterfall: each span's service, operation, start offset, duration and error,
    indented under its parent, with how long each message waited in its topic before the next service took it.

    From the trace files it also shows the batches that applied the order's messages, with their database
    transactions and statements, and the HTTP requests about the order."""
    if jaeger_url:
        try:
            spans = trace.read_jaeger(jaeger_url, order_id, _SERVICES_TRACED)
        except httpx.HTTPError as error:
            raise _fail(ToolError(f"Jaeger at {jaeger_url}: {error}", UNREACHABLE)) from None
        where = jaeger_url
    else:
        default = os.environ.get("OMS_TRACE_FILE") or ".cache/run/traces.jsonl"
        paths = files or [Path(default)]
        for path in paths:
            if not path.is_file():
                raise _fail(
                    ToolError(f"no trace file {path} (the services write it where OMS_TRACE_FILE says)", INVALID)
                )
        spans = trace.read_files(paths, order_id)
        where = ", ".join(map(str, paths))
    if not spans:
        raise _fail(ToolError(f"no spans of order {order_id} in {where}", FAILED))
    typer.echo(trace.waterfall(order_id, spans, width))
