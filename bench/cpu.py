"""`python -m bench.cpu`: CPU milliseconds per order of each process, from the first order sent until every order
is through and every consumer group has caught up.

Unlike a point's window (bench/point.py), this counts all the work the orders caused, however long the system took
to do it, so the figure does not depend on the machine being quiet: another process's load makes the system slower,
not its work per order larger. It is what the steps of issue 10 were measured with while the machine was shared
(docs/performance.md). `net of idle` subtracts what each process burnt idle (measured before the load) for as long
as the run took. With `--spy DIR` it records a py-spy profile of each service during the load (raw, collapsed
stacks: DIR/<service>.txt), sampled only while the service holds the interpreter (`--gil`) and without stopping
it (`--nonblocking`). On a full box that includes time the kernel keeps a thread off the CPU while it holds the
interpreter, most often right after a write that woke its peer (docs/performance.md, step 35)."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import checks
from bench.__main__ import Bench, parse
from bench.point import Target, Timing, run_point
from bench.system import REPO, SERVICES, Services


async def measure(bench: Bench, rate: float, seconds: float, spy: Path | None) -> dict[str, Any]:
    async def body(target: Target, services: Services, config: dict[str, Any]) -> None:
        profilers = []
        if spy is not None:
            for name, pid in services.pids().items():
                if name in SERVICES:
                    command = [str(REPO / ".venv/bin/py-spy"), "record", "--pid", str(pid), "--gil", "--nonblocking"]
                    command += ["--duration", str(round(seconds)), "--rate", "50", "--format", "raw"]
                    command += ["-o", str(spy / f"{name}.txt")]
                    profilers.append(
                        await asyncio.create_subprocess_exec(
                            *command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                        )
                    )
        start, t0 = target.watch.cpu(), time.time()
        result = await run_point(target, rate, Timing(warmup=0, window=seconds, drain=600), bench.stamp, 7, None)
        end, took = target.watch.cpu(), time.time() - t0
        for profiler in profilers:
            await profiler.wait()
        orders, idle = result["orders_total"], config["idle_cores"]
        config["cpu"] = {
            "orders": orders,
            "drained": result["drained"],
            "seconds": round(took, 1),
            "idle_cores": idle,
            "ms_per_order": {
                name: {
                    "raw": round((end[name] - start[name]) / orders * 1000, 2),
                    "net of idle": round((end[name] - start[name] - idle.get(name, 0.0) * took) / orders * 1000, 2),
                }
                for name in end
                if name in start
            },
        }

    return await bench.with_system("services, default settings", {}, body)


async def _skip_checks(*_: Any, **__: Any) -> dict[str, Any]:
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="orders/s offered (50)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of load (60)")
    parser.add_argument("--spy", type=Path, help="record a py-spy profile of each service into this directory")
    args, rest = parser.parse_known_args()
    if args.spy is not None:
        args.spy.mkdir(parents=True, exist_ok=True)
    bench = Bench(parse(["quick", "--no-limits", "--idle", "20", *rest]))
    checks.all_checks = _skip_checks  # durability is the sweep's business; here only CPU counts
    config = asyncio.run(measure(bench, args.rate, args.seconds, args.spy))
    print(json.dumps(config["cpu"], indent=1))


if __name__ == "__main__":
    main()
