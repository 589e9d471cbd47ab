"""What routing publishes about the network: sources with their shipping calendar, and channels' rule chains."""

import pytest
from pydantic import ValidationError

from oms_contracts.routing import RuleChainData, Source


def test_a_source_has_no_cut_off_no_capacity_and_default_transit_unless_told(make_document):
    source = Source.model_validate(make_document("oms.routing.source_upserted.v1")["data"])
    assert (source.timezone, source.cutoff_time, source.daily_capacity) == ("UTC", None, None)
    assert (source.transit_days.standard, source.transit_days.express) == (3, 1)


def test_a_cut_off_is_a_local_time_in_an_iana_zone(make_document):
    data = {**make_document("oms.routing.source_upserted.v1")["data"], "timezone": "Europe/Berlin"}
    source = Source.model_validate({**data, "cutoff_time": "14:30", "daily_capacity": 500})
    assert (source.cutoff_time.hour, source.cutoff_time.minute, source.daily_capacity) == (14, 30, 500)
    with pytest.raises(ValidationError, match="not an IANA time zone"):
        Source.model_validate({**data, "timezone": "Mars/Olympus"})


def test_a_channel_rule_chain_is_checked_like_an_orders():
    chain = RuleChainData.model_validate(
        {"channel": "web-eu", "rules": ["nearest", "lowest_cost"], "set_by": "cs", "set_at": "2026-11-22T09:00:00Z"}
    )
    assert chain.channel == "web-eu"
    with pytest.raises(ValidationError, match="fewest_shipments always comes first"):
        RuleChainData.model_validate({**chain.model_dump(), "rules": ["nearest", "fewest_shipments"]})
