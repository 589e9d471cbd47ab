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
            "| offered | e2e p50 ms | e2e p99 ms | mail p99 ms | through (requested) | sustained (e2e) "
            "| every hop kept up |",
            "|---:|---:|---:|---:|---:|---|---|",
        ]
        for p in sorted(config["points"], key=lambda p: p["offered_rate"]):
            lat = p["latency_s"]
            e2e = lat.get(stats.END_TO_END, {})
            mail = lat.get("mail", {})
            verdict = "yes" if p["verdict"]["sustained"] else "no: " + "; ".join(p["verdict"]["reasons"])
            every = p.get("every_hop", {})
            others = [r for r in every.get("reasons", []) if r not in p["verdict"]["reasons"]]
            every_said = "yes" if every.get("sustained") else "no" + (": " + "; ".join(others) if others else "")
            through = p["throughput_per_s"].get(stats.END_TO_END)
            lines.append(
                f"| {p['offered_rate']:g}/s | {_ms(e2e.get('p50'))} | {_ms(e2e.get('p99'))} | "
                f"{_ms(mail.get('p99'))} | {_rate(through)} | {verdict} | {every_said} |"
            )
        lines += [
            "",
            f"Sustained (submitted → fulfillment requested): **{_rate(config.get('sustained'))}**; every hop "
            f"({', '.join(config['points'][0]['every_hop']['hops']) if config['points'] else '–'}) kept up at "
            f"{_rate(config.get('every_hop_sustained'))} at most (of the rates measured).",
            "",
        ]
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

    fig, ax = plt.subplots(figsize=(10, 7))
    # One colour per configuration; the line says which hop and percentile.
    lines = ((stats.END_TO_END, "p50", "--", "o"), (stats.END_TO_END, "p99", "-", "o"), ("mail", "p99", ":", "s"))
    drawn = False
    for n, config in enumerate(results.get("configs", [])):
        colour = f"C{n}"
        points = sorted((p for p in config["points"] if p["verdict"]["valid"]), key=lambda p: p["offered_rate"])
        for hop, q, style, marker in lines:
            measured = [(p["offered_rate"], p["latency_s"].get(hop, {}).get(q, math.nan)) for p in points]
            measured = [(x, y * 1000) for x, y in measured if not math.isnan(y)]
            if measured:
                xs, ys = zip(*measured, strict=True)
                label = f"{config['label']}: {HOP_LABELS[hop]} {q}"
                ax.plot(xs, ys, linestyle=style, marker=marker, color=colour, label=label)
                drawn = True
        if config.get("sustained"):
            ax.axvline(config["sustained"], color=colour, linestyle=":", linewidth=1)
    ax.set_xlabel("offered rate (orders/s)")
    ax.set_ylabel("latency from submission (ms)")
    ax.set_title("OMS: latency against offered rate (open loop)")
    if drawn:
        ax.set_yscale("log")
        # Below the axes: over them it would hide the points at low rates.
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
