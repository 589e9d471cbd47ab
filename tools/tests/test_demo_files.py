"""deploy/demo: the network, stock and catalogue are valid against the contracts and tell the demo's stories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oms_contracts import order_id_for
from oms_contracts.channel import OrderSubmitted, PaymentCaptured
from oms_contracts.common import SourceType
from oms_contracts.routing import Source
from oms_contracts.topics import CHANNEL_ORDERS
from oms_tools import demo, samples
from oms_tools.errors import INVALID, ToolError

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "demo"


@pytest.fixture(scope="module")
def raw_network() -> dict:
    return json.loads((DEMO / "network.json").read_text())


@pytest.fixture(scope="module")
def network() -> demo.NetworkFile:
    return demo.load_network(DEMO / "network.json")[0]


@pytest.fixture(scope="module")
def stock() -> demo.StockFile:
    return demo.load_stock(DEMO / "stock.json")[0]


@pytest.fixture(scope="module")
def catalogue() -> demo.Catalogue:
    return demo.load_catalogue(DEMO / "catalogue.json")[0]


def test_every_source_is_a_valid_routing_source(raw_network: dict) -> None:
    for raw in raw_network["sources"]:
        assert set(raw) <= set(Source.model_fields), f"{raw['code']}: fields the contract does not know"
        source = Source.model_validate(raw)
        # Money travels as decimal strings, never floats.
        assert isinstance(raw["cost_per_shipment"], str)
        assert isinstance(raw["cost_per_unit"], str)
        assert source.active
        assert source.handling_days >= 0


def test_the_network_has_every_kind_of_source(network: demo.NetworkFile) -> None:
    by_code = {s.code: s for s in network.sources}
    expected = {
        "WH-EAST": SourceType.warehouse,
        "WH-WEST": SourceType.warehouse,
        "STORE-MUC": SourceType.store,
        "3PL-NL": SourceType.third_party_logistics,
        "DROP-ACME": SourceType.dropship,
    }
    for code, kind in expected.items():
        assert by_code[code].type is kind
    assert "Berlin" in by_code["WH-EAST"].name
    assert "München" in by_code["STORE-MUC"].name
    assert "Venlo" in by_code["3PL-NL"].name
    served = {country for s in network.sources for country in s.countries}
    assert {"DE", "AT", "NL", "FR", "BE"} <= served
    assert len({s.priority for s in network.sources}) > 1


def test_stock_only_at_sources_of_the_network(stock: demo.StockFile, network: demo.NetworkFile) -> None:
    codes = set(network.codes)
    for line in stock.stock:
        assert line.source_code in codes, line
    stock.check_sources(network, DEMO / "network.json")


def test_catalogue_and_stock_agree(stock: demo.StockFile, catalogue: demo.Catalogue) -> None:
    stocked = {line.sku for line in stock.stock}
    for sku in catalogue.skus:
        assert sku in stocked or sku in stock.nowhere_in_stock, f"{sku} is neither stocked nor deliberately absent"
    assert stocked <= set(catalogue.skus), "stock of SKUs nobody can order"
    assert stock.nowhere_in_stock, "one SKU must be out of stock everywhere, so that a demo order is backordered"
    assert set(stock.nowhere_in_stock) <= set(catalogue.skus)
    assert not set(stock.nowhere_in_stock) & stocked
    assert 6 <= len(catalogue.skus) <= 12
    assert catalogue.currency == "EUR"


def _sources_that_ship(order: list[str], stock: demo.StockFile, network: demo.NetworkFile, country: str) -> set[str]:
    """The sources that could ship every line of `order` (SKU:QTY) to `country` alone."""
    have = {(line.sku, line.source_code): line.quantity for line in stock.stock}
    wanted = [(line.partition(":")[0], int(line.partition(":")[2] or 1)) for line in order]
    return {
        s.code
        for s in network.sources
        if country in s.countries and all(have.get((sku, s.code), 0) >= qty for sku, qty in wanted)
    }


def test_the_stock_tells_the_demo_stories(
    stock: demo.StockFile, network: demo.NetworkFile, catalogue: demo.Catalogue
) -> None:
    # The default demo order fits one warehouse.
    assert "WH-EAST" in _sources_that_ship(catalogue.default_order, stock, network, "DE")
    # Some orders fit another warehouse only, not the one nearest Berlin.
    other = _sources_that_ship(["PACK-45L:1", "BOTTLE-1L:2"], stock, network, "DE")
    assert "WH-WEST" in other and "WH-EAST" not in other
    # Some need two sources.
    assert not _sources_that_ship(["MAT-PAD:5", "PACK-45L:1"], stock, network, "DE")
    # The 3PL alone ships this one to the Netherlands.
    assert _sources_that_ship(["STOVE-GAS:2", "BAG-SLEEP:1"], stock, network, "NL") == {"3PL-NL"}
    # A big tent order only the dropship supplier can take.
    assert _sources_that_ship(["TENT-2P:30"], stock, network, "DE") == {"DROP-ACME"}
    # And nobody has the out-of-stock SKU.
    for sku in stock.nowhere_in_stock:
        assert not _sources_that_ship([f"{sku}:1"], stock, network, "DE")


def test_every_demo_address_is_valid_and_the_demo_order_adds_up(catalogue: demo.Catalogue) -> None:
    lines = [(sku, 1, format(item.unit_price, "f")) for sku, item in catalogue.skus.items()]
    for country, address in samples.DEMO_ADDRESSES.items():
        assert address.country == country
        submitted = samples.order_submitted("files-1", lines, address=address, email=samples.demo_email(address))
        assert submitted.data.grand_total == submitted.data.subtotal + submitted.data.shipping_total


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ('{"sources": []}', "sources: List should have at least 1 item"),
        (
            '{"sources": [{"code": "A", "name": "A", "type": "warehouse", "lat": 1, "lon": 1, "countries": ["DE"],'
            ' "cost_per_shipment": 4.5, "cost_per_unit": "0"}]}',
            "sources[0].cost_per_shipment: money must be a decimal string",
        ),
        (
            '{"sources": [{"code": "A", "name": "A", "type": "warehouse", "lat": 1, "lon": 1, "countries": ["XX"],'
            ' "cost_per_shipment": "1", "cost_per_unit": "0", "prio": 1}]}',
            "unknown field(s) prio",
        ),
        (
            '{"sources": [{"code": "A", "name": "A", "type": "shop", "lat": 1, "lon": 1, "countries": ["DE"],'
            ' "cost_per_shipment": "1", "cost_per_unit": "0"}]}',
            "sources[0].type",
        ),
    ],
)
def test_a_broken_network_file_is_refused_with_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "network.json"
    path.write_text(text)
    with pytest.raises(ToolError) as refused:
        demo.load_network(path)
    assert refused.value.exit_code == INVALID
    assert str(path) in refused.value.message
    assert message in refused.value.message


def test_duplicate_codes_and_unknown_stock_sources_are_refused(tmp_path: Path, network: demo.NetworkFile) -> None:
    doubled = {"sources": [network.body()["sources"][0]] * 2}
    path = tmp_path / "network.json"
    path.write_text(json.dumps(doubled))
    with pytest.raises(ToolError, match="duplicate source code WH-EAST"):
        demo.load_network(path)

    stock_path = tmp_path / "stock.json"
    stock_path.write_text(json.dumps({"stock": [{"sku": "X", "source_code": "WH-NOWHERE", "quantity": 1}]}))
    stock = demo.load_stock(stock_path)[0]
    with pytest.raises(ToolError, match="WH-NOWHERE not in the network"):
        stock.check_sources(network, DEMO / "network.json")

    stock_path.write_text(json.dumps({"stock": [{"sku": "X", "source_code": "A", "quantity": 0}]}))
    with pytest.raises(ToolError, match=r"stock\[0\].quantity"):
        demo.load_stock(stock_path)

    with pytest.raises(ToolError, match="no such file"):
        demo.load_catalogue(tmp_path / "missing.json")


def test_the_sample_channel_messages_are_valid(catalogue: demo.Catalogue) -> None:
    """deploy/demo/order.json and payment.json: what a channel publishes by hand (kcat -k 'web-eu:1001')."""
    submitted = CHANNEL_ORDERS.parse((DEMO / "order.json").read_bytes())
    paid = CHANNEL_ORDERS.parse((DEMO / "payment.json").read_bytes())
    assert isinstance(submitted, OrderSubmitted)
    assert isinstance(paid, PaymentCaptured)
    assert submitted.key() == paid.key() == "web-eu:1001"
    assert submitted.subject == paid.subject == str(order_id_for("web-eu", "1001"))
    for line in submitted.data.lines:
        assert line.unit_price == catalogue.price(line.sku)
    assert (paid.data.amount, paid.data.currency) == (submitted.data.grand_total, submitted.data.currency)
    assert submitted.id != paid.id


def test_an_expected_receipt_sample_travels_on_the_receipts_topic_keyed_by_its_sku() -> None:
    from datetime import date

    from oms_contracts.inventory import ReceiptExpected
    from oms_contracts.topics import INVENTORY_RECEIPTS, topic_for

    announced = samples.receipt_expected("TENT-2P", "WH-EAST", 20, date(2026, 12, 4), reference="PO-77")
    parsed = INVENTORY_RECEIPTS.parse(announced.to_bytes())
    assert isinstance(parsed, ReceiptExpected)
    assert (topic_for(announced), announced.key()) == (INVENTORY_RECEIPTS.name, "TENT-2P")
    assert (parsed.data.quantity, parsed.data.expected_date, parsed.data.reference) == (20, date(2026, 12, 4), "PO-77")
