"""docker-compose.yml's topology on this machine for tests, through the `make stack` generator.

Each process is `python -m topology start NAME` (it waits for its dependencies
by their compose healthchecks, then execs the real command, so its pid is the
server's); every process gets its own session, so stopping ends it with
everything it started and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.support.processes import REPO, Proc
from topology.plan import OVERRIDE_FILE, LocalProcess, Plan, make_plan
from topology.procfile import init_state
from topology.runner import healthy, reset_markers

BRIDGE_SERVICES = ("migrate", "web", "worker", "mqtt", "xmpp")


@dataclass
class LocalStack:
    plan: Plan
    log_dir: Path
    procs: dict[str, Proc] = field(default_factory=dict)

    @classmethod
    def create(cls, log_dir: Path, *, environment: dict[str, str]) -> LocalStack:
        # Its own folder under /tmp: PostgreSQL runs as its own user and must reach it.
        state = Path(tempfile.mkdtemp(prefix="bridge-stack-"))
        state.chmod(0o755)
        init_state(state)
        override = {"services": {name: {"environment": environment} for name in BRIDGE_SERVICES}}
        (state / OVERRIDE_FILE).write_text(yaml.safe_dump(override))
        return cls(plan=make_plan(state), log_dir=log_dir)

    def process(self, name: str) -> LocalProcess:
        return self.plan.by_name(name)

    def start(self, name: str) -> Proc:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as handle:
            popen = subprocess.Popen(
                [sys.executable, "-m", "topology", "--state", str(self.plan.state), "start", name],
                stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                env={k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ},
                start_new_session=True,
            )
        self.procs[name] = Proc(name=name, popen=popen, log=log)
        return self.procs[name]

    def start_all(self) -> None:
        reset_markers(self.plan)
        for name in self.plan.processes:
            self.start(name)

    def wait_healthy(self, *names: str, timeout: float = 240) -> None:
        """Until each passes its compose healthcheck; a process that exits is an error."""
        pending = list(names)
        deadline = time.monotonic() + timeout
        while pending:
            for name in list(pending):
                proc = self.procs[name]
                if proc.popen.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.popen.returncode}:\n{proc.output()}")
                if healthy(self.process(name)):
                    pending.remove(name)
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"not healthy after {timeout} s: {pending}\n"
                                   + "\n".join(self.procs[n].output()[-1500:] for n in pending))
            time.sleep(0.5)

    def topology(self, *args: str) -> str:
        """`python -m topology ARGS` against this stack (run, exec); its output."""
        done = subprocess.run(
            [sys.executable, "-m", "topology", "--state", str(self.plan.state), *args],
            cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"topology {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].popen.send_signal(sig)

    def stop(self) -> None:
        """SIGTERM to every session (bridge processes first), SIGKILL what is left."""
        order = sorted(self.procs.values(), key=lambda p: self.process(p.name).kind != "bridge")
        for proc in order:
            _killpg(proc, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=15)
            _killpg(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)


def _killpg(proc: Proc, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.popen.pid, sig)
