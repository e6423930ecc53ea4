"""`make bench` / `python -m benchmarks`: every scenario against the bridge and its peers, side by side.

Prints a table of figures and ratios, writes var/bench/results.json and PNG
charts beside it. `--quick` for fewer, shorter runs while developing;
`--only mqtt_ingress,fanout` for some scenarios. Other benchmarks in this
folder run alone: python -m benchmarks.NAME.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time
from pathlib import Path

from benchmarks.harness import Options, cpu_split, say
from benchmarks.report import charts, table
from tests.support.processes import REPO

SCENARIOS = ("mqtt_ingress", "fanout", "idle", "channel_layer", "end_to_end", "xmpp_ingress", "page")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter runs (development)")
    parser.add_argument("--runs", type=int, help="repeats per figure (median quoted); default 3, quick 1")
    parser.add_argument("--only", default="", help=f"comma-separated, from: {', '.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, default=REPO / "var" / "bench")
    parser.add_argument("--targets", default="", help="comma-separated: only targets whose name contains one")
    parser.add_argument("--profile", action="store_true",
                        help="sample the servers with py-spy during the first burst and steady run (var/bench/profiles/)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers and load to separate CPUs")
    parser.add_argument("--connections", default="",
                        help="idle scenario: comma-separated socket counts (default 2000 quick; 10000,20000)")
    parser.add_argument("--bridge-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the bridge's processes (repeatable), for A/B runs: XMPP_WINDOW=40")
    parser.add_argument("--steady-rate", type=float, default=0.0, metavar="MSG_PER_S",
                        help="mqtt_ingress: the steady stream at this rate instead of half the burst's "
                             "(the same offered load for A/B runs)")
    args = parser.parse_args()
    if any("=" not in x for x in args.bridge_env):
        parser.error("--bridge-env takes NAME=VALUE")
    only = frozenset(x for x in args.only.split(",") if x) or frozenset(SCENARIOS)
    unknown = only - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    servers, load = (frozenset(), frozenset()) if args.no_pin else cpu_split()
    opts = Options(runs=args.runs or (1 if args.quick else 3), quick=args.quick, out=args.out,
                   only=only, server_cpus=servers, load_cpus=load, profile=args.profile,
                   targets=tuple(x for x in args.targets.split(",") if x),
                   connections=tuple(int(x) for x in args.connections.split(",") if x),
                   bridge_env=tuple(tuple(x.split("=", 1)) for x in args.bridge_env),  # type: ignore[misc]
                   steady_rate=args.steady_rate)
    opts.out.mkdir(parents=True, exist_ok=True)
    machine = _machine(opts)
    say(f"machine: {machine['cpu']}, {machine['cpus']} CPUs; servers on {machine['server_cpus']}, "
        f"load on {machine['load_cpus']}; {opts.runs} run(s) per figure{' (quick)' if opts.quick else ''}")
    rows: list[dict[str, object]] = []
    failed = []
    for name in SCENARIOS:
        if name in only:
            module = importlib.import_module(f"benchmarks.scenarios.{name}")
            try:
                rows.extend(module.run(opts))
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not cost the others' figures
                say(f"{name} failed: {exc!r} (logs under {opts.out / 'logs'})")
                failed.append(name)
            # Written after every scenario: a long run interrupted keeps what it measured.
            results = {"machine": machine, "rows": rows, "failed": failed}
            (opts.out / "results.json").write_text(json.dumps(results, indent=1))
    text = table(rows, machine)
    (opts.out / "table.md").write_text(text)
    print(text)
    for path in charts(rows, opts.out):
        say(f"chart: {path}")
    say(f"results: {opts.out / 'results.json'}")
    if failed:
        raise SystemExit(f"failed scenarios: {', '.join(failed)}")


def _machine(opts: Options) -> dict[str, object]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    load = Path("/proc/loadavg").read_text().split()
    return {
        "cpu": model, "cpus": len(os.sched_getaffinity(0)),
        "server_cpus": sorted(opts.server_cpus) or "any", "load_cpus": sorted(opts.load_cpus) or "any",
        "loadavg_at_start": " ".join(load[:3]), "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "quick": opts.quick, "runs": opts.runs,
        "bridge_env": dict(opts.bridge_env),
    }


if __name__ == "__main__":
    main()
