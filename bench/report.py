"""The run's results as JSON (everything), a markdown table (what a person reads) and a PNG (latency against offered
rate), all in bench/results/<timestamp>/."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench import stats

HOP_LABELS = {
    "accepted": "→ accepted",
    "paid": "→ paid",
    "planned": "→ planned",
    "reserved": "→ reserved",
    "requested": "→ fulfillment requested",
    "shipped": "→ shipped",
    "mail": "→ confirmation mail sent",
}


def _ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * 1000:,.0f}"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}/s"


def write(out: Path, results: dict[str, Any]) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "report.md", "png": out / "latency.png"}
    paths["json"].write_text(json.dumps(results, indent=1, default=str))
    paths["markdown"].write_text(markdown(results))
    plot(results, paths["png"])
    return paths


def _point_table(point: dict[str, Any], title: str) -> list[str]:
    verdict = point["verdict"]
    said = "sustained" if verdict["sustained"] else "NOT sustained: " + "; ".join(verdict["reasons"])
    lines = [
        f"**{title}** — offered {point['offered_rate']:g} orders/s for {point['window_s']:g} s "
        f"({point['orders_in_window']} orders in the window); {said}",
        "",
        "| submitted … | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for hop, s in point["latency_s"].items():
        lines.append(
            f"| {HOP_LABELS.get(hop, hop)} | {_ms(s['p50'])} | {_ms(s['p95'])} | {_ms(s['p99'])} | {_ms(s['max'])} |"
        )
    lines += ["", "| process | CPU ms per order | CPU (cores) | peak RSS MB |", "|---|---:|---:|---:|"]
    for name, per_order in sorted(point["cpu_s_per_order"].items()):
        cores = point["cpu_cores"].get(name, 0.0)
        rss = point["peak_rss_mb"].get(name, "–")
        lines.append(f"| {name} | {per_order * 1000:.2f} | {cores:.2f} | {rss} |")
    total = sum(point["cpu_s_per_order"].values())
    lines.append(f"| **all** | **{total * 1000:.2f}** | {sum(point['cpu_cores'].values()):.2f} | |")
    g = point["generator"]
    lag = f"p50 {_ms(g.get('lag_p50'))} ms, p99 {_ms(g.get('lag_p99'))} ms, max {_ms(g.get('lag_max'))} ms"
    lines += ["", f"Load generator lag behind its schedule: {lag}; dead letters so far: {point['dead_letters']}.", ""]
    return lines


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# OMS benchmark — {results['started']}", "", f"Machine: {results['machine']}", ""]
    lines += [f"Command: `{results['command']}`", ""]
    summary = results.get("summary", {})
    if summary:
        lines += ["| figure | value |", "|---|---:|"]
        for label, value in summary.items():
            lines.append(f"| {label} | {value} |")
        lines.append("")
    for config in results.get("configs", []):
        lines += [f"## {config['label']}", ""]
        if config.get("sampler"):
            lines += [f"Trace sampler in force: {config['sampler']}", ""]
        lines += [
            "| offered | e2e p50 ms | e2e p99 ms | mail p99 ms | through (requested) | verdict |",
            "|---:|---:|---:|---:|---:|---|",
        ]
        for p in config["points"]:
            lat = p["latency_s"]
            e2e = lat.get(stats.END_TO_END, {})
            mail = lat.get("mail", {})
            verdict = "sustained" if p["verdict"]["sustained"] else "no: " + "; ".join(p["verdict"]["reasons"])
            through = p["throughput_per_s"].get(stats.END_TO_END)
            lines.append(
                f"| {p['offered_rate']:g}/s | {_ms(e2e.get('p50'))} | {_ms(e2e.get('p99'))} | "
                f"{_ms(mail.get('p99'))} | {_rate(through)} | {verdict} |"
            )
        lines += ["", f"Sustained: **{_rate(config.get('sustained'))}**", ""]
        if config.get("idle_cores"):
            lines += [
                "Idle, before any load (cores): "
                + ", ".join(f"{name} {cores:.3f}" for name, cores in sorted(config["idle_cores"].items())),
                "",
            ]
        for key, title in (
            ("at_50", "At 50 % of sustained"),
            ("at_90", "At 90 % of sustained"),
            ("quick", "The point"),
        ):
            if config.get(key):
                lines += _point_table(config[key], title)
    limits = results.get("limits")
    if limits:
        lines += ["## Limits on this machine, same run", ""]
        lines += ["| what | figure |", "|---|---|"]
        for label, value in limits.get("lines", []):
            lines.append(f"| {label} | {value} |")
        lines.append("")
    if results.get("durability"):
        lines += ["## Durability settings in force", ""] + [f"- {line}" for line in results["durability"]] + [""]
    lines += [
        "Latencies are from broker record timestamps (CreateTime of the records the services produced minus the "
        "CreateTime of the submission), all on one machine's clock. docs/performance.md says how to read every "
        "figure.",
        "",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    styles = {"p50": "--", "p99": "-"}
    drawn = False
    for config in results.get("configs", []):
        points = sorted((p for p in config["points"] if p["verdict"]["valid"]), key=lambda p: p["offered_rate"])
        if not points:
            continue
        for hop in (stats.END_TO_END, "mail"):
            for q, style in styles.items():
                xs = [p["offered_rate"] for p in points if not math.isnan(p["latency_s"].get(hop, {}).get(q, math.nan))]
                ys = [
                    p["latency_s"][hop][q] * 1000
                    for p in points
                    if not math.isnan(p["latency_s"].get(hop, {}).get(q, math.nan))
                ]
                if xs:
                    ax.plot(xs, ys, style, marker="o", label=f"{config['label']}: {HOP_LABELS[hop]} {q}")
                    drawn = True
        if config.get("sustained"):
            ax.axvline(config["sustained"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("offered rate (orders/s)")
    ax.set_ylabel("latency from submission (ms)")
    ax.set_title("OMS: latency against offered rate (open loop)")
    if drawn:
        ax.set_yscale("log")
        ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
