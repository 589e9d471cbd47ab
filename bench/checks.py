"""Durability is not traded for the figures: read the settings in force from the running pieces and print them.

- the relay's producer, as the runtime builds it: acks and idempotence (aiokafka's own fields);
- the broker: producer ids it holds for our topics (an idempotent producer has one; a plain producer none), and
  the topics' durability configs;
- every subscriber of every service, as its app wires it: FastStream's ack policy (MANUAL: auto-commit off, the
  runtime commits offsets after the database transaction);
- PostgreSQL, in each service's database: fsync, synchronous_commit, full_page_writes, and any per-database or
  per-role override;
- the trace sampler the services' telemetry installs, with and without OTEL_TRACES_SAMPLER.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg

REPO = Path(__file__).resolve().parent.parent
SERVICES = ("order", "routing", "inventory", "notifications")


async def relay_producer(bootstrap: str) -> dict[str, Any]:
    from oms_runtime.outbox import kafka_producer

    producer = kafka_producer(bootstrap, "bench-durability-probe")
    try:
        acks = producer._sender._acks
        return {"acks": "all" if acks == -1 else acks, "idempotence": producer._txn_manager is not None}
    finally:
        # Never started: close its client without a connection (and tell aiokafka it is closed).
        await producer.client.close()
        producer._closed = True


def subscribers(env: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    """Each service's subscriptions and their ack policy, read from the app object the service runs."""
    code = (
        "import importlib, json, sys\n"
        "svc = importlib.import_module(f'oms_{sys.argv[1]}.app').service\n"
        "print(json.dumps([{'topics': ','.join(s.topic_names), 'group': str(s.group_id), "
        "'ack_policy': str(s.ack_policy)} for s in svc.broker.subscribers]))\n"
    )
    out = {}
    for service in SERVICES:
        result = subprocess.run(
            [sys.executable, "-c", code, service], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"could not load oms_{service}.app: {result.stderr.strip()[-300:]}")
        out[service] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


async def postgres(url_of) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for service in SERVICES:
        conn = await asyncpg.connect(url_of(f"oms_{service}"))
        try:
            settings = {
                name: await conn.fetchval(f"SHOW {name}")
                for name in ("fsync", "synchronous_commit", "full_page_writes", "wal_sync_method")
            }
            overrides = await conn.fetch(
                "SELECT coalesce(d.datname, '*') AS db, coalesce(r.rolname, '*') AS role, s.setconfig "
                "FROM pg_db_role_setting s LEFT JOIN pg_database d ON d.oid = s.setdatabase "
                "LEFT JOIN pg_roles r ON r.oid = s.setrole"
            )
            settings["overrides"] = [f"{r['db']}/{r['role']}: {r['setconfig']}" for r in overrides]
            out[service] = settings
        finally:
            await conn.close()
    # A service could still lower it per session or transaction; none of their code does.
    grep = subprocess.run(  # noqa: ASYNC221 - once, before any load
        ["grep", "-rlE", "synchronous_commit|fsync", "services", "runtime/src"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    out["code_setting_it"] = grep.stdout.split()
    return out


async def broker(bootstrap: str, libs: str | None) -> dict[str, Any]:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = ["oms.channel.orders.v1", "oms.order.events.v1", "oms.routing.plans.v1"]
        described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
        configs = {}
        wanted = ("min.insync.replicas", "unclean.leader.election.enable", "flush.messages", "message.timestamp.type")
        for response in described:
            for resource in response.resources:
                _, _, _, name, entries = resource[:5]
                configs[name] = {e[0]: e[1] for e in entries if e[0] in wanted}
    finally:
        await admin.close()
    producers = None
    if libs:
        tool = ["java", "-Xmx128m", "-cp", f"{libs}/*", "org.apache.kafka.tools.TransactionsCommand"]
        where = ["--topic", "oms.order.events.v1", "--partition", "0"]
        result = subprocess.run(  # noqa: ASYNC221 - once, after the load
            [*tool, "--bootstrap-server", bootstrap, "describe-producers", *where],
            capture_output=True,
            text=True,
            timeout=120,
        )
        rows = [line for line in result.stdout.splitlines()[1:] if line.strip()]
        producers = {"idempotent producer ids on oms.order.events.v1[0]": len(rows), "table": result.stdout.strip()}
    return {"topics": configs, "producers": producers}


def sampler(env: dict[str, str]) -> dict[str, str]:
    """The sampler runtime/telemetry.py installs: by default, and with the standard variable set to always_on and
    always_off (if these differ, the runtime honours OTEL_TRACES_SAMPLER)."""
    code = (
        "from oms_runtime import telemetry\n"
        "print(telemetry.setup_tracing('bench-probe', None).sampler.get_description())\n"
    )
    out = {}
    for label, value in (("default", None), ("always_on", "always_on"), ("always_off", "always_off")):
        probe_env = {k: v for k, v in env.items() if not k.startswith("OTEL_TRACES_SAMPLER")}
        if value:
            probe_env["OTEL_TRACES_SAMPLER"] = value
        result = subprocess.run([sys.executable, "-c", code], env=probe_env, capture_output=True, text=True, timeout=60)
        out[label] = result.stdout.strip() or result.stderr.strip()[-200:]
    out["honours OTEL_TRACES_SAMPLER"] = str(out["always_on"] != out["always_off"])
    return out


async def all_checks(bootstrap: str, url_of, service_env: dict[str, str]) -> dict[str, Any]:
    return {
        "relay_producer": await relay_producer(bootstrap),
        "broker": await broker(bootstrap, os.environ.get("OMS_KAFKA_LIBS") or _default_libs()),
        "subscribers": await asyncio.to_thread(subscribers, service_env),
        "postgres": await postgres(url_of),
        "sampler": await asyncio.to_thread(sampler, service_env),
    }


def _default_libs() -> str | None:
    found = sorted((REPO / ".cache").glob("kafka-libs-*/"))
    return str(found[-1]) if found else None


def durability_lines(checks: dict[str, Any]) -> list[str]:
    """The settings in force, one line each, as the report prints them."""
    relay = checks["relay_producer"]
    lines = [f"relay producer: acks={relay['acks']}, idempotence={'on' if relay['idempotence'] else 'OFF'}"]
    producers = checks["broker"].get("producers")
    if producers:
        key = "idempotent producer ids on oms.order.events.v1[0]"
        lines.append(f"broker: {producers[key]} producer id(s) with idempotent state on oms.order.events.v1[0]")
    for topic, config in checks["broker"]["topics"].items():
        lines.append(f"topic {topic}: " + ", ".join(f"{k}={v}" for k, v in sorted(config.items())))
    policies = {
        f"{service}: " + ", ".join(sorted({s["ack_policy"] for s in subs}) or ["(none read)"])
        for service, subs in checks["subscribers"].items()
    }
    lines.append(
        "subscribers' ack policy (MANUAL = auto-commit off, offsets after the DB commit): "
        + "; ".join(sorted(policies))
    )
    pg = checks["postgres"]
    for service in SERVICES:
        s = pg[service]
        lines.append(
            f"postgres oms_{service}: fsync={s['fsync']}, synchronous_commit={s['synchronous_commit']}, "
            f"full_page_writes={s['full_page_writes']}, overrides={s['overrides'] or 'none'}"
        )
    lines.append(f"code that sets synchronous_commit/fsync: {pg['code_setting_it'] or 'none'}")
    s = checks["sampler"]
    lines.append(
        f"trace sampler: default {s['default']}; OTEL_TRACES_SAMPLER honoured: {s['honours OTEL_TRACES_SAMPLER']}"
    )
    return lines
