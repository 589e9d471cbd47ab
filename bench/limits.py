"""The limits of this machine, measured in the same run on the same broker and database, with the services stopped:

- the minimal five-hop chain (bench/chain.py), swept like the system: the pattern's ceiling;
- Kafka's own producer and consumer performance tools (from the broker's jars), acks=all and idempotent, records the
  size of the system's mean event: the broker's raw budget;
- pgbench (TPC-B-like, synchronous_commit on): the database's raw budget;
- the brief's synchronous per-line routing (bench/baseline.py): the baseline our design is compared with.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench import baseline, chain, procstat, stats
from bench.collect import Collector, Profile
from bench.point import Target, console

REPO = Path(__file__).resolve().parent.parent
PERF_TOPIC = "bench.perf"


def kafka_libs() -> str:
    libs = os.environ.get("OMS_KAFKA_LIBS")
    if libs:
        return libs
    found = sorted((REPO / ".cache").glob("kafka-libs-*/"))
    if not found:
        raise RuntimeError("no Kafka jars: run deploy/kafka/kafka.sh fetch or set OMS_KAFKA_LIBS")
    return str(found[-1])


def pgbench() -> str:
    """pgbench from the server's own bin dir (Debian's postgresql-NN ships it), installed when missing."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench")) or (
        [Path(p)] if (p := shutil.which("pgbench")) else []
    )
    if not found:
        # Older Debian releases keep it in postgresql-contrib.
        subprocess.run(["apt-get", "install", "-y", "-q", "postgresql-contrib"], check=True, capture_output=True)
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))
    return str(found[-1])


async def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 900) -> str:
    process = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout)
    text = out.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{cmd[0]} ... {cmd[-1]} failed ({process.returncode}): {text[-800:]}")
    return text


async def kafka_tools(bootstrap: str, record_size: int, records: int) -> dict[str, Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if PERF_TOPIC not in await admin.list_topics():
            await admin.create_topics([NewTopic(PERF_TOPIC, chain.PARTITIONS, 1)])
    finally:
        await admin.close()
    java = ["java", "-Xmx512m", "-cp", f"{kafka_libs()}/*"]
    produced = await _run(
        [
            *java,
            "org.apache.kafka.tools.ProducerPerformance",
            "--topic",
            PERF_TOPIC,
            "--num-records",
            str(records),
            "--record-size",
            str(record_size),
            "--throughput",
            "-1",
            "--producer-props",
            f"bootstrap.servers={bootstrap}",
            "acks=all",
            "enable.idempotence=true",
            "linger.ms=2",
        ]
    )
    last = [line for line in produced.splitlines() if "records sent" in line][-1]
    m = re.search(
        r"([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency.*?([\d.]+) ms 50th, "
        r"([\d.]+) ms 95th, ([\d.]+) ms 99th",
        last,
    )
    producer = {"line": last.strip()}
    if m:
        producer |= {
            "records_per_s": float(m[1]),
            "mb_per_s": float(m[2]),
            "p50_ms": float(m[4]),
            "p99_ms": float(m[6]),
        }
    consumed = await _run(
        [
            *java,
            "org.apache.kafka.tools.ConsumerPerformance",
            "--bootstrap-server",
            bootstrap,
            "--topic",
            PERF_TOPIC,
            "--messages",
            str(records),
            "--group",
            "bench-perf",
            "--timeout",
            "60000",
        ]
    )
    lines = [line for line in consumed.splitlines() if line.strip() and not line.startswith(("WARN", "["))]
    consumer: dict[str, Any] = {"output": lines[-2:]}
    try:
        header = [h.strip() for h in lines[-2].split(",")]
        values = [v.strip() for v in lines[-1].split(",")]
        row = dict(zip(header, values, strict=False))
        consumer |= {"records_per_s": float(row["nMsg.sec"]), "mb_per_s": float(row["MB.sec"])}
    except (IndexError, KeyError, ValueError):
        pass
    return {"record_size": record_size, "records": records, "producer": producer, "consumer": consumer}


async def pg_bench(infra, seconds: float) -> dict[str, Any]:
    binary = pgbench()
    env = {**os.environ, "PGPASSWORD": "oms"}
    where = ["-h", "127.0.0.1", "-p", str(infra.ports.postgres), "-U", "oms"]
    await _run(
        [
            binary.replace("pgbench", "psql"),
            *where,
            "-d",
            "postgres",
            "-qc",
            "DROP DATABASE IF EXISTS bench_pgbench WITH (FORCE)",
            "-c",
            "CREATE DATABASE bench_pgbench",
        ],
        env,
    )
    await _run([binary, *where, "-i", "-q", "-s", "10", "bench_pgbench"], env)
    out: dict[str, Any] = {"scale": 10, "clients": 8, "seconds": seconds}
    for label, extra in (("tpcb_like", []), ("simple_update", ["-N"])):
        text = await _run(
            [binary, *where, "-c", "8", "-j", "2", "-M", "prepared", "-T", str(int(seconds)), *extra, "bench_pgbench"],
            env,
        )
        m = re.search(r"tps = ([\d.]+)", text)
        lat = re.search(r"latency average = ([\d.]+) ms", text)
        out[label] = {"tps": float(m[1]) if m else None, "latency_ms": float(lat[1]) if lat else None}
    return out


async def run_all(bench, infra, system_config: dict[str, Any]) -> dict[str, Any]:
    scale = bench.args.limits_scale
    sizes = system_config.get("mean_record_bytes") or {}
    mean_size = round(sum(sizes.values()) / len(sizes)) if sizes else 800
    out: dict[str, Any] = {"lines": []}

    console.print("[bold]limits[/]: Kafka's ProducerPerformance and ConsumerPerformance")
    kafka = await kafka_tools(infra.bootstrap, mean_size, max(10_000, int(500_000 * scale)))
    out["kafka"] = kafka
    if "records_per_s" in kafka["producer"]:
        p = kafka["producer"]
        out["lines"].append(
            (
                f"Kafka producer ({mean_size} B records, acks=all, idempotent)",
                f"{p['records_per_s']:,.0f} records/s, {p['mb_per_s']:.1f} MB/s, p99 {p['p99_ms']:.0f} ms "
                f"(÷ 8 messages: {p['records_per_s'] / 8:,.0f} orders/s)",
            )
        )
    if "records_per_s" in kafka["consumer"]:
        c = kafka["consumer"]
        out["lines"].append(("Kafka consumer", f"{c['records_per_s']:,.0f} records/s, {c['mb_per_s']:.1f} MB/s"))

    console.print("[bold]limits[/]: pgbench")
    pg = await pg_bench(infra, max(5.0, 30 * scale))
    out["pgbench"] = pg
    for label in ("tpcb_like", "simple_update"):
        if pg[label]["tps"]:
            out["lines"].append(
                (
                    f"pgbench {label.replace('_', '-')} (scale 10, 8 clients, synchronous_commit on)",
                    f"{pg[label]['tps']:,.0f} tps, {pg[label]['latency_ms']:.1f} ms average",
                )
            )

    console.print("[bold]limits[/]: the brief's synchronous routing (baseline)")
    runs = []
    for workers in (1, 4, 16):
        runs.append(await baseline.run(infra.pg_url(), workers, max(5.0, 20 * scale), bench.args.seed))
    out["baseline"] = runs
    best = max(runs, key=lambda r: r["orders_per_s"])
    out["baseline_best"] = best["orders_per_s"]
    for r in runs:
        out["lines"].append(
            (
                f"baseline: routeOrder, {r['workers']} connection(s), closed loop",
                f"{r['orders_per_s']:,.0f} orders/s, p50 {r['latency_s']['p50'] * 1000:.1f} ms, "
                f"p99 {r['latency_s']['p99'] * 1000:.1f} ms",
            )
        )

    console.print("[bold]limits[/]: the minimal five-hop chain")
    chain_config = await chain_sweep(bench, infra, sizes, system_config.get("sustained"))
    out["chain"] = chain_config
    out["chain_sustained"] = chain_config.get("sustained")
    out["lines"].insert(
        0,
        (
            "minimal five-hop chain (same pattern, no domain logic), sustained",
            f"{chain_config['sustained']:,.0f} orders/s" if chain_config.get("sustained") else "–",
        ),
    )
    return out


async def chain_sweep(bench, infra, sizes: dict[str, int], system_sustained: float | None) -> dict[str, Any]:
    pg = infra.pg_url()
    await _run(
        [sys.executable, "-m", "bench.chain", "setup", "--bootstrap", infra.bootstrap, "--postgres", pg],
        {**os.environ, "PYTHONPATH": str(REPO)},
    )
    processes = []
    config: dict[str, Any] = {"label": "minimal five-hop chain", "points": [], "sizes": sizes}
    collector = None
    try:
        watch = procstat.Watch()
        for stage in chain.STAGES:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.chain",
                "run",
                "--stage",
                stage,
                "--bootstrap",
                infra.bootstrap,
                "--postgres",
                pg,
                "--sizes",
                json.dumps(sizes),
                stdout=asyncio.subprocess.PIPE,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 60)
            if b"ready" not in line:
                raise RuntimeError(f"chain stage {stage} did not start")
            processes.append(process)
            watch.add(f"chain {stage}", process.pid)
        watch.add("kafka", infra.kafka_pid())
        watch.add("postgres", infra.postgres_pid(), group=True)
        watch.add("collector (harness)", os.getpid())
        profile = Profile(topics=chain.TOPICS, channel_topic=chain.CHANNEL, kinds=dict(chain.KINDS), mail_marker=None)
        collector = Collector(infra.bootstrap, profile)
        await collector.start()
        hops = ("accepted", "paid", "planned", "reserved", "requested", "mail")
        target = Target(
            "chain",
            infra.bootstrap,
            chain.CHANNEL,
            collector,
            watch,
            terminal=("requested", "mail"),
            hops=hops,
            groups=("bench-chain.",),
            channels=bench.args.channels,
        )
        config["idle_cores"] = await procstat.idle(watch, bench.args.idle)
        rates = [float(r) for r in bench.args.chain_rates.split(",")] if bench.args.chain_rates else None
        start = max(bench.args.start, system_sustained or 0)
        search = stats.Search(
            start=start, factor=bench.args.factor, precision=bench.args.precision, max_points=bench.args.max_points
        )
        at_fractions, bench.args.at_fractions = bench.args.at_fractions, False
        try:
            await bench.sweep(target, config, search, rates)
        finally:
            bench.args.at_fractions = at_fractions
    finally:
        if collector is not None:
            await collector.stop()
        for process in processes:
            if process.returncode is None:
                process.terminate()
                await process.wait()
    return config
