"""The benchmark harness's pure parts: percentiles, hop extraction, the sustained decision, the rate search, and
that what the simulated channels and 3PL publish is valid against the contracts. No broker, no database, no clock."""

from __future__ import annotations

import json
import math
import uuid
from datetime import date

import pytest

from bench import orders, stats, threepl
from bench.collect import Profile, classify, system_profile
from oms_contracts.common import Recipient
from oms_contracts.fulfillment import FulfillmentRequested, FulfillmentRequestedData
from oms_contracts.topics import CHANNEL_ORDERS, FULFILLMENT_UPDATES
from oms_tools import samples

# -- percentiles ------------------------------------------------------------------------------------------------------


def test_percentile_interpolates_between_closest_ranks_like_numpy():
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert stats.percentile(values, 0) == 1.0
    assert stats.percentile(values, 100) == 4.0
    assert stats.percentile(values, 50) == 2.5
    assert stats.percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert stats.percentile([7.0], 99) == 7.0
    assert math.isnan(stats.percentile([], 50))
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_summary_of_nothing_is_nan_not_an_error():
    assert stats.summary([])["count"] == 0
    assert stats.summary([0.1, 0.3])["max"] == 0.3


# -- hops from records ------------------------------------------------------------------------------------------------


def test_a_track_takes_records_in_any_order_and_waits_for_every_shipment():
    t = stats.OrderTrack()
    t.observe(stats.REQUESTED, 1500)  # a request seen before its plan: topics overtake each other
    t.observe(stats.RESERVED, 1300)
    t.observe(stats.SUBMITTED, 1000)
    t.observe(stats.PLANNED, 1200, shipments=2)
    assert t.times()["reserved"] is None  # one of two shipments reserved
    assert t.times()["requested"] is None
    t.observe(stats.RESERVED, 1350)
    t.observe(stats.REQUESTED, 1600)
    assert t.times()["reserved"] == 1350  # the last shipment's time
    assert t.latencies()["requested"] == pytest.approx(0.6)
    assert not t.complete()
    t.observe(stats.SHIPPED, 1700)
    t.observe(stats.SHIPPED, 1800)
    t.observe(stats.MAIL, 1400)
    assert t.complete()


def test_a_redelivered_copy_does_not_move_a_hop():
    t = stats.OrderTrack()
    t.observe(stats.SUBMITTED, 1000)
    t.observe(stats.ACCEPTED, 1100)
    t.observe(stats.ACCEPTED, 1900)
    t.observe(stats.PLANNED, 1200, shipments=1)
    t.observe(stats.PLANNED, 2500, shipments=1)  # a re-plan: the first plan counts, and it is noted
    assert t.times()["accepted"] == 1100
    assert t.times()["planned"] == 1200
    assert t.replanned


def _record(etype: str, data: dict, *, header: bool = True) -> tuple[bytes, list]:
    body = json.dumps({"type": etype, "data": data}).encode()
    return body, ([("ce-type", etype.encode())] if header else [])


def test_classify_reads_the_type_from_the_header_or_the_body_and_the_order_from_the_key():
    profile = system_profile(["oms.fulfillment.requests.WH-EAST.v1"])
    order_id = str(uuid.uuid4())
    value, headers = _record("oms.order.accepted.v1", {})
    assert classify(profile, "oms.order.events.v1", order_id.encode(), value, headers) == (order_id, "accepted", None)
    value, headers = _record("oms.order.paid.v1", {}, header=False)
    assert classify(profile, "oms.order.events.v1", order_id.encode(), value, headers)[1] == "paid"
    value, headers = _record("oms.order.status_changed.v1", {})
    assert classify(profile, "oms.order.events.v1", order_id.encode(), value, headers) is None
    value, headers = _record("oms.routing.fulfillment_planned.v1", {"shipments": [{}, {}]})
    assert classify(profile, "oms.routing.plans.v1", order_id.encode(), value, headers) == (order_id, "planned", 2)


def test_classify_maps_a_channel_key_to_its_order_id():
    profile = system_profile([])
    value, headers = _record("oms.channel.order_submitted.v1", {})
    seen = classify(profile, "oms.channel.orders.v1", b"web-eu:1001", value, headers)
    assert seen == (str(orders.order_id("web-eu:1001")), "submitted", None)


def test_only_the_confirmation_counts_as_the_confirmation_mail():
    profile = system_profile([])
    key = str(uuid.uuid4()).encode()
    value, headers = _record("oms.notification.sent.v1", {"template": "order_confirmation"})
    value = value.replace(b'"template": "order_confirmation"', b'"template":"order_confirmation"')
    assert classify(profile, "oms.notifications.v1", key, value, headers)[1] == "mail"
    value, headers = _record("oms.notification.sent.v1", {"template": "shipped"})
    assert classify(profile, "oms.notifications.v1", key, value, headers) is None
    chain = Profile(topics=(), kinds={"chain.notification": "mail"}, mail_marker=None)
    value, headers = _record("chain.notification", {"shipment_count": 1})
    assert classify(chain, "chain.notifications", key, value, headers)[1] == "mail"


# -- the sustained decision -------------------------------------------------------------------------------------------

RATE = 10.0
WINDOW = (10_000, 30_000)  # 20 s of window after 10 s of warm-up, in ms


def _point(latency_ms, *, count: int = 300, drop_every: int = 0):
    """Orders planned every 100 ms from t=0; `latency_ms(planned)` gives each one's time to every terminal hop."""
    out = []
    for i in range(count):
        planned = i * 100
        t = stats.OrderTrack()
        t.observe(stats.SUBMITTED, planned)
        t.observe(stats.PLANNED, planned + 1, shipments=1)
        if drop_every and i % drop_every == 0:
            out.append((planned, t))
            continue
        done = planned + latency_ms(planned)
        for kind in (stats.REQUESTED, stats.SHIPPED, stats.MAIL):
            t.observe(kind, done)
        out.append((planned, t))
    return out


def _judge(tracks, **overrides):
    arguments = {
        "offered_rate": RATE,
        "window": WINDOW,
        "tracks": tracks,
        "generator_lag_p99_s": 0.002,
        "generator_lag_max_s": 0.01,
        "generator_sent": 300,
        "generator_planned": 300,
    }
    return stats.judge(**{**arguments, **overrides})


def test_a_steady_point_is_sustained():
    verdict = _judge(_point(lambda planned: 200 + planned % 7))
    assert verdict.sustained and verdict.valid, verdict.reasons


def test_a_growing_backlog_is_not_sustained():
    # Half-way through the window the system starts falling behind: output lags input and latency climbs.
    verdict = _judge(_point(lambda planned: 200 + max(0, planned - 20_000) * 0.1))
    assert not verdict.sustained
    assert any("reached in the window" in r for r in verdict.reasons)
    assert any("p99 grew" in r for r in verdict.reasons)


def test_lost_orders_fail_the_point():
    verdict = _judge(_point(lambda planned: 200, drop_every=50))
    assert not verdict.sustained
    assert any("never reached" in r for r in verdict.reasons)


def test_a_generator_that_fell_behind_makes_the_point_invalid():
    verdict = _judge(_point(lambda planned: 200), generator_lag_max_s=2.0)
    assert not verdict.sustained and not verdict.valid
    verdict = _judge(_point(lambda planned: 200), generator_sent=250)
    assert not verdict.valid


def test_only_the_judged_hops_decide():
    tracks = _point(lambda planned: 200)
    for _, t in tracks:
        t.mail = None  # no confirmation mail at all
    assert _judge(tracks, terminal=stats.JUDGED).sustained
    assert not _judge(tracks, terminal=stats.TERMINAL).sustained


# -- the rate search --------------------------------------------------------------------------------------------------


def test_the_search_doubles_then_bisects_and_stops_within_its_precision():
    search = stats.Search(start=100, factor=2, precision=0.1)
    history: list[tuple[float, bool]] = []
    ceiling = 555.0  # the system under test sustains up to here
    while (rate := search.next_rate(history)) is not None:
        history.append((rate, rate <= ceiling))
    rates = [r for r, _ in history]
    assert rates[:4] == [100, 200, 400, 800]
    best = stats.sustained_rate(history)
    assert best is not None and best <= ceiling
    lowest_failed = min(r for r, ok in history if not ok)
    assert lowest_failed / best <= 1.1


def test_the_search_steps_down_from_a_failing_start_and_gives_up_at_its_floor():
    search = stats.Search(start=100, factor=2, floor=20)
    assert search.next_rate([(100, False)]) == 50
    assert search.next_rate([(100, False), (50, False), (25, False)]) is None


def test_a_failure_below_a_lucky_success_wins():
    assert stats.sustained_rate([(100, True), (200, False), (300, True)]) == 100
    assert stats.sustained_rate([(100, False)]) is None


# -- what the simulators publish --------------------------------------------------------------------------------------


def test_the_channels_orders_are_valid_deterministic_and_keyed_by_their_order():
    first = orders.build("t", 20, seed=3)
    again = orders.build("t", 20, seed=3)
    assert [o.order_id for o in first] == [o.order_id for o in again]
    assert [o.key for o in first] == [k.encode() for k in orders.keys("t", 20, seed=3)]
    for order in first:
        submitted = CHANNEL_ORDERS.parse(order.submitted)
        payment = CHANNEL_ORDERS.parse(order.payment)
        assert submitted.data.order_id == order.order_id == orders.order_id(order.key.decode())
        assert 1 <= len(submitted.data.lines) <= 3
        assert {line.sku for line in submitted.data.lines} <= {orders.sku(i) for i in range(orders.SKUS)}
        assert payment.data.amount == submitted.data.grand_total
    assert CHANNEL_ORDERS.parse(first[0].submitted).id == CHANNEL_ORDERS.parse(again[0].submitted).id


def test_the_3pl_answers_validate_against_the_contract():
    order = samples.order_submitted("1", [("BENCH-0001", 2, "9.99")])
    s = samples.fulfillment_planned(order, [("1", 2)]).data.shipments[0]
    request = FulfillmentRequested(
        source="/oms/order",
        subject=str(order.data.order_id),
        data=FulfillmentRequestedData(
            fulfillment_id=s.shipment_id,
            order_id=order.data.order_id,
            source_code=s.source_code,
            lines=s.lines,
            ship_to=order.data.shipping_address,
            recipient=Recipient(name="Ada Lovelace"),
            shipping_method="standard",
            requested_at=order.data.placed_at,
            ship_by=date(2026, 11, 30),
        ),
    )
    made = threepl.answers(request.to_bytes())
    assert [etype for etype, _ in made] == ["oms.fulfillment.accepted.v1", "oms.fulfillment.shipped.v1"]
    for etype, body in made:
        event = FULFILLMENT_UPDATES.parse(body)
        assert event.type == etype
        assert event.data.order_id == order.data.order_id
    shipped = FULFILLMENT_UPDATES.parse(made[1][1])
    assert [(x.line_id, x.quantity) for x in shipped.data.lines] == [("1", 2)]
    assert threepl.answers(json.dumps({"type": "oms.fulfillment.cancel_requested.v1"}).encode()) is None
