"""Inventory's rules in memory: stock arithmetic, all-or-nothing reservations, settling, the backorder queue."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oms_inventory.domain import (
    Backorder,
    Count,
    FulfillmentUpdate,
    InvalidShipment,
    Line,
    Receipt,
    Reservation,
    ReservationState,
    ReservedUnitsCancelled,
    ShipmentRequest,
    Shortage,
    SourceGone,
    SourceState,
    Stock,
    Tombstone,
    apply_receipts,
    fell_below_threshold,
    network_changes,
    queue_positions,
    release_cancelled_units,
    reserve_shipments,
    settle_fulfillments,
    stock_at,
)

ORDER = uuid.UUID("00000000-0000-0000-0000-00000000000a")
AT = datetime(2026, 12, 10, 9, 0, tzinfo=UTC)
PLAN = uuid.UUID("00000000-0000-0000-0000-00000000000b")


def shipment(source: str, *lines: tuple[str, str, int], shipment_id: uuid.UUID | None = None) -> ShipmentRequest:
    return ShipmentRequest.of(
        shipment_id or uuid.uuid4(), ORDER, PLAN, source, [Line(line_id, sku, qty) for line_id, sku, qty in lines]
    )


def snapshot(*rows: Stock) -> dict[tuple[str, str], Stock]:
    return {row.key: row for row in rows}


# --- stock arithmetic --------------------------------------------------------------------------------------------


def test_available_is_on_hand_minus_reserved():
    assert Stock("A", "WH", on_hand=10, reserved=3).available == 7


def test_count_below_reserved_keeps_the_reservations_and_shows_nothing_available():
    counted = Stock("A", "WH", on_hand=10, reserved=6).count(2)
    assert (counted.on_hand, counted.reserved, counted.available) == (2, 6, 0)


def test_receipt_adds_to_on_hand_and_leaves_reserved_alone():
    assert Stock("A", "WH", 4, 3).receive(5) == Stock("A", "WH", 9, 3)


def test_reserving_more_than_available_is_refused():
    with pytest.raises(ValueError, match="2 available"):
        Stock("A", "WH", 5, 3).reserve(3)


def test_shipping_lowers_on_hand_and_reserved_together():
    assert Stock("A", "WH", 10, 4).ship(3) == Stock("A", "WH", 7, 1)


def test_shipping_after_a_short_count_bottoms_on_hand_at_zero():
    assert Stock("A", "WH", 1, 4).ship(4) == Stock("A", "WH", 0, 0)


def test_releasing_makes_units_available_again():
    released = Stock("A", "WH", 10, 4).release(4)
    assert (released.reserved, released.available) == (0, 10)


@pytest.mark.parametrize("move", [Stock.ship, Stock.release])
def test_cannot_ship_or_release_more_than_is_reserved(move):
    with pytest.raises(ValueError, match="only 2"):
        move(Stock("A", "WH", 10, 2), 3)


@pytest.mark.parametrize("move", [Stock.receive, Stock.reserve, Stock.ship, Stock.release])
def test_quantities_must_be_positive(move):
    with pytest.raises(ValueError, match="greater than zero"):
        move(Stock("A", "WH", 10, 5), 0)


def test_a_count_cannot_be_negative():
    with pytest.raises(ValueError, match="negative"):
        Stock("A", "WH").count(-1)


def test_a_key_without_a_row_holds_nothing():
    assert stock_at({}, ("A", "WH")) == Stock("A", "WH", 0, 0)


@pytest.mark.parametrize(
    ("before", "after", "alerts"),
    [
        (5, 4, True),  # at the threshold, then below it
        (9, 0, True),
        (4, 3, False),  # already below: announced when it crossed
        (5, 5, False),
        (3, 7, False),
    ],
)
def test_low_stock_is_announced_when_availability_crosses_below_the_threshold(before, after, alerts):
    assert fell_below_threshold(Stock("A", "WH", before), Stock("A", "WH", after), 5) is alerts


# --- the network -------------------------------------------------------------------------------------------------


def test_the_last_word_on_a_source_in_a_batch_wins():
    wh = SourceState("WH", "Warehouse", "warehouse", True)
    changes = network_changes([wh, SourceGone("WH")])
    assert changes.upserts == {"WH": SourceState("WH", "Warehouse", "warehouse", False)}
    assert changes.deactivations == []

    changes = network_changes([SourceGone("WH"), wh])
    assert changes.upserts == {"WH": wh}
    assert changes.deactivations == []


def test_a_deactivation_alone_only_flips_the_flag():
    changes = network_changes([SourceGone("WH"), SourceGone("WH"), SourceGone("ST")])
    assert changes.upserts == {}
    assert changes.deactivations == ["WH", "ST"]


# --- receipts and counts -----------------------------------------------------------------------------------------


def test_receipts_and_counts_apply_in_arrival_order():
    before = snapshot(Stock("A", "WH", 10, 2))
    received_then_counted = apply_receipts(before, [Receipt("A", "WH", 5), Count("A", "WH", 7)])
    counted_then_received = apply_receipts(before, [Count("A", "WH", 7), Receipt("A", "WH", 5)])
    assert received_then_counted.stock[("A", "WH")] == Stock("A", "WH", 7, 2)
    assert counted_then_received.stock[("A", "WH")] == Stock("A", "WH", 12, 2)


def test_a_count_that_confirms_the_books_changes_nothing():
    changes = apply_receipts(snapshot(Stock("A", "WH", 10, 2)), [Count("A", "WH", 10)])
    assert changes.stock == {}
    assert changes.causes == {}


@given(
    st.tuples(*(st.integers(0, 3) for _ in range(3))),
    st.tuples(*(st.integers(0, 3) for _ in range(3))),
    st.sampled_from([None, datetime(2026, 11, 22, 10, 0, tzinfo=UTC)]),
)
def test_a_level_is_the_same_when_its_units_are_whatever_its_count_time(units, other_units, counted_at):
    # What `_emit_stock_levels` asks before publishing a level: the units, never the as-of time of the last count.
    stock, other = Stock("A", "WH", *units), Stock("A", "WH", *other_units, counted_at=counted_at)
    assert stock.same_level(other) is (units == other_units)


def test_a_count_older_than_the_last_count_applied_is_stale_and_changes_nothing():
    at = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    counted = snapshot(Stock("A", "WH", 10, 2, counted_at=at))

    for late in (at - timedelta(minutes=1), at):
        changes = apply_receipts(counted, [Count("A", "WH", 3, late)])
        assert (changes.stock, changes.stale_counts) == ({}, [0])


def test_a_later_count_replaces_on_hand_and_keeps_its_as_of_time():
    at = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    later = at + timedelta(hours=1)

    changes = apply_receipts(snapshot(Stock("A", "WH", 10, 2, counted_at=at)), [Count("A", "WH", 3, later)])

    assert changes.stock == {("A", "WH"): Stock("A", "WH", 3, 2, counted_at=later)}
    assert changes.stale_counts == []


def test_receipts_after_the_last_count_are_kept_when_an_older_count_arrives_late():
    t1, t2 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC), datetime(2026, 11, 22, 11, 0, tzinfo=UTC)

    changes = apply_receipts(
        snapshot(Stock("A", "WH", 0)),
        [Count("A", "WH", 10, t2), Receipt("A", "WH", 5), Count("A", "WH", 4, t1)],
    )

    assert changes.stock[("A", "WH")] == Stock("A", "WH", 15, counted_at=t2)
    assert changes.stale_counts == [2]


def test_a_count_that_confirms_the_books_records_its_as_of_time_only():
    at = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)

    changes = apply_receipts(snapshot(Stock("A", "WH", 10, 2)), [Count("A", "WH", 10, at)])

    assert changes.stock == {("A", "WH"): Stock("A", "WH", 10, 2, counted_at=at)}


@settings(max_examples=200)
@given(
    st.lists(
        st.one_of(
            st.builds(Receipt, st.just("A"), st.just("WH"), st.integers(1, 50)),
            st.builds(
                Count,
                st.just("A"),
                st.just("WH"),
                st.integers(0, 50),
                st.integers(0, 20).map(lambda minutes: datetime(2026, 11, 22, tzinfo=UTC) + timedelta(minutes=minutes)),
            ),
        ),
        max_size=12,
    )
)
def test_on_hand_is_the_latest_count_plus_the_receipts_applied_after_it_whatever_order_counts_arrive_in(movements):
    before = snapshot(Stock("A", "WH", 7))
    after = stock_at({**before, **apply_receipts(before, movements).stock}, ("A", "WH"))

    latest, expected = None, 7
    for m in movements:
        if isinstance(m, Receipt):
            expected += m.quantity
        elif latest is None or m.counted_at > latest:
            latest, expected = m.counted_at, m.on_hand
    assert (after.on_hand, after.counted_at) == (expected, latest)


def test_each_changed_row_names_the_last_receipt_that_changed_it():
    before = snapshot(Stock("A", "WH", 1), Stock("B", "WH", 1))
    changes = apply_receipts(before, [Receipt("A", "WH", 1), Receipt("B", "WH", 1), Receipt("A", "WH", 1)])
    assert changes.causes == {("A", "WH"): 2, ("B", "WH"): 1}


# --- reservations ------------------------------------------------------------------------------------------------


def test_a_shipment_with_enough_stock_reserves_every_line():
    result = reserve_shipments(
        snapshot(Stock("A", "WH", 5), Stock("B", "WH", 2)), [shipment("WH", ("1", "A", 3), ("2", "B", 2))]
    )
    assert [d.reserved for d in result.decisions] == [True]
    assert result.stock == snapshot(Stock("A", "WH", 5, 3), Stock("B", "WH", 2, 2))
    assert [(r.line_id, r.quantity, r.state) for r in result.reservations()] == [
        ("1", 3, ReservationState.reserved),
        ("2", 2, ReservationState.reserved),
    ]


def test_a_shipment_short_of_one_sku_reserves_none_of_its_lines():
    result = reserve_shipments(
        snapshot(Stock("A", "WH", 5), Stock("B", "WH", 1)), [shipment("WH", ("1", "A", 3), ("2", "B", 2))]
    )
    (decision,) = result.decisions
    assert decision.shortages == (Shortage("B", requested=2, available=1),)
    assert result.stock == {}
    assert {r.state for r in result.reservations()} == {ReservationState.rejected}


def test_a_sku_the_source_never_stocked_is_short_with_nothing_available():
    (decision,) = reserve_shipments({}, [shipment("WH", ("1", "A", 1))]).decisions
    assert decision.shortages == (Shortage("A", requested=1, available=0),)


def test_two_lines_of_one_sku_are_checked_against_the_stock_together():
    (decision,) = reserve_shipments(
        snapshot(Stock("A", "WH", 3)), [shipment("WH", ("1", "A", 2), ("2", "A", 2))]
    ).decisions
    assert decision.shortages == (Shortage("A", requested=4, available=3),)


def test_stock_at_another_source_does_not_count():
    (decision,) = reserve_shipments(snapshot(Stock("A", "STORE", 10)), [shipment("WH", ("1", "A", 1))]).decisions
    assert not decision.reserved


def test_an_earlier_shipment_is_served_before_a_later_one():
    first, second = shipment("WH", ("1", "A", 3)), shipment("WH", ("1", "A", 3))
    result = reserve_shipments(snapshot(Stock("A", "WH", 4)), [first, second])
    assert [d.reserved for d in result.decisions] == [True, False]
    assert result.decisions[1].shortages == (Shortage("A", requested=3, available=1),)


def test_a_later_smaller_shipment_may_take_what_an_earlier_refused_one_could_not_use():
    big, small = shipment("WH", ("1", "A", 5)), shipment("WH", ("1", "A", 2))
    result = reserve_shipments(snapshot(Stock("A", "WH", 4)), [big, small])
    assert [d.reserved for d in result.decisions] == [False, True]
    assert result.stock[("A", "WH")].reserved == 2


def test_a_shipment_already_decided_is_not_reserved_again():
    known = uuid.uuid4()
    result = reserve_shipments(
        snapshot(Stock("A", "WH", 10)), [shipment("WH", ("1", "A", 1), shipment_id=known)], {known}
    )
    assert result.decisions == []
    assert result.stock == {}


def test_a_shipment_repeated_in_one_batch_reserves_once():
    again = uuid.uuid4()
    result = reserve_shipments(
        snapshot(Stock("A", "WH", 10)),
        [shipment("WH", ("1", "A", 4), shipment_id=again), shipment("WH", ("1", "A", 4), shipment_id=again)],
    )
    assert len(result.decisions) == 1
    assert result.stock[("A", "WH")].reserved == 4


def test_the_last_shipment_reserving_at_a_row_is_its_cause():
    result = reserve_shipments(
        snapshot(Stock("A", "WH", 10), Stock("B", "WH", 10)),
        [shipment("WH", ("1", "A", 1)), shipment("WH", ("1", "B", 1)), shipment("WH", ("1", "A", 1))],
    )
    assert result.causes == {("A", "WH"): 2, ("B", "WH"): 1}


def test_units_cancelled_before_a_shipment_was_reserved_are_not_reserved_and_count_as_released():
    s = shipment("WH", ("1", "A", 3), ("2", "B", 1))
    ahead = [Tombstone(ORDER, "1", 1, AT, s.shipment_id), Tombstone(ORDER, "2", 5, AT, s.shipment_id)]
    result = reserve_shipments(snapshot(Stock("A", "WH", 5), Stock("B", "WH", 5)), [s], cancelled=ahead)
    (decision,) = result.decisions
    assert decision.lines == (Line("1", "A", 2),)
    assert result.stock == snapshot(Stock("A", "WH", 5, 2))
    assert [(r.line_id, r.quantity, r.released, r.open, r.state) for r in result.reservations()] == [
        ("1", 3, 1, 2, ReservationState.reserved),
        ("2", 1, 1, 0, ReservationState.released),
    ]


def test_a_shipment_whose_every_unit_was_cancelled_ahead_holds_nothing():
    s = shipment("WH", ("1", "A", 3))
    result = reserve_shipments({}, [s], cancelled=[Tombstone(ORDER, "1", 3, AT, s.shipment_id)])
    (decision,) = result.decisions
    assert decision.reserved and decision.emptied
    assert result.stock == {}
    assert [r.state for r in result.reservations()] == [ReservationState.released]


def test_a_shipment_is_checked_for_shortages_on_what_was_not_cancelled_ahead():
    s = shipment("WH", ("1", "A", 3))
    result = reserve_shipments(
        snapshot(Stock("A", "WH", 1)), [s], cancelled=[Tombstone(ORDER, "1", 1, AT, s.shipment_id)]
    )
    assert result.decisions[0].shortages == (Shortage("A", requested=2, available=1),)
    assert {r.state for r in result.reservations()} == {ReservationState.rejected}


def test_tombstones_of_other_shipments_and_of_queues_do_not_touch_a_shipment():
    s = shipment("WH", ("1", "A", 3))
    others = [Tombstone(ORDER, "1", 1, AT, uuid.uuid4()), Tombstone(ORDER, "1", 1, AT)]
    (decision,) = reserve_shipments(snapshot(Stock("A", "WH", 5)), [s], cancelled=others).decisions
    assert decision.lines == s.lines


def test_a_line_listed_twice_in_a_shipment_is_reserved_as_one():
    s = shipment("WH", ("1", "A", 2), ("1", "A", 3))
    assert s.lines == (Line("1", "A", 5),)


def test_a_line_listed_with_two_skus_is_an_invalid_shipment():
    with pytest.raises(InvalidShipment, match="two SKUs"):
        shipment("WH", ("1", "A", 2), ("1", "B", 3))


def test_a_shipment_without_lines_is_invalid():
    with pytest.raises(InvalidShipment, match="no lines"):
        shipment("WH")


# --- settling: shipped, rejected, cancelled ----------------------------------------------------------------------


def reserved_shipment(stock: dict, *lines: tuple[str, str, int]) -> tuple[ShipmentRequest, dict, list[Reservation]]:
    s = shipment("WH", *lines)
    result = reserve_shipments(stock, [s])
    assert result.decisions[0].reserved
    return s, {**stock, **result.stock}, result.reservations()


def test_shipped_lowers_on_hand_and_reserved_and_marks_the_lines_shipped():
    s, stock, rows = reserved_shipment(snapshot(Stock("A", "WH", 10)), ("1", "A", 3))
    settled = settle_fulfillments(stock, rows, [FulfillmentUpdate.shipment_left(s.shipment_id, [("1", 3)])])
    assert settled.stock == snapshot(Stock("A", "WH", 7, 0))
    assert settled.reservations[(s.shipment_id, "1")].state is ReservationState.shipped


def test_a_partial_shipment_keeps_the_rest_reserved():
    s, stock, rows = reserved_shipment(snapshot(Stock("A", "WH", 10)), ("1", "A", 3))
    settled = settle_fulfillments(stock, rows, [FulfillmentUpdate.shipment_left(s.shipment_id, [("1", 1)])])
    assert settled.stock == snapshot(Stock("A", "WH", 9, 2))
    line = settled.reservations[(s.shipment_id, "1")]
    assert (line.state, line.open) == (ReservationState.reserved, 2)


def test_rejected_releases_every_open_line():
    s, stock, rows = reserved_shipment(
        snapshot(Stock("A", "WH", 10), Stock("B", "WH", 4)), ("1", "A", 3), ("2", "B", 4)
    )
    settled = settle_fulfillments(stock, rows, [FulfillmentUpdate.all_given_back(s.shipment_id)])
    assert settled.stock == snapshot(Stock("A", "WH", 10, 0), Stock("B", "WH", 4, 0))
    assert {r.state for r in settled.reservations.values()} == {ReservationState.released}


def test_cancelled_releases_only_the_cancelled_lines():
    s, stock, rows = reserved_shipment(
        snapshot(Stock("A", "WH", 10), Stock("B", "WH", 4)), ("1", "A", 3), ("2", "B", 4)
    )
    settled = settle_fulfillments(stock, rows, [FulfillmentUpdate.lines_given_back(s.shipment_id, [("2", 4)])])
    assert settled.stock == snapshot(Stock("B", "WH", 4, 0))
    assert list(settled.reservations) == [(s.shipment_id, "2")]


def test_units_given_back_as_not_there_leave_on_hand_and_never_become_available():
    s, stock, rows = reserved_shipment(
        snapshot(Stock("A", "WH", 10), Stock("B", "WH", 4)), ("1", "A", 3), ("2", "B", 4)
    )
    settled = settle_fulfillments(
        stock, rows, [FulfillmentUpdate.lines_given_back(s.shipment_id, [("1", 2)], missing=True)]
    )
    assert settled.stock == snapshot(Stock("A", "WH", 8, 1))
    assert settled.written_off == {("A", "WH"): 2}
    line = settled.reservations[(s.shipment_id, "1")]
    assert (line.state, line.open, line.released) == (ReservationState.reserved, 1, 2)


def test_a_rejection_as_not_there_writes_off_every_open_line():
    s, stock, rows = reserved_shipment(
        snapshot(Stock("A", "WH", 10), Stock("B", "WH", 4)), ("1", "A", 3), ("2", "B", 4)
    )
    settled = settle_fulfillments(stock, rows, [FulfillmentUpdate.all_given_back(s.shipment_id, missing=True)])
    assert settled.stock == snapshot(Stock("A", "WH", 7, 0), Stock("B", "WH", 0, 0))
    assert settled.written_off == {("A", "WH"): 3, ("B", "WH"): 4}
    assert {r.state for r in settled.reservations.values()} == {ReservationState.released}


def test_a_line_shipped_after_part_was_given_back_counts_as_shipped():
    s, stock, rows = reserved_shipment(snapshot(Stock("A", "WH", 10)), ("1", "A", 3))
    settled = settle_fulfillments(
        stock,
        rows,
        [
            FulfillmentUpdate.lines_given_back(s.shipment_id, [("1", 1)]),
            FulfillmentUpdate.shipment_left(s.shipment_id, [("1", 2)]),
        ],
    )
    assert settled.stock == snapshot(Stock("A", "WH", 8, 0))
    line = settled.reservations[(s.shipment_id, "1")]
    assert (line.state, line.shipped, line.released) == (ReservationState.shipped, 2, 1)


def test_a_report_beyond_what_is_reserved_moves_only_what_is_left():
    s, stock, rows = reserved_shipment(snapshot(Stock("A", "WH", 10, 5)), ("1", "A", 3))
    settled = settle_fulfillments(
        stock,
        rows,
        [
            FulfillmentUpdate.shipment_left(s.shipment_id, [("1", 9)]),
            FulfillmentUpdate.shipment_left(s.shipment_id, [("1", 3)]),
            FulfillmentUpdate.all_given_back(s.shipment_id),
        ],
    )
    # The other reservations' 5 units stay reserved.
    assert settled.stock == snapshot(Stock("A", "WH", 7, 5))


def test_a_line_the_shipment_never_had_moves_nothing():
    s, stock, rows = reserved_shipment(snapshot(Stock("A", "WH", 10)), ("1", "A", 3))
    settled = settle_fulfillments(stock, rows, [FulfillmentUpdate.shipment_left(s.shipment_id, [("9", 3)])])
    assert (settled.stock, settled.reservations, settled.never_reserved) == ({}, {}, [])


def test_an_update_for_a_fulfillment_never_reserved_moves_nothing():
    rejected = reserve_shipments({}, [shipment("WH", ("1", "A", 3))]).decisions[0]
    updates = [
        FulfillmentUpdate.shipment_left(uuid.uuid4(), [("1", 3)]),
        FulfillmentUpdate.all_given_back(rejected.shipment.shipment_id),
    ]
    settled = settle_fulfillments({}, rejected.reservations(), updates)
    assert (settled.stock, settled.reservations, settled.never_reserved) == ({}, {}, [0, 1])


def test_cancelled_reserved_units_are_given_back_like_a_sources_cancellation():
    s, stock, rows = reserved_shipment(snapshot(Stock("A", "WH", 10)), ("1", "A", 3))
    settled = release_cancelled_units(stock, rows, [ReservedUnitsCancelled(ORDER, s.shipment_id, "1", 2, AT)])
    assert settled.stock == snapshot(Stock("A", "WH", 10, 1))
    assert settled.reservations[(s.shipment_id, "1")].released == 2
    assert settled.tombstones == []


def test_cancelled_reserved_units_of_a_shipment_not_decided_yet_leave_a_tombstone_for_it():
    ahead = uuid.uuid4()
    settled = release_cancelled_units({}, [], [ReservedUnitsCancelled(ORDER, ahead, "1", 2, AT)])
    assert (settled.stock, settled.tombstones) == ({}, [Tombstone(ORDER, "1", 2, AT, ahead)])


def test_cancelled_reserved_units_of_a_refused_shipment_leave_nothing_behind():
    refused = reserve_shipments({}, [shipment("WH", ("1", "A", 3))]).decisions[0]
    cancelled = [ReservedUnitsCancelled(ORDER, refused.shipment.shipment_id, "1", 3, AT)]
    settled = release_cancelled_units({}, refused.reservations(), cancelled)
    assert (settled.stock, settled.reservations, settled.tombstones) == ({}, {}, [])


# --- the backorder queue -----------------------------------------------------------------------------------------


def test_a_lines_place_in_its_skus_queue_counts_the_older_waiting_lines_of_that_sku_only():
    at = datetime(2026, 11, 22, tzinfo=UTC)
    rows = [
        Backorder(7, uuid.uuid4(), "1", "A", 2, queued_at=at + timedelta(seconds=7)),
        Backorder(3, uuid.uuid4(), "1", "A", 1, queued_at=at + timedelta(seconds=3)),
        Backorder(5, uuid.uuid4(), "2", "B", 4, queued_at=at + timedelta(seconds=5)),
        Backorder(4, uuid.uuid4(), "2", "A", 5, queued_at=at + timedelta(seconds=4)),
    ]
    assert queue_positions(rows) == {3: 1, 4: 2, 7: 3, 5: 1}


def test_an_empty_queue_has_no_positions():
    assert queue_positions([]) == {}


# --- invariants, for any stock and any shipments -----------------------------------------------------------------

SKUS = ("A", "B", "C")
SOURCES = ("WH", "ST")


@st.composite
def stocks(draw, consistent: bool = True) -> dict[tuple[str, str], Stock]:
    """A snapshot where each row has reserved <= on_hand (or, unless `consistent`, after any count)."""
    rows = {}
    for sku in SKUS:
        for source in SOURCES:
            if draw(st.booleans()):
                on_hand = draw(st.integers(0, 20))
                reserved = draw(st.integers(0, on_hand if consistent else 30))
                rows[(sku, source)] = Stock(sku, source, on_hand, reserved)
    return rows


line_lists = st.lists(st.tuples(st.sampled_from(SKUS), st.integers(1, 10)), min_size=1, max_size=3)
shipment_lists = st.lists(
    st.builds(
        lambda source, lines: shipment(source, *((str(i), sku, qty) for i, (sku, qty) in enumerate(lines))),
        st.sampled_from(SOURCES),
        line_lists,
    ),
    max_size=8,
)


@settings(max_examples=300)
@given(stocks(consistent=False), shipment_lists)
def test_reserving_never_oversells_and_never_makes_availability_negative(stock, shipments):
    after = {**stock, **reserve_shipments(stock, shipments).stock}
    for key, row in after.items():
        before = stock_at(stock, key)
        assert row.available >= 0
        assert row.on_hand == before.on_hand
        assert row.reserved <= max(row.on_hand, before.reserved)


@settings(max_examples=300)
@given(stocks(), shipment_lists)
def test_every_shipment_is_reserved_whole_or_not_at_all(stock, shipments):
    result = reserve_shipments(stock, shipments)
    reserved_by_decisions: dict[tuple[str, str], int] = {}
    for decision in result.decisions:
        if decision.reserved:
            for sku, quantity in decision.shipment.needs().items():
                key = (sku, decision.shipment.source_code)
                reserved_by_decisions[key] = reserved_by_decisions.get(key, 0) + quantity
        else:
            short = {x.sku for x in decision.shortages}
            assert short and short <= set(decision.shipment.needs())
    after = {**stock, **result.stock}
    for key in set(after) | set(reserved_by_decisions):
        assert stock_at(after, key).reserved - stock_at(stock, key).reserved == reserved_by_decisions.get(key, 0)
        assert stock_at(after, key).reserved <= stock_at(after, key).on_hand


@settings(max_examples=300)
@given(stocks(), shipment_lists)
def test_an_earlier_shipment_is_never_refused_stock_a_later_one_got(stock, shipments):
    decisions = reserve_shipments(stock, shipments).decisions
    for i, refused in enumerate(decisions):
        for shortage in refused.shortages:
            key = (shortage.sku, refused.shipment.source_code)
            taken_before = sum(
                d.shipment.needs().get(shortage.sku, 0)
                for d in decisions[:i]
                if d.reserved and d.shipment.source_code == key[1]
            )
            taken_after = sum(
                d.shipment.needs().get(shortage.sku, 0)
                for d in decisions[i + 1 :]
                if d.reserved and d.shipment.source_code == key[1]
            )
            # What it was told is what the earlier ones left, and the later ones took no more than that.
            assert shortage.available == stock_at(stock, key).available - taken_before
            assert taken_after <= shortage.available < shortage.requested


updates_plan = st.lists(
    st.tuples(
        st.integers(0, 7),  # which shipment
        st.sampled_from(["ship", "release", "reject", "missing", "reject missing"]),
        st.lists(st.tuples(st.sampled_from(["0", "1", "2"]), st.integers(1, 12)), max_size=3),
    ),
    max_size=12,
)


@settings(max_examples=300)
@given(stocks(), shipment_lists, updates_plan)
def test_shipping_and_releasing_keep_on_hand_at_or_above_reserved_and_reserved_at_or_above_zero(stock, shipments, plan):
    reserved = reserve_shipments(stock, shipments)
    current = {**stock, **reserved.stock}
    rows = reserved.reservations()
    updates = []
    for index, kind, lines in plan:
        target = shipments[index].shipment_id if index < len(shipments) else uuid.uuid4()
        if kind == "ship":
            updates.append(FulfillmentUpdate.shipment_left(target, lines))
        elif kind in ("release", "missing"):
            updates.append(FulfillmentUpdate.lines_given_back(target, lines, missing=kind == "missing"))
        else:
            updates.append(FulfillmentUpdate.all_given_back(target, missing=kind == "reject missing"))
    settled = settle_fulfillments(current, rows, updates)
    after = {**current, **settled.stock}
    final_rows = {(r.shipment_id, r.line_id): r for r in rows} | settled.reservations
    for key, row in after.items():
        assert row.on_hand >= row.reserved >= 0
        # What stays reserved is exactly what the open reservation lines hold.
        held_by_lines = sum(r.open for r in final_rows.values() if r.key == key)
        assert row.reserved - stock_at(stock, key).reserved == held_by_lines
        # Units given back become available, except those written off: they are not there.
        given_back = sum(r.released for r in final_rows.values() if r.key == key)
        rose = row.available - stock_at(current, key).available
        assert rose == given_back - settled.written_off.get(key, 0)
    for r in final_rows.values():
        assert 0 <= r.shipped + r.released <= r.quantity


@settings(max_examples=200)
@given(
    stocks(),
    st.lists(
        st.one_of(
            st.builds(Receipt, st.sampled_from(SKUS), st.sampled_from(SOURCES), st.integers(1, 50)),
            st.builds(Count, st.sampled_from(SKUS), st.sampled_from(SOURCES), st.integers(0, 50)),
        ),
        max_size=10,
    ),
)
def test_receipts_and_counts_never_touch_reserved_and_leave_the_last_counted_level(stock, movements):
    after = {**stock, **apply_receipts(stock, movements).stock}
    for key, row in after.items():
        assert row.reserved == stock_at(stock, key).reserved
        assert row.available >= 0
        expected = stock_at(stock, key).on_hand
        for m in movements:
            if m.key == key:
                expected = m.quantity + expected if isinstance(m, Receipt) else m.on_hand
        assert row.on_hand == expected
