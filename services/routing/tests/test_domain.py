"""The routing rules, in memory: which source ships, and why."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oms_contracts.common import Address, BackorderPolicy, Line, OrderOptions, ShippingMethod, SourceType
from oms_contracts.order import OrderPaidData
from oms_contracts.routing import Source
from oms_routing.domain import (
    DEFAULT_CHAIN,
    TRANSIT_DAYS,
    Availability,
    PlanRequest,
    RoutedOrder,
    Rule,
    candidates,
    distance_km,
    duplicate_codes,
    network_change,
    plan,
    plan_all,
    rank,
    units_by_sku,
)

NOW = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
MAX_ATTEMPTS = 3


def plan_now(request, network, stock, **kw):
    return plan(request, network, stock, planned_at=NOW, max_attempts=MAX_ATTEMPTS, **kw)


def first(order: OrderPaidData) -> PlanRequest:
    return RoutedOrder(order).first_plan()


def stock(levels: dict[tuple[str, str], int]) -> Availability:
    return Availability(levels)


# --- examples ------------------------------------------------------------------------------------------------------


def test_haversine_distance_between_berlin_and_munich_is_about_504_km():
    assert distance_km(52.517, 13.389, 48.137, 11.575) == pytest.approx(504, abs=2)
    assert distance_km(52.517, 13.389, 52.517, 13.389) == 0


def test_two_lines_of_one_sku_need_their_sum_from_one_source(make_source, make_order):
    order = make_order(uuid.uuid4(), [("1", "SKU-1", 2), ("2", "SKU-1", 3)])
    network = [make_source("WH-1")]
    assert units_by_sku(order.lines) == {"SKU-1": 5}
    assert plan_now(first(order), network, stock({("WH-1", "SKU-1"): 4})).backordered_lines
    assert plan_now(first(order), network, stock({("WH-1", "SKU-1"): 5})).shipments


def test_own_warehouse_beats_a_nearer_cheaper_dropship_supplier_that_also_has_everything(make_source, make_order):
    order = make_order(uuid.uuid4(), [("1", "SKU-1", 1)])
    network = [
        make_source("DS-NEAR", SourceType.dropship, cost_per_shipment=Decimal("0"), cost_per_unit=Decimal("0")),
        make_source("WH-FAR", lat=48.137, lon=11.575, priority=9000),
    ]
    made = plan_now(first(order), network, stock({("DS-NEAR", "SKU-1"): 9, ("WH-FAR", "SKU-1"): 9}))
    assert [s.source_code for s in made.shipments] == ["WH-FAR"]


def test_store_and_3pl_come_between_own_warehouse_and_dropship(make_source, make_order):
    order = make_order(uuid.uuid4(), [("1", "SKU-1", 1)])
    network = [
        make_source("A-DS", SourceType.dropship),
        make_source("B-3PL", SourceType.third_party_logistics),
        make_source("C-STORE", SourceType.store),
    ]
    levels = {(s.code, "SKU-1"): 1 for s in network}
    assert [c.source.code for c in rank(candidates(order, {"SKU-1": 1}, network, stock(levels)))] == [
        "C-STORE",
        "B-3PL",
        "A-DS",
    ]


def test_nearer_warehouse_wins_among_otherwise_equal_ones(make_source, make_order):
    order = make_order(uuid.uuid4(), [("1", "SKU-1", 1)])
    network = [make_source("WH-MUNICH", lat=48.137, lon=11.575), make_source("WH-POTSDAM", lat=52.39, lon=13.06)]
    made = plan_now(first(order), network, stock({("WH-MUNICH", "SKU-1"): 5, ("WH-POTSDAM", "SKU-1"): 5}))
    assert made.shipments[0].source_code == "WH-POTSDAM"


def test_cost_then_priority_then_code_break_ties_when_distance_is_unknown(make_source, make_order):
    address = Address(name="Ada", line1="Somewhere 1", city="Berlin", country="DE")
    order = make_order(uuid.uuid4(), [("1", "SKU-1", 2)], shipping_address=address)
    network = [
        make_source("WH-C", cost_per_unit=Decimal("0.40"), priority=5),
        make_source("WH-B", cost_per_unit=Decimal("0.40"), priority=1),
        make_source("WH-A", cost_per_unit=Decimal("0.40"), priority=1),
        make_source("WH-EXPENSIVE", cost_per_unit=Decimal("9"), priority=0),
    ]
    levels = {(s.code, "SKU-1"): 2 for s in network}
    ranked = rank(candidates(order, {"SKU-1": 2}, network, stock(levels)))
    assert [c.source.code for c in ranked] == ["WH-A", "WH-B", "WH-C", "WH-EXPENSIVE"]
    assert ranked[0].distance_km is None
    assert ranked[0].cost == Decimal("4.80")


def test_a_rule_chain_is_data_and_reorders_the_ranking(make_source, make_order):
    order = make_order(uuid.uuid4(), [("1", "SKU-1", 1)])
    network = [make_source("WH-FAR", lat=48.137, lon=11.575), make_source("DS-NEAR", SourceType.dropship)]
    levels = {(s.code, "SKU-1"): 1 for s in network}
    nearest_first = (Rule.distance, *DEFAULT_CHAIN)
    made = plan_now(first(order), network, stock(levels), chain=nearest_first)
    assert made.shipments[0].source_code == "DS-NEAR"


def test_reason_names_source_kind_items_and_distance(make_source, make_order):
    order = make_order(uuid.uuid4(), [("1", "SKU-1", 1), ("2", "SKU-2", 1), ("3", "SKU-3", 1)])
    network = [make_source("WH-EAST", lat=52.517 + 212 / 111.2, lon=13.389)]
    made = plan_now(first(order), network, stock({("WH-EAST", f"SKU-{i}"): 1 for i in (1, 2, 3)}))
    assert made.shipments[0].reason == "WH-EAST: own warehouse with all 3 items, 212 km"


def test_reason_omits_distance_when_the_address_has_no_coordinates(make_source, make_order):
    address = Address(name="Ada", line1="Somewhere 1", city="Berlin", country="DE")
    order = make_order(uuid.uuid4(), [("1", "SKU-1", 1)], shipping_address=address)
    made = plan_now(first(order), [make_source("DS-1", SourceType.dropship)], stock({("DS-1", "SKU-1"): 1}))
    assert made.shipments[0].reason == "DS-1: dropship supplier with the item"


def test_dates_add_handling_days_then_transit_days_of_the_shipping_method(make_source, make_order):
    order = make_order(uuid.uuid4(), [("1", "SKU-1", 1)], shipping_method=ShippingMethod.express)
    made = plan_now(first(order), [make_source("WH-1", handling_days=2)], stock({("WH-1", "SKU-1"): 1}))
    shipment = made.shipments[0]
    assert shipment.estimated_ship_date == date(2026, 11, 25)
    assert shipment.estimated_delivery_date == date(2026, 11, 26)
    assert (made.planned_at, made.attempt, made.order_id) == (NOW, 1, order.order_id)


def test_one_shipment_carries_every_line_of_the_order(make_source, make_order):
    order = make_order(uuid.uuid4(), [("1", "SKU-1", 2), ("2", "SKU-2", 1)])
    made = plan_now(first(order), [make_source("WH-1")], stock({("WH-1", "SKU-1"): 2, ("WH-1", "SKU-2"): 1}))
    assert len(made.shipments) == 1
    assert made.shipments[0].lines == order.lines
    assert made.shipments[0].source_type is SourceType.warehouse
    assert not made.backordered_lines and not made.unfulfillable_lines


def test_without_a_source_that_has_every_line_every_line_is_backordered(make_source, make_order):
    order = make_order(uuid.uuid4(), [("1", "SKU-1", 1), ("2", "SKU-2", 1), ("3", "SKU-3", 1)])
    # Each source has some lines, none has all: the skeleton engine does not split.
    network = [make_source("WH-1"), make_source("WH-2")]
    made = plan_now(first(order), network, stock({("WH-1", "SKU-1"): 5, ("WH-2", "SKU-2"): 5, ("WH-2", "SKU-3"): 5}))
    assert made.shipments == []
    assert [(ln.line_id, ln.reason) for ln in made.backordered_lines] == [
        ("1", "no source has all 3 items"),
        ("2", "no source has all 3 items"),
        ("3", "no source has all 3 items"),
    ]


def test_backorder_policy_deny_makes_missing_lines_unfulfillable_instead(make_source, make_order):
    order = make_order(uuid.uuid4(), [("1", "SKU-1", 1)], options=OrderOptions(backorder_policy=BackorderPolicy.deny))
    made = plan_now(first(order), [make_source("WH-1")], stock({}))
    assert made.backordered_lines == []
    assert [(ln.line_id, ln.sku, ln.quantity, ln.reason) for ln in made.unfulfillable_lines] == [
        ("1", "SKU-1", 1, "no source has the item")
    ]


def test_sources_that_do_not_ship_to_the_country_inactive_or_excluded_are_never_candidates(make_source, make_order):
    order = make_order(uuid.uuid4(), [("1", "SKU-1", 1)])
    network = [
        make_source("WH-FR", countries=["FR"]),
        make_source("WH-OFF", active=False),
        make_source("WH-REJECTED"),
        make_source("DS-OK", SourceType.dropship, countries=["FR", "DE"]),
    ]
    levels = {(s.code, "SKU-1"): 5 for s in network}
    found = candidates(order, {"SKU-1": 1}, network, stock(levels), frozenset({"WH-REJECTED"}))
    assert [c.source.code for c in found] == ["DS-OK"]


def test_pickup_is_planned_only_at_the_pickup_source_wherever_the_address_is(make_source, make_order):
    order = make_order(
        uuid.uuid4(),
        [("1", "SKU-1", 1)],
        shipping_method=ShippingMethod.pickup,
        pickup_source="STORE-VIENNA",
    )
    network = [make_source("WH-1"), make_source("STORE-VIENNA", SourceType.store, countries=["AT"])]
    made = plan_now(first(order), network, stock({("WH-1", "SKU-1"): 5, ("STORE-VIENNA", "SKU-1"): 1}))
    shipment = made.shipments[0]
    assert shipment.source_code == "STORE-VIENNA"
    assert shipment.reason == "STORE-VIENNA: pickup at store with the item"
    assert shipment.estimated_delivery_date == shipment.estimated_ship_date


def test_pickup_source_without_the_stock_backorders_rather_than_ship_from_elsewhere(make_source, make_order):
    order = make_order(
        uuid.uuid4(), [("1", "SKU-1", 1)], shipping_method=ShippingMethod.pickup, pickup_source="STORE-1"
    )
    network = [make_source("WH-1"), make_source("STORE-1", SourceType.store)]
    made = plan_now(first(order), network, stock({("WH-1", "SKU-1"): 5}))
    assert made.shipments == []
    assert made.backordered_lines[0].reason == "pickup source STORE-1 cannot ship the item"


def test_a_rejection_excludes_the_source_and_counts_one_more_attempt(make_source, make_order):
    order = make_order(uuid.uuid4(), [("1", "SKU-1", 1), ("2", "SKU-2", 1)])
    routed, request = RoutedOrder(order).rejected("WH-EAST", order.lines[:1])
    assert (routed.attempts, routed.excluded) == (2, frozenset({"WH-EAST"}))
    assert (request.attempt, request.excluded, request.lines) == (2, frozenset({"WH-EAST"}), (order.lines[0],))
    routed, request = routed.rejected("WH-WEST", order.lines[:1])
    assert (request.attempt, request.excluded) == (3, frozenset({"WH-EAST", "WH-WEST"}))

    network = [make_source("WH-EAST"), make_source("WH-WEST"), make_source("WH-NORTH", lat=54.3, lon=10.1)]
    made = plan_now(request, network, stock({(s.code, "SKU-1"): 5 for s in network}))
    assert made.attempt == 3
    assert made.shipments[0].source_code == "WH-NORTH"
    assert made.shipments[0].lines == [order.lines[0]]
    assert made.shipments[0].reason.endswith("; rejected by WH-EAST, WH-WEST")


def test_after_the_last_attempt_the_replan_backorders_even_with_a_source_left(make_source, make_order):
    order = make_order(uuid.uuid4(), [("1", "SKU-1", 1)])
    request = PlanRequest(order, tuple(order.lines), attempt=MAX_ATTEMPTS + 1, excluded=frozenset({"WH-1"}))
    made = plan_now(request, [make_source("WH-2")], stock({("WH-2", "SKU-1"): 5}))
    assert made.shipments == []
    assert made.backordered_lines[0].reason == "no source left for the item after 3 attempts; rejected by WH-1"


def test_a_batch_never_promises_the_same_unit_twice(make_source, make_order):
    network = [make_source("WH-1"), make_source("DS-1", SourceType.dropship)]
    orders = [make_order(uuid.uuid4(), [("1", "SKU-1", 1)]) for _ in range(3)]
    made = plan_all([first(o) for o in orders], network, stock({("WH-1", "SKU-1"): 1, ("DS-1", "SKU-1"): 1}),
                    planned_at=NOW, max_attempts=MAX_ATTEMPTS)  # fmt: skip
    assert [[s.source_code for s in p.shipments] for p in made] == [["WH-1"], ["DS-1"], []]
    assert len(made[2].backordered_lines) == 1


def test_replacing_the_network_upserts_new_and_changed_and_deactivates_the_unlisted_active(make_source):
    current = [
        make_source("KEEP"),
        make_source("CHANGE"),
        make_source("DROP"),
        make_source("GONE", active=False),
    ]
    wanted = [make_source("KEEP"), make_source("CHANGE", priority=1), make_source("NEW")]
    change = network_change(current, wanted)
    assert [s.code for s in change.upserted] == ["CHANGE", "NEW"]
    assert change.deactivated == ["DROP"]


def test_duplicate_codes_are_named(make_source):
    assert duplicate_codes([make_source("A"), make_source("B"), make_source("A")]) == ["A"]
    assert duplicate_codes([make_source("A")]) == []


# --- invariants ----------------------------------------------------------------------------------------------------

CODES = ["WH-1", "WH-2", "ST-1", "3P-1", "DS-1", "DS-2"]
SKUS = ["SKU-A", "SKU-B", "SKU-C"]
COUNTRIES = ["DE", "AT", "FR"]

coordinates = st.tuples(st.floats(-60, 70), st.floats(-179, 179))


@st.composite
def networks(draw) -> list[Source]:
    codes = draw(st.lists(st.sampled_from(CODES), unique=True, min_size=0, max_size=len(CODES)))
    network = []
    for code in codes:
        lat, lon = draw(coordinates)
        network.append(
            Source(
                code=code,
                name=code,
                type=draw(st.sampled_from(list(SourceType))),
                lat=lat,
                lon=lon,
                countries=draw(st.lists(st.sampled_from(COUNTRIES), unique=True, min_size=1)),
                priority=draw(st.integers(0, 3)),
                cost_per_shipment=Decimal(draw(st.integers(0, 5))),
                cost_per_unit=Decimal(draw(st.integers(0, 3))) / 2,
                handling_days=draw(st.integers(0, 3)),
                active=draw(st.booleans()),
            )
        )
    return network


@st.composite
def orders(draw) -> OrderPaidData:
    lines = [
        Line(line_id=str(i), sku=draw(st.sampled_from(SKUS)), quantity=draw(st.integers(1, 4)))
        for i in range(draw(st.integers(1, 4)))
    ]
    located = draw(st.booleans())
    lat, lon = draw(coordinates)
    method = draw(st.sampled_from(list(ShippingMethod)))
    return OrderPaidData(
        order_id=uuid.uuid4(),
        channel="web",
        placed_at=NOW,
        currency="EUR",
        amount=Decimal("10"),
        lines=lines,
        shipping_address=Address(
            name="A",
            line1="B",
            city="C",
            country=draw(st.sampled_from(COUNTRIES)),
            lat=lat if located else None,
            lon=lon if located else None,
        ),
        shipping_method=method,
        pickup_source=draw(st.sampled_from(CODES)) if method is ShippingMethod.pickup else None,
        options=OrderOptions(backorder_policy=draw(st.sampled_from(list(BackorderPolicy)))),
    )


levels = st.dictionaries(st.tuples(st.sampled_from(CODES), st.sampled_from(SKUS)), st.integers(0, 12))


@st.composite
def requests(draw) -> PlanRequest:
    order = draw(orders())
    return PlanRequest(
        order,
        tuple(order.lines),
        attempt=draw(st.integers(1, MAX_ATTEMPTS + 2)),
        excluded=frozenset(draw(st.lists(st.sampled_from(CODES), max_size=3))),
    )


def _lines(lines) -> Counter:
    return Counter((ln.line_id, ln.sku, ln.quantity) for ln in lines)


@settings(max_examples=400)
@given(request=requests(), network=networks(), levels=levels)
def test_every_line_is_planned_exactly_once_as_shipped_backordered_or_unfulfillable(request, network, levels):
    made = plan_now(request, network, stock(levels))
    shipped = [ln for s in made.shipments for ln in s.lines]
    assert _lines(shipped) + _lines(made.backordered_lines) + _lines(made.unfulfillable_lines) == _lines(request.lines)
    assert made.attempt == request.attempt
    assert len(made.shipments) <= 1


@settings(max_examples=400)
@given(request=requests(), network=networks(), levels=levels)
def test_chosen_source_is_allowed_and_has_every_line(request, network, levels):
    made = plan_now(request, network, stock(levels))
    by_code = {s.code: s for s in network}
    order = request.order
    for shipment in made.shipments:
        source = by_code[shipment.source_code]
        assert source.active
        assert source.code not in request.excluded
        assert shipment.source_type is source.type
        if order.shipping_method is ShippingMethod.pickup:
            assert source.code == order.pickup_source
        else:
            assert order.shipping_address.country in source.countries
        for sku, units in units_by_sku(shipment.lines).items():
            assert levels.get((source.code, sku), 0) >= units
        assert shipment.estimated_ship_date == NOW.date() + timedelta(days=source.handling_days)
        assert shipment.estimated_delivery_date - shipment.estimated_ship_date == timedelta(
            days=TRANSIT_DAYS[order.shipping_method]
        )
        assert shipment.reason.startswith(f"{source.code}: ")


@settings(max_examples=400)
@given(request=requests(), network=networks(), levels=levels)
def test_a_shipment_is_made_exactly_when_attempts_remain_and_a_candidate_exists(request, network, levels):
    made = plan_now(request, network, stock(levels))
    found = candidates(request.order, units_by_sku(request.lines), network, stock(levels), request.excluded)
    expected = rank(found)[0].source.code if found and request.attempt <= MAX_ATTEMPTS else None
    assert (made.shipments[0].source_code if made.shipments else None) == expected


@settings(max_examples=300)
@given(request=requests(), network=networks(), levels=levels)
def test_backorder_policy_decides_between_backordered_and_unfulfillable(request, network, levels):
    made = plan_now(request, network, stock(levels))
    if request.order.options.backorder_policy is BackorderPolicy.deny:
        assert made.backordered_lines == []
    else:
        assert made.unfulfillable_lines == []


@settings(max_examples=300)
@given(request=requests(), network=networks(), levels=levels)
def test_an_own_warehouse_that_can_ship_is_always_preferred(request, network, levels):
    made = plan_now(request, network, stock(levels))
    found = candidates(request.order, units_by_sku(request.lines), network, stock(levels), request.excluded)
    if made.shipments and any(c.source.type is SourceType.warehouse for c in found):
        assert made.shipments[0].source_type is SourceType.warehouse


@settings(max_examples=300)
@given(requests=st.lists(requests(), max_size=6), network=networks(), levels=levels)
def test_plans_of_a_batch_together_never_promise_more_than_is_available(requests, network, levels):
    made = plan_all(requests, network, stock(levels), planned_at=NOW, max_attempts=MAX_ATTEMPTS)
    promised: Counter = Counter()
    for p in made:
        for shipment in p.shipments:
            for sku, units in units_by_sku(shipment.lines).items():
                promised[(shipment.source_code, sku)] += units
    assert all(units <= levels.get(key, 0) for key, units in promised.items())
    assert [p.order_id for p in made] == [r.order.order_id for r in requests]
