"""The fault suite: under a steady open-loop stream of mixed orders, kill, stop, restart, rebalance, duplicate and
poison; then no order is lost, no effect happens twice, no unit is oversold and every flow completes.

`make test` runs the bounded size (every kind of fault once but the rebalance); `make faults` the full size
(docs/reliability.md has its figures). The system is the suite's own (tests/faults/system.py): it kills its broker
and database."""

from __future__ import annotations

import time

import pytest

from .suite import chosen_size, markdown, run
from .system import ROOT

SIZE = chosen_size()
# A deadline for the whole run, not a measure of it: the machine is shared, and a broker restart can take a minute.
pytestmark = pytest.mark.timeout(1500 if SIZE.name == "bounded" else 5400)


async def test_under_faults_no_order_is_lost_no_effect_happens_twice_nothing_is_oversold_every_flow_completes():
    run_dir = ROOT / ".cache" / "faults" / f"{SIZE.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    outcome = await run(SIZE, run_dir)
    print(markdown(outcome))
    print(f"report: {run_dir}/report.md")
    missed = [f"{f.kind} {f.target}" for f in outcome.faults if not f.happened]
    assert not missed, f"faults that did not happen: {missed}"
    failures = dict(outcome.failures)
    assert not failures, f"the checker found {failures} (see {run_dir}/report.md)"
