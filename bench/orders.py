"""What the benchmark's channels sell and where it is stocked, and the orders they place: deterministic from a seed.

The bench loads its own demo directory into the system (the demo network, a catalogue of BENCH SKUs, and stock of
every SKU at the two warehouses and the 3PL, far more than any sweep orders): every order is valid and in stock, so
every order travels the whole happy path (accepted, paid, planned, reserved, requested, shipped, mailed) and the
benchmark measures that path, not backorders."""

from __future__ import annotations

import json
import random
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from oms_contracts.common import ORDER_NAMESPACE
from oms_tools import samples

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "deploy" / "demo"

SKUS = 200
STOCKED_AT = ("WH-EAST", "WH-WEST", "3PL-NL")
UNITS = 10_000_000
CHANNELS = ("web-eu", "marketplace", "pos-berlin", "b2b-edi")
# Countries some stocking source ships to (CH has none): DE most often, as a German shop's orders would be.
COUNTRIES = ("DE", "DE", "DE", "DE", "AT", "NL", "BE", "FR", "PL", "DK", "LU")


def sku(i: int) -> str:
    return f"BENCH-{i:04d}"


def price(i: int) -> str:
    return f"{5 + (i * 37) % 120}.{(i * 13) % 100:02d}"


def write_demo_dir(target: Path) -> Path:
    """deploy/demo's network, with the bench's catalogue and stock: what `oms demo network|stock` then load."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEMO / "network.json", target / "network.json")
    catalogue = {
        "description": "The benchmark's catalogue (bench/orders.py)",
        "currency": "EUR",
        "skus": {sku(i): {"name": f"Bench item {i}", "unit_price": price(i)} for i in range(SKUS)},
        "default_order": [sku(0)],
    }
    stock = {
        "description": "Every bench SKU at both warehouses and the 3PL, more than any sweep orders (bench/orders.py)",
        "stock": [{"sku": sku(i), "source_code": code, "quantity": UNITS} for i in range(SKUS) for code in STOCKED_AT],
    }
    (target / "catalogue.json").write_text(json.dumps(catalogue, indent=1))
    (target / "stock.json").write_text(json.dumps(stock, indent=1))
    return target


@dataclass(frozen=True, slots=True)
class Order:
    key: bytes  # {channel}:{external_order_id}
    order_id: uuid.UUID
    submitted: bytes
    payment: bytes


def order_id(key: str) -> uuid.UUID:
    """DESIGN.md: UUIDv5 of the namespace and "{channel}:{external_order_id}"."""
    return uuid.uuid5(ORDER_NAMESPACE, key)


def channel_names(n: int) -> list[str]:
    """The first `n` channels: the four named ones, then channel-5, channel-6 ..."""
    return [*CHANNELS, *(f"channel-{i}" for i in range(len(CHANNELS) + 1, n + 1))][:n]


def keys(tag: str, count: int, seed: int, channels: int = len(CHANNELS)) -> list[str]:
    """The record keys of a point's orders, in submission order (cheap: the collector needs only these). Each order
    comes from one of `channels` channels, drawn at random."""
    names = channel_names(channels)
    rng = random.Random(seed)
    return [f"{rng.choice(names)}:{tag}-{i}" for i in range(count)]


def build(tag: str, count: int, seed: int, channels: int = len(CHANNELS)) -> list[Order]:
    """`count` valid orders of one to three lines over the bench SKUs, with their payments, as channels publish them.
    Same tag, count and seed: same orders (event ids included; only the placed_at/time stamps differ)."""
    content = random.Random(seed + 1)
    id_space = uuid.uuid5(uuid.NAMESPACE_URL, f"oms-bench:{tag}:{seed}")
    out = []
    for i, key in enumerate(keys(tag, count, seed, channels)):
        channel, _, external = key.partition(":")
        country = content.choice(COUNTRIES)
        address = samples.DEMO_ADDRESSES[country]
        picked = content.sample(range(SKUS), content.choice((1, 1, 2, 2, 3)))
        lines = [(sku(s), content.choice((1, 1, 1, 2, 3)), price(s)) for s in picked]
        submitted = samples.order_submitted(
            external, lines, channel_name=channel, address=address, email=samples.demo_email(address)
        ).model_copy(update={"id": uuid.uuid5(id_space, f"{i}:submitted")})
        payment = samples.payment_captured(submitted).model_copy(update={"id": uuid.uuid5(id_space, f"{i}:paid")})
        out.append(Order(key.encode(), submitted.data.order_id, submitted.to_bytes(), payment.to_bytes()))
    return out
