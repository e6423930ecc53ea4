"""The suite's output: a Markdown table per scenario (figures and ratios), and PNG charts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Per scenario: (key, header) columns; the rows are matched on `group` for ratios.
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "mqtt_ingress": [("target", "target"), ("rate", "stored + fanned out, msg/s (burst)"),
                     ("steady_rate", "steady msg/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
                     ("cpu_us_per_msg", "MQTT process CPU us/msg (steady)"),
                     ("rate_two", "two runmqtt, msg/s (burst)"), ("two_vs_one", "two / one")],
    "fanout": [("target", "target"), ("clients", "clients"), ("processes", "server procs"),
               ("max_per_s", "most deliveries/s"), ("kept_up_to", "kept up to (offered/s)"),
               ("best_p50_ms", "p50 ms there"), ("best_p99_ms", "p99 ms there"),
               ("p99_at_4000_ms", "p99 ms at 4,000/s")],
    "idle": [("target", "target"), ("connections", "connections"), ("open", "still open"),
             ("kib_per_connection", "KiB per connection"), ("idle_cpu_pct", "idle CPU %")],
    "channel_layer": [("target", "layer"), ("members", "group size"), ("send_ms", "group_send median ms"),
                      ("send_p99_ms", "p99 ms"), ("deliveries_per_s", "deliveries/s incl. receive")],
    "end_to_end": [("target", "target"), ("path", "publish to"), ("rate", "offered msg/s"),
                   ("achieved_rate", "devices achieved msg/s"), ("per_client_per_s", "delivered msg/s per client"),
                   ("delivered_pct", "delivered %"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
                   ("added_p50_ms", "p50 added over floor, ms"), ("added_p99_ms", "p99 added over floor, ms")],
    "xmpp_ingress": [("target", "target"), ("senders", "occupants sending"),
                     ("rate", "stored + fanned out, msg/s (burst)"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")],
    "page": [("target", "page"), ("rate", "msg/s offered"), ("achieved_rate", "msg/s stored"),
             ("messages", "messages"),
             ("TaskDuration_ms_per_msg", "main thread ms/msg"), ("ScriptDuration_ms_per_msg", "script ms/msg"),
             ("LayoutDuration_ms_per_msg", "layout ms/msg"), ("RecalcStyleDuration_ms_per_msg", "style ms/msg"),
             ("handler_ms_per_msg", "onmessage ms/msg"), ("behind_after_send_s", "last shown after (s)"),
             ("messages_in_page", "messages received"), ("nodes_after", "DOM nodes"),
             ("js_heap_mib", "JS heap MiB")],
}
# Ratios: (scenario, key, numerator target prefix, denominator target, header).
RATIOS = [
    ("mqtt_ingress", "rate", "bridge", "mqttasgi", "x mqttasgi"),
    ("mqtt_ingress", "rate", "bridge", "mosquitto-floor", "x floor"),
    ("fanout", "max_per_s", "bridge", "daphne+RedisChannelLayer", "x tutorial (Daphne)"),
    ("fanout", "max_per_s", "bridge", "uvicorn+RedisPubSubChannelLayer", "x tutorial (uvicorn+pubsub)"),
    ("idle", "kib_per_connection", "bridge", "daphne+RedisChannelLayer", "x tutorial"),
    ("xmpp_ingress", "rate", "bridge", "slixmpp-echo", "x echo component"),
]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(rows: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = [f"Machine: {machine['cpu']}, {machine['cpus']} CPUs (servers on {machine['server_cpus']}, "
             f"load on {machine['load_cpus']}); load average at start {machine['loadavg_at_start']}; "
             f"{machine['runs']} run(s) per figure, medians{' (quick mode)' if machine['quick'] else ''}; "
             f"{machine['when']}.", ""]
    for scenario, columns in COLUMNS.items():
        mine = [r for r in rows if r["scenario"] == scenario]
        if not mine:
            continue
        ratios = [r for r in RATIOS if r[0] == scenario]
        headers = [h for _, h in columns] + [r[4] for r in ratios]
        lines += [f"### {scenario}", "", "| " + " | ".join(headers) + " |",
                  "|" + " --- |" * len(headers)]
        for row in mine:
            cells = [_fmt(row.get(key)) for key, _ in columns]
            for _, key, prefix, reference, _ in ratios:
                ref = next((r for r in mine if r["target"] == reference
                            and r.get("group") == row.get("group")), None)
                ok = row["target"].startswith(prefix) and ref and ref.get(key) and row.get(key)
                cells.append(f"{row[key] / ref[key]:.2f}" if ok else "")  # type: ignore[index]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def charts(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Latency distributions and throughput against offered load; none without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    ingress = [r for r in rows if r["scenario"] == "mqtt_ingress" and r.get("sample_ms")]
    if ingress:
        fig, ax = plt.subplots(figsize=(8, 5))
        for row in ingress:
            _cdf(ax, row["sample_ms"], f"{row['target']} @ {row['steady_rate']:.0f} msg/s")
        ax.set(xscale="log", xlabel="publish to WebSocket frame (ms)", ylabel="fraction of messages",
               title="MQTT ingress: latency at half the highest rate")
        ax.legend()
        written.append(_save(fig, out / "mqtt_ingress_latency.png"))
    fanout = [r for r in rows if r["scenario"] == "fanout"]
    if fanout:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 9))
        for row in fanout:
            steps = row.get("steps", [])
            label = f"{row['target']} x{row['processes']}, {row['clients']} clients"
            top.plot([s["offered_per_s"] for s in steps], [s["per_s"] or 0 for s in steps], "o-", label=label)
            bottom.plot([s["offered_per_s"] for s in steps], [s["p99_ms"] or 0 for s in steps], "o-", label=label)
        top.set(xlabel="offered deliveries/s", ylabel="deliveries/s", title="Room fan-out: throughput")
        bottom.set(xlabel="offered deliveries/s", ylabel="p99 ms", yscale="log", title="Room fan-out: p99 latency")
        if fanout:
            top.legend(fontsize=7)
        written.append(_save(fig, out / "fanout.png"))
        fig, ax = plt.subplots(figsize=(8, 5))
        for row in fanout:
            if row.get("sample_ms"):
                _cdf(ax, row["sample_ms"], f"{row['target']} x{row['processes']}, {row['clients']} clients")
        ax.set(xscale="log", xlabel="send to frame (ms)", ylabel="fraction of deliveries",
               title="Room fan-out: latency at the highest rate kept up")
        if any(r.get("sample_ms") for r in fanout):
            ax.legend(fontsize=7)
        written.append(_save(fig, out / "fanout_latency.png"))
    for scenario, what, title in (
        ("end_to_end", "MQTT publish to frame or stanza (ms)", "End to end at 500 msg/s: latency by path"),
        ("xmpp_ingress", "groupchat message to delivery (ms)", "XMPP ingress: latency during a burst"),
    ):
        mine = [r for r in rows if r["scenario"] == scenario and r.get("sample_ms")]
        if mine:
            fig, ax = plt.subplots(figsize=(8, 5))
            for row in mine:
                _cdf(ax, row["sample_ms"], f"{row['target']}" + (f" -> {row['path']}" if row.get("path") else ""))
            ax.set(xscale="log", xlabel=what, ylabel="fraction of deliveries", title=title)
            ax.legend(fontsize=7)
            written.append(_save(fig, out / f"{scenario}_latency.png"))
    layers = [r for r in rows if r["scenario"] == "channel_layer"]
    if layers:
        fig, ax = plt.subplots(figsize=(8, 5))
        for name in sorted({r["target"] for r in layers}):
            mine = sorted((r for r in layers if r["target"] == name), key=lambda r: r["members"])
            ax.plot([r["members"] for r in mine], [r["send_ms"] for r in mine], "o-", label=name)
        ax.set(xscale="log", yscale="log", xlabel="group size", ylabel="group_send median ms",
               title="Channel layer: group_send cost")
        ax.legend()
        written.append(_save(fig, out / "channel_layer.png"))
    return written


def _cdf(ax: Any, samples: list[float], label: str) -> None:
    ordered = sorted(samples)
    ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=label)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
