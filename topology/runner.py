"""Start one planned process once what it depends on is ready, as docker compose would.

`service_healthy` runs the dependency's own compose healthcheck (made local)
until it passes; `service_completed_successfully` waits for the one-shot
service's marker file. A one-shot service (migrate) runs to completion, leaves
its marker, then idles until told to stop, so that honcho, which ends the whole
stack when any process exits, keeps going.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

from topology.compose import ComposeError
from topology.plan import LocalProcess, Plan
from topology.servers import INSTALL_HINT, prepare

DEPENDENCY_TIMEOUT = 300.0  # seconds before a process gives up waiting for its dependencies
HEALTHCHECK_TIMEOUT = 10.0


def marker(plan: Plan, service: str, outcome: str) -> Path:
    return plan.state / "run" / f"{service}.{outcome}"


def pidfile(plan: Plan, name: str) -> Path:
    return plan.state / "run" / f"{name}.pid"


def signal_service(plan: Plan, service: str, sig: signal.Signals) -> list[str]:
    """Send `sig` to every running replica of `service` (like `docker compose kill -s`)."""
    signalled = []
    for process in plan.replicas(service) or [plan.by_name(service)]:
        try:
            os.kill(int(pidfile(plan, process.name).read_text()), sig)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            continue
        signalled.append(process.name)
    if not signalled:
        raise ComposeError(f"{service} is not running")
    return signalled


def reset_markers(plan: Plan) -> None:
    """Forget one-shot outcomes of a previous run (call before starting a stack)."""
    (plan.state / "run").mkdir(parents=True, exist_ok=True)
    for process in plan.processes.values():
        for outcome in ("done", "failed"):
            marker(plan, process.service, outcome).unlink(missing_ok=True)


def healthy(process: LocalProcess) -> bool:
    """The compose healthcheck of `process`, run locally: exit status 0 within the timeout."""
    if process.healthcheck is None:
        raise ComposeError(f"{process.service} has no healthcheck to wait on")
    try:
        done = subprocess.run(
            process.healthcheck, env=process.env, capture_output=True,
            timeout=HEALTHCHECK_TIMEOUT, check=False,
        )
    except (subprocess.TimeoutExpired, OSError):
        return False
    return done.returncode == 0


def _satisfied(plan: Plan, service: str, condition: str) -> bool:
    if condition == "service_completed_successfully":
        if marker(plan, service, "failed").exists():
            raise ComposeError(f"{service} failed (see its output)")
        return marker(plan, service, "done").exists()
    if condition == "service_healthy":
        return all(healthy(replica) for replica in plan.replicas(service))
    return True  # service_started: started together with everything else


def wait_for_dependencies(plan: Plan, process: LocalProcess, *, timeout: float = DEPENDENCY_TIMEOUT) -> None:
    pending = dict(process.depends_on)
    deadline = time.monotonic() + timeout
    said = 0.0
    while pending:
        for service, condition in list(pending.items()):
            if _satisfied(plan, service, condition):
                del pending[service]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise ComposeError(f"{process.name}: still waiting for {', '.join(pending)} after {timeout:.0f} s")
        if time.monotonic() - said > 10:
            said = time.monotonic()
            waiting = ", ".join(f"{s} ({c.removeprefix('service_')})" for s, c in pending.items())
            sys.stderr.write(f"{process.name}: waiting for {waiting}\n")
        time.sleep(0.5)


def start(plan: Plan, name: str) -> NoReturn:
    process = plan.by_name(name)
    wait_for_dependencies(plan, process)
    env = dict(process.env)
    if process.kind != "bridge" and not process.oneshot:
        prepare(process.kind, process.source_argv, env=env, address=process.address,
                volumes=process.volumes, state=plan.state, name=process.name, peers=process.peers)
    # exec keeps the pid: `python -m topology kill` signals the server itself.
    pidfile(plan, process.name).write_text(f"{os.getpid()}\n")
    if not process.oneshot:
        sys.stdout.flush()
        try:
            os.execvpe(process.argv[0], process.argv, env)
        except FileNotFoundError as exc:
            raise ComposeError(f"{process.argv[0]} is not installed ({INSTALL_HINT})") from exc
    for host in process.volumes.values():
        if not Path(host).suffix:
            Path(host).mkdir(parents=True, exist_ok=True)
    code = subprocess.call(process.argv, env=env)
    marker(plan, process.service, "done" if code == 0 else "failed").touch()
    if code != 0:
        sys.exit(code)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()
