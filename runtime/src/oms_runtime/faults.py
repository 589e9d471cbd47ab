"""Crash points for the fault suite (tests/faults): end the process at a named point, as `kill -9` would there.

A kill from outside lands wherever the process happens to be; the windows that matter most for effectively-once
effects are a few microseconds wide and almost never hit. These points put the crash exactly there:

- `consumer.after_commit`: a batch's database transaction (inbox, effects, outbox) has committed and its offsets
  are not committed yet: Kafka redelivers the batch, and the inbox must make the redelivery a no-op;
- `relay.after_publish`: the broker has acknowledged a pass's records and their outbox rows are not deleted yet (the
  transaction is open, so the rows stay): the next relay publishes them again, and consumers' inboxes must absorb
  the copies.

Inert unless `OMS_FAULT_CRASH_AT` names points, as `point:probability[,point:probability...]`, e.g.
`OMS_FAULT_CRASH_AT=consumer.after_commit:0.05`: each time the process reaches that point it exits with status 137
with that probability, after one line on stderr (`oms-fault: crash at <point>`) saying so. The variable is read once,
at import: unset, `ARMED` is False and a call site costs one global lookup (`if faults.ARMED:`), nothing more. A
misspelled point or a probability outside 0..1 stops the process at start, so a fault run cannot silently inject
nothing.
"""

from __future__ import annotations

import os
import random

POINTS = frozenset({"consumer.after_commit", "relay.after_publish"})
ENV = "OMS_FAULT_CRASH_AT"
# What a crash at a point exits with: the status a shell reports for a process killed by SIGKILL (128 + 9).
EXIT_STATUS = 137


def parse(spec: str) -> dict[str, float]:
    """`point:probability[,point:probability...]` as {point: probability}; empty for an empty spec."""
    odds: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        point, sep, probability = part.partition(":")
        if point not in POINTS:
            raise ValueError(f"{ENV}: unknown crash point {point!r} (known: {', '.join(sorted(POINTS))})")
        try:
            value = float(probability) if sep else 1.0
        except ValueError:
            raise ValueError(f"{ENV}: probability of {point} is not a number: {probability!r}") from None
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{ENV}: probability of {point} must be between 0 and 1, not {value}")
        odds[point] = value
    return odds


_ODDS = parse(os.environ.get(ENV, ""))
ARMED = bool(_ODDS)


def reach(point: str) -> None:
    """The process is at `point`: end it here with the configured probability. Call only under `if ARMED:`."""
    odds = _ODDS.get(point)
    if odds is not None and random.random() < odds:
        # Not through logging: a handler may buffer, and nothing after os._exit is flushed. One write, then gone.
        os.write(2, f"oms-fault: crash at {point} (pid {os.getpid()})\n".encode())
        os._exit(EXIT_STATUS)
