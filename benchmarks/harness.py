"""What every scenario shares: options, CPU pinning, load processes, repeats and medians, progress.

Servers under test get the first half of the CPUs, the load generators and the
infrastructure (Redis, mosquitto, PostgreSQL) the rest (`taskset`-style
affinity, set on every thread of a process and of its children).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.support.processes import REPO

STARTED = time.monotonic()


@dataclass(frozen=True)
class Options:
    runs: int
    quick: bool
    out: Path
    only: frozenset[str]
    server_cpus: frozenset[int] = field(default_factory=frozenset)
    load_cpus: frozenset[int] = field(default_factory=frozenset)
    profile: bool = False
    targets: tuple[str, ...] = ()
    connections: tuple[int, ...] = ()  # `--connections`: the idle scenario's sizes
    bridge_env: tuple[tuple[str, str], ...] = ()  # `--bridge-env`: settings for the bridge's processes
    steady_rate: float = 0.0  # `--steady-rate`: mqtt_ingress's steady stream at this rate, not half the burst's

    def wants(self, target: str) -> bool:
        """`--targets`: only targets whose name contains one of these."""
        return not self.targets or any(t in target for t in self.targets)

    def pick(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full


def cpu_split() -> tuple[frozenset[int], frozenset[int]]:
    """(servers, load): halves of the CPUs this process may use; empty when there is one."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return frozenset(), frozenset()
    half = len(cpus) // 2
    return frozenset(cpus[:half]), frozenset(cpus[half:])


def pin(pid: int, cpus: Iterable[int]) -> None:
    """Every thread of the process and of its children onto `cpus` (no-op without any)."""
    cpus = set(cpus)
    if not cpus:
        return
    try:
        proc = psutil.Process(pid)
        for one in [proc, *proc.children(recursive=True)]:
            for thread in one.threads():
                try:
                    os.sched_setaffinity(thread.id, cpus)
                except OSError:
                    pass  # a thread that ended meanwhile
    except psutil.NoSuchProcess:
        pass


def raise_open_files(wanted: int) -> int:
    """Lift this process's open-file limit (children inherit it) toward `wanted`; the limit now.

    An idle socket is a file on both sides: 20,000 of them need more than a
    shell's usual soft limit. Root may raise the hard limit too.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    for new_hard in (max(hard, wanted), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, new_hard), new_hard))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def say(message: str) -> None:
    """Progress on stderr, with the time since the suite started."""
    elapsed = time.monotonic() - STARTED
    sys.stderr.write(f"[{int(elapsed // 60):3d}:{int(elapsed % 60):02d}] {message}\n")
    sys.stderr.flush()


class Load:
    """A load generator in its own process, speaking JSON lines on stdout."""

    def __init__(self, module: str, args: list[str], *, cpus: Iterable[int], env: Mapping[str, str] | None = None) -> None:
        self.module = module
        self.popen = subprocess.Popen(
            [sys.executable, "-m", f"benchmarks.load.{module}", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=REPO, env=dict(env) if env is not None else None,
        )
        pin(self.popen.pid, cpus)

    def read(self) -> dict[str, Any]:
        """The next JSON line; a clear error with the generator's stderr if it died."""
        assert self.popen.stdout is not None
        while True:
            line = self.popen.stdout.readline()
            if not line:
                self.popen.wait(timeout=30)
                err = self.popen.stderr.read() if self.popen.stderr else ""
                raise RuntimeError(f"load generator {self.module} ended ({self.popen.returncode}):\n{err[-3000:]}")
            line = line.strip()
            if line == "ready":
                return {"ready": True}
            if line.startswith("{"):
                return dict(json.loads(line))

    def tell(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def result(self, timeout: float = 900) -> dict[str, Any]:
        """Wait for it to end; its last JSON line."""
        out, err = self.popen.communicate(timeout=timeout)
        lines = [x for x in out.splitlines() if x.startswith("{")]
        if self.popen.returncode != 0 or not lines:
            raise RuntimeError(f"load generator {self.module} failed ({self.popen.returncode}):\n{err[-3000:]}")
        return dict(json.loads(lines[-1]))

    def close(self) -> None:
        if self.popen.poll() is None:
            if self.popen.stdin is not None:
                self.popen.stdin.close()
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


class Profile:
    """py-spy sampling a server during one run (`--profile`): collapsed stacks and a flame graph."""

    def __init__(self, opts: Options, pid: int, name: str) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        if not opts.profile or not pid:
            return
        folder = opts.out / "profiles"
        folder.mkdir(parents=True, exist_ok=True)
        for fmt, suffix in (("raw", "txt"), ("flamegraph", "svg")):
            self.procs.append(subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--rate", "100", "--format", fmt,
                 "--output", str(folder / f"{name}.{suffix}")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
            pin(self.procs[-1].pid, opts.load_cpus)

    def __enter__(self) -> Profile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def median_row(runs: list[dict[str, Any]], keys: Iterable[str]) -> dict[str, Any]:
    """The median of each figure over repeated runs (the runs themselves kept beside it)."""
    row: dict[str, Any] = {key: median(r.get(key) for r in runs) for key in keys}
    row["runs"] = [{k: v for k, v in r.items() if k != "sample_ms"} for r in runs]
    samples = [x for r in runs for x in r.get("sample_ms", [])]
    if samples:
        row["sample_ms"] = samples
    return row


def rss_kib(pid: int) -> int:
    """Resident memory of a process and its children, KiB."""
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) // 1024


def cpu_seconds(pid: int) -> float:
    proc = psutil.Process(pid)
    total = 0.0
    for one in [proc, *proc.children(recursive=True)]:
        times = one.cpu_times()
        total += times.user + times.system
    return total
