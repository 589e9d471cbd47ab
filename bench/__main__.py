"""`python -m bench sweep|quick`: the end-to-end benchmark (docs/performance.md).

It starts a system of its own (by default broker 20092, PostgreSQL 16132, services 18081-18084, SMTP 18025: see the
--*-port options; state under .cache/bench/<timestamp>), plays the channels and the sources, measures, stops
everything it started, and writes bench/results/<timestamp>/{results.json,report.md,latency.png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.progress import Progress

from bench import checks, procstat, report, stats
from bench.collect import Collector, system_profile
from bench.point import Target, Timing, console, progress_bar, run_point
from bench.system import REPO, Infra, Ports, Services, mail_catcher

# The rate of the unmeasured warm-up after a system starts: low enough for any machine to keep up with.
WARM_UP_RATE = 50.0


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    load = os.getloadavg()
    return f"{os.cpu_count()} cores ({cpu}), load average at start {load[0]:.2f}, Python {platform.python_version()}"


class ThreePL:
    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> int:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.threepl",
            "--bootstrap",
            self.bootstrap,
            "--topics",
            ",".join(self.topics),
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        if b"ready" not in line:
            raise RuntimeError("the 3PL simulator did not start")
        return self.process.pid

    async def stop(self) -> None:
        if self.process and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.out = Path(args.out) if args.out else REPO / "bench" / "results" / self.stamp
        self.state = REPO / ".cache" / "bench" / self.stamp
        first = args.http_port
        self.ports = Ports(
            kafka=args.kafka_port,
            postgres=args.pg_port,
            order=first,
            routing=first + 1,
            inventory=first + 2,
            notifications=first + 3,
            smtp=args.smtp_port,
        )
        self.timing = Timing(warmup=args.warmup, window=args.window, drain=args.drain)
        self.results: dict[str, Any] = {
            "started": self.stamp,
            "machine": machine(),
            "command": " ".join(shlex.quote(a) for a in sys.argv),
            "criteria": vars(stats.Criteria()),
            "timing": vars(self.timing),
            "configs": [],
        }
        self.point_no = 0

    # -- the system under test ------------------------------------------------------------------------------------

    async def with_system(self, label: str, extra_env: dict[str, str], body) -> dict[str, Any]:
        """Fresh broker and database, the services, the 3PL and the collector; `body(target, services)`; then stop
        everything. Returns the config's results."""
        # No commas or spaces: PostgreSQL takes its socket directory from a comma-separated list.
        infra = Infra(self.state / "".join(c if c.isalnum() else "-" for c in label), self.ports)
        services = Services(infra, infra.root / "run", extra_env)
        threepl = ThreePL(infra.bootstrap, [])
        collector: Collector | None = None
        config: dict[str, Any] = {"label": label, "env": extra_env, "points": [], "mail_catcher": mail_catcher()}
        try:
            console.print(f"[bold]{label}[/]: starting Kafka :{self.ports.kafka}, PostgreSQL :{self.ports.postgres}")
            infra.start()
            console.print(f"[bold]{label}[/]: starting the services (deploy/run.sh; log {services.log})")
            services.start()
            threepl.topics = services.request_topics()
            threepl_pid = await threepl.start()
            collector = Collector(infra.bootstrap, system_profile(threepl.topics))
            await collector.start()
            watch = procstat.Watch()
            for name, pid in services.pids().items():
                watch.add(name if name != "mail" else "mail catcher", pid)
            watch.add("kafka", infra.kafka_pid())
            watch.add("postgres", infra.postgres_pid(), group=True)
            watch.add("3pl simulator", threepl_pid)
            watch.add("collector (harness)", os.getpid())
            target = Target("system", infra.bootstrap, "oms.channel.orders.v1", collector, watch)
            target.channels = self.args.channels
            await self.warm_up(target, label, infra)
            config["idle_cores"] = await procstat.idle(watch, self.args.idle)
            config["sampler"] = None
            await body(target, services, config)
            try:
                config["durability"] = await checks.all_checks(infra.bootstrap, infra.pg_url, services.env())
            except Exception as error:  # the figures stay; the report says the check failed
                console.print(f"[red]durability check failed: {error!r}[/]")
                config["durability_error"] = repr(error)
                config["durability"] = None
            sampler = (config["durability"] or {}).get("sampler", {"default": "?", "always_on": "?"})
            asked = extra_env.get("OTEL_TRACES_SAMPLER")
            config["sampler"] = sampler["default"] if asked is None else sampler.get(asked, asked)
            config["mean_record_bytes"] = collector.mean_sizes()
            if self.args.limits and label == "services, default settings":
                await self.stop_system(collector, threepl, services)
                collector = None
                from bench import limits

                self.results["limits"] = await limits.run_all(self, infra, config)
        finally:
            await self.stop_system(collector, threepl, services)
            infra.stop(remove=not self.args.keep)
        return config

    async def warm_up(self, target: Target, label: str, infra: Infra) -> None:
        """Orders at WARM_UP_RATE for --system-warmup seconds, measured nowhere, before the idle figures and the
        first point: the broker starts cold, and its JIT compiling its request paths took as much CPU again as the
        work itself in the first point after a start (Kafka at 50/s: 0.51 cores in the first of three points, 0.31 and
        0.28 in the next two; docs/performance.md). Then the databases get the statistics a running system's have."""
        seconds = self.args.system_warmup
        if seconds <= 0:
            return
        console.print(f"[bold]{label}[/]: warming up ({seconds:g} s at {WARM_UP_RATE:g} orders/s, not measured)")
        timing = Timing(warmup=0.0, window=seconds, drain=self.timing.drain)
        await run_point(target, WARM_UP_RATE, timing, f"{self.stamp}-warm-up", self.args.seed - 1, None)
        await infra.analyze()
        await asyncio.sleep(2)

    async def stop_system(self, collector, threepl, services) -> None:
        if collector is not None:
            await collector.stop()
        await threepl.stop()
        services.stop()

    async def point(self, target: Target, rate: float, progress: Progress) -> dict[str, Any]:
        self.point_no += 1
        tag = f"{self.stamp}-{self.point_no}"
        result = await run_point(target, rate, self.timing, tag, self.args.seed + self.point_no, progress)
        for reason in result["verdict"]["reasons"]:
            console.print(f"  {target.name} {rate:g}/s: {reason}")
        for reason in result["every_hop"]["reasons"]:
            if reason not in result["verdict"]["reasons"]:
                console.print(f"  {target.name} {rate:g}/s, beyond the fulfillment request: {reason}")
        # A breath between points: the services' background work (stock levels, sweeps) settles.
        await asyncio.sleep(2)
        return result

    async def sweep(self, target: Target, config: dict[str, Any], search: stats.Search, rates: list[float] | None):
        history: list[tuple[float, bool]] = []
        with progress_bar() as progress:
            while True:
                if rates is not None:
                    if len(history) == len(rates):
                        break
                    rate = rates[len(history)]
                else:
                    rate = search.next_rate(history)
                    if rate is None:
                        break
                result = await self.point(target, rate, progress)
                config["points"].append(result)
                history.append((rate, result["verdict"]["sustained"]))
            sustained = stats.sustained_rate(history)
            config["sustained"] = sustained
            config["every_hop_sustained"] = stats.sustained_rate(
                [(p["offered_rate"], p["every_hop"]["sustained"]) for p in config["points"]]
            )
            if sustained and self.args.at_fractions:
                for key, fraction in (("at_50", 0.5), ("at_90", 0.9)):
                    rate = round(sustained * fraction, 1)
                    result = await self.point(target, rate, progress)
                    config[key] = result
                    config["points"].append(result)

    # -- modes --------------------------------------------------------------------------------------------------------

    async def quick(self) -> None:
        self.args.limits = self.args.all_spans = False

        async def body(target: Target, services: Services, config: dict[str, Any]) -> None:
            with progress_bar() as progress:
                result = await self.point(target, self.args.rate, progress)
            config["points"].append(result)
            config["quick"] = result
            config["sustained"] = self.args.rate if result["verdict"]["sustained"] else None
            config["every_hop_sustained"] = self.args.rate if result["every_hop"]["sustained"] else None

        config = await self.with_system("services, default settings", {}, body)
        self.results["configs"].append(config)

    async def full(self) -> None:
        rates = [float(r) for r in self.args.rates.split(",")] if self.args.rates else None
        search = stats.Search(
            start=self.args.start,
            factor=self.args.factor,
            precision=self.args.precision,
            max_points=self.args.max_points,
        )

        async def default_body(target: Target, services: Services, config: dict[str, Any]) -> None:
            await self.sweep(target, config, search, rates)

        default = await self.with_system("services, default settings", {}, default_body)
        self.results["configs"].append(default)
        chain = (self.results.get("limits") or {}).get("chain")
        if chain:
            self.results["configs"].append(chain)
        if self.args.all_spans:
            start = default.get("sustained") or search.start
            all_search = stats.Search(
                start=start, factor=1.25, precision=self.args.precision, max_points=max(3, self.args.max_points // 2)
            )

            async def spans_body(target: Target, services: Services, config: dict[str, Any]) -> None:
                await self.sweep(target, config, all_search, rates)

            env = {"OTEL_TRACES_SAMPLER": "always_on"}
            spans = await self.with_system("services, every span exported", env, spans_body)
            self.results["configs"].append(spans)

    def finish(self) -> None:
        configs = self.results["configs"]
        default = configs[0] if configs else {}
        if default.get("durability"):
            self.results["durability"] = checks.durability_lines(default["durability"])
        summary: dict[str, str] = {}
        for config in configs:
            summary[f"sustained (→ fulfillment requested), {config['label']}"] = report._rate(config.get("sustained"))
            summary[f"every hop kept up (highest measured), {config['label']}"] = report._rate(
                config.get("every_hop_sustained")
            )
        limits = self.results.get("limits") or {}
        chain = limits.get("chain_sustained")
        if chain and default.get("sustained"):
            summary["our rate as a fraction of the minimal chain's"] = f"{default['sustained'] / chain:.0%}"
        baseline = limits.get("baseline_best")
        if baseline and default.get("sustained"):
            summary["our rate / the brief's synchronous routing"] = f"{default['sustained'] / baseline:.1f}x"
        self.results["summary"] = summary
        paths = report.write(self.out, self.results)
        console.print(f"\nresults: {paths['json']}\n         {paths['markdown']}\n         {paths['png']}")
        sys.stdout.write(paths["markdown"].read_text())
        if not self.args.keep:
            shutil.rmtree(self.state, ignore_errors=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("quick", "sweep"))
    parser.add_argument("--rate", type=float, default=50.0, help="quick: orders/s (50)")
    parser.add_argument("--rates", help="sweep: these rates (comma-separated) instead of the search")
    parser.add_argument("--start", type=float, default=100.0, help="search: first rate (100/s)")
    parser.add_argument("--factor", type=float, default=2.0, help="search: step up while sustained (x2)")
    parser.add_argument("--precision", type=float, default=0.1, help="search: stop when within this ratio (10 %%)")
    parser.add_argument("--max-points", type=int, default=9, help="search: at most this many points (9)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the window (5)")
    parser.add_argument("--window", type=float, default=30.0, help="measured seconds per point (30)")
    parser.add_argument("--drain", type=float, default=60.0, help="seconds a point may take to drain (60)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--channels", type=int, default=4, help="channels the orders come from (4)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measured before the load (10)")
    parser.add_argument(
        "--system-warmup",
        type=float,
        default=30.0,
        help=f"seconds of orders at {WARM_UP_RATE:g}/s after the start, not measured, to warm the JIT (30; 0: none)",
    )
    parser.add_argument(
        "--no-at-fractions",
        dest="at_fractions",
        action="store_false",
        help="skip the points at 50 %% and 90 %% of the sustained rate",
    )
    parser.add_argument(
        "--no-all-spans", dest="all_spans", action="store_false", help="skip the sweep with every span exported"
    )
    parser.add_argument(
        "--no-limits",
        dest="limits",
        action="store_false",
        help="skip the minimal chain, Kafka's and PostgreSQL's tools and the baseline",
    )
    parser.add_argument(
        "--limits-scale", type=float, default=1.0, help="scale the limits' durations and counts (0.1 for a smoke run)"
    )
    parser.add_argument("--chain-rates", help="the minimal chain at these rates instead of its search")
    parser.add_argument("--kafka-port", type=int, default=20092)
    parser.add_argument("--pg-port", type=int, default=16132)
    parser.add_argument(
        "--http-port", type=int, default=18081, help="the order service's port; the others follow (18081)"
    )
    parser.add_argument("--smtp-port", type=int, default=18025, help="the mail catcher's port (18025)")
    parser.add_argument("--out", help="results directory (bench/results/<timestamp>)")
    parser.add_argument("--keep", action="store_true", help="keep the broker's and database's state afterwards")
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> None:
    bench = Bench(args)
    started = time.monotonic()
    try:
        if args.mode == "quick":
            await bench.quick()
        else:
            await bench.full()
    finally:
        bench.results["duration_s"] = round(time.monotonic() - started)
        if bench.results["configs"]:
            bench.finish()
            json.dumps(bench.results, default=str)


def main() -> None:
    asyncio.run(amain(parse(sys.argv[1:])))


if __name__ == "__main__":
    main()
