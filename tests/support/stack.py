"""A provisioned database plus real server processes, for integration tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import Proc, bridge_env, free_port, manage, start_asgi, start_manage


@dataclass
class Stack:
    tmp: Path
    env: dict[str, str]
    token: str
    procs: list[Proc]

    @property
    def database_url(self) -> str:
        return self.env["DATABASE_URL"]

    def asgi(self, name: str) -> str:
        """Start an ASGI server (uvicorn on project.asgi); returns its base URL."""
        port = free_port()
        self.procs.append(start_asgi(name, port, env=self.env, log_dir=self.tmp))
        return f"http://127.0.0.1:{port}"

    def worker(self, name: str) -> Proc:
        proc = start_manage(name, ["runworker", "bridge-tasks"], env=self.env, log_dir=self.tmp)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def provision(tmp: Path, *, rooms: tuple[str, ...] = ("lobby",), **env: str) -> Stack:
    """Migrate a fresh SQLite file, create rooms, user demo/demo and an API token for it."""
    environ = bridge_env(tmp, **env)
    manage(["migrate", "--noinput", "-v0"], env=environ)
    manage(["demo"], env=environ)
    for room in rooms:
        manage(["rooms", "add", room], env=environ)
    token = manage(["tokens", "add", "demo"], env=environ).strip()
    return Stack(tmp=tmp, env=environ, token=token, procs=[])
