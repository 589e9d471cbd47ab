"""One point of a sweep: offer `rate` orders/s for warm-up + window seconds, let the system drain, and measure.

The window is defined on the schedule (planned submission times), so its orders are exactly rate x window. CPU is the
difference of /proc snapshots taken at the window's start and end, divided by the orders of the window; peak RSS is
sampled once a second during the point. The point's orders are dropped from the collector afterwards, so every
point starts from zero counters."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench import orders, procstat, stats
from bench.collect import Collector, consumer_lag

REPO = Path(__file__).resolve().parent.parent

console = Console(stderr=True)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("sent · {task.fields[done]} through · generator lag max {task.fields[lag]:.0f} ms"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


@dataclass
class Target:
    """What a point loads: the real system or the minimal chain."""

    name: str
    bootstrap: str
    channel_topic: str
    collector: Collector
    watch: procstat.Watch
    terminal: tuple[str, ...] = stats.TERMINAL  # what a point waits for (drain) and "every hop" is judged on
    judged: tuple[str, ...] = stats.JUDGED  # what "sustained" is decided on
    groups: tuple[str, ...] = ("oms-", "bench-3pl")
    channels: int = (
        4  # how many channels the orders come from  # consumer groups that must have caught up between points
    )
    hops: tuple[str, ...] = stats.HOPS
    criteria: stats.Criteria = field(default_factory=stats.Criteria)


@dataclass
class Timing:
    warmup: float = 5.0
    window: float = 30.0
    drain: float = 60.0  # at most, after the last order was sent


async def run_point(
    target: Target, rate: float, timing: Timing, tag: str, seed: int, progress: Progress | None
) -> dict[str, Any]:
    seconds = timing.warmup + timing.window
    count = round(rate * seconds)
    ids = [str(orders.order_id(k)) for k in orders.keys(tag, count, seed, target.channels)]
    label = f"{target.name} {rate:g}/s"
    task = progress.add_task(f"{label}: preparing", total=count, done=0, lag=0.0) if progress else None
    generator = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.load",
        "--bootstrap",
        target.bootstrap,
        "--topic",
        target.channel_topic,
        "--tag",
        tag,
        "--seed",
        str(seed),
        "--channels",
        str(target.channels),
        "--rate",
        str(rate),
        "--seconds",
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert generator.stdout is not None
    watch = target.watch
    watch.add("load generator", generator.pid)
    t0 = None
    final: dict[str, Any] = {}
    cpu_start = cpu_end = None
    tracks = target.collector.tracks

    def completed() -> int:
        return sum(1 for i in ids if (t := tracks.get(i)) is not None and t.complete(target.terminal))

    async def reader() -> None:
        nonlocal t0, final
        assert generator.stdout is not None
        async for line in generator.stdout:
            message = json.loads(line)
            if message["event"] == "start":
                t0 = message["t0"]
            elif message["event"] == "progress" and progress is not None and task is not None:
                progress.update(task, completed=message["sent"], lag=message["lag_max"] * 1000)
            elif message["event"] == "done":
                final = message

    read = asyncio.create_task(reader())
    while t0 is None and not read.done():  # noqa: ASYNC110 - the reader task sets t0
        await asyncio.sleep(0.05)
    if t0 is None:
        raise RuntimeError("the load generator exited before it started")
    window_start, window_end = t0 + timing.warmup, t0 + seconds
    if progress is not None and task is not None:
        progress.update(task, description=f"{label}: sending")
    watch.reset_peaks()
    last_refresh = 0.0
    while not read.done():
        now = time.time()
        if cpu_start is None and now >= window_start:
            cpu_start = watch.cpu()
        if cpu_end is None and now >= window_end:
            cpu_end = watch.cpu()
        if now - last_refresh > 1:
            # Once a second: scanning /proc for PostgreSQL's backends and counting costs the harness CPU too.
            watch.sample_rss()
            if progress is not None and task is not None:
                progress.update(task, done=completed())
            last_refresh = now
        await asyncio.sleep(0.25 if cpu_start is None or cpu_end is None else 0.5)
    await generator.wait()
    if cpu_start is None:
        cpu_start = watch.cpu()
    if cpu_end is None:
        cpu_end = watch.cpu()
    # Drain: until every order of the point is through and every consumer group has caught up (what the orders
    # caused besides, such as stock levels, is consumed too), or the drain time is up.
    if progress is not None and task is not None:
        progress.update(task, description=f"{label}: draining", completed=count)
    deadline = time.monotonic() + timing.drain
    lag = None
    while time.monotonic() < deadline:
        done = completed()
        watch.sample_rss()
        if progress is not None and task is not None:
            progress.update(task, done=done)
        if done == count:
            lag = await consumer_lag(target.bootstrap, target.groups)
            if lag == 0:
                break
        await asyncio.sleep(1.0)
    if progress is not None and task is not None:
        progress.update(task, description=f"{label}: measured", done=completed())
    watch.processes = [p for p in watch.processes if p.name != "load generator"]
    result = measure(target, rate, timing, ids, t0, window_start, window_end, final, cpu_start, cpu_end)
    result["drained"] = completed() == count and lag == 0
    result["consumer_lag_after_drain"] = lag
    # Reset the counters for the next point.
    for i in ids:
        tracks.pop(i, None)
    if progress is not None and task is not None:
        verdict = "sustained" if result["verdict"]["sustained"] else "NOT sustained"
        progress.update(task, description=f"{label}: {verdict}")
    return result


def measure(
    target: Target,
    rate: float,
    timing: Timing,
    ids: list[str],
    t0: float,
    window_start: float,
    window_end: float,
    final: dict[str, Any],
    cpu_start: dict[str, float],
    cpu_end: dict[str, float],
) -> dict[str, Any]:
    tracks = target.collector.tracks
    interval = 1.0 / rate
    planned = [round((t0 + i * interval) * 1000) for i in range(len(ids))]
    pairs = [(p, tracks.get(i) or stats.OrderTrack()) for p, i in zip(planned, ids, strict=True)]
    window = (round(window_start * 1000), round(window_end * 1000))
    generator = {
        "generator_lag_p99_s": final.get("lag_p99", float("inf")),
        "generator_lag_max_s": final.get("lag_max", float("inf")),
        "generator_sent": final.get("sent", 0),
        "generator_planned": final.get("planned", len(ids)),
    }
    common = {"offered_rate": rate, "window": window, "tracks": pairs, "criteria": target.criteria, **generator}
    verdict = stats.judge(**common, terminal=target.judged)
    every_hop = stats.judge(**common, terminal=target.terminal)
    in_window = [t for p, t in pairs if window[0] <= p < window[1]]
    latency = {}
    for hop in target.hops:
        values = [lat[hop] for t in in_window if hop in (lat := t.latencies())]
        latency[hop] = stats.summary(values)
    throughput = {}
    for hop in target.terminal:
        reached = sum(1 for _, t in pairs if (at := t.times()[hop]) is not None and window[0] <= at < window[1])
        throughput[hop] = reached / timing.window
    n = len(in_window)
    cpu = {name: cpu_end[name] - cpu_start[name] for name in cpu_end if name in cpu_start}
    return {
        "target": target.name,
        "offered_rate": rate,
        "warmup_s": timing.warmup,
        "window_s": timing.window,
        "orders_in_window": n,
        "orders_total": len(ids),
        "incomplete": sum(1 for _, t in pairs if not t.complete(target.terminal)),
        "replanned": sum(1 for _, t in pairs if t.replanned),
        "generator": {k: final.get(k) for k in ("planned", "sent", "failed_messages", "lag_p50", "lag_p99", "lag_max")},
        "verdict": {"sustained": verdict.sustained, "valid": verdict.valid, "reasons": verdict.reasons},
        "every_hop": {"sustained": every_hop.sustained, "reasons": every_hop.reasons, "hops": list(target.terminal)},
        "latency_s": latency,
        "throughput_per_s": throughput,
        "cpu_s_per_order": {name: c / n for name, c in cpu.items()} if n else {},
        "cpu_cores": {name: c / timing.window for name, c in cpu.items()},
        "peak_rss_mb": {name: round(kb / 1024, 1) for name, kb in target.watch.peaks().items()},
        "dead_letters": target.collector.dead_letters,
    }
