"""A throwaway PostgreSQL server in a temp dir on a free port (Debian's binaries)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.support.processes import Proc, free_port, start, wait_for_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run the README's test command (make test)")
    return found[-1]


def _as_postgres(argv: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    if os.geteuid() == 0:
        pwd.getpwnam("postgres")
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def postgres_server(log_dir: Path) -> Proc:
    """Started as the postgres user when root; its files live in a world-traversable temp dir."""
    base = Path(tempfile.mkdtemp(prefix="bridge-pg-"))
    data = base / "pgdata"
    sockets = base / "pgsock"
    data.mkdir()
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(data, "postgres")
        shutil.chown(sockets, "postgres")
    done = subprocess.run(
        _as_postgres([_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
        check=False, capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed:\n{done.stdout}\n{done.stderr}")
    port = free_port()
    proc = start(
        "postgres",
        _as_postgres([
            _bin("postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets),
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200",
        ]),
        log_dir=log_dir,
    )
    proc.extra["cleanup"] = base
    wait_for_port(port, proc=proc)
    proc.extra["port"] = port
    proc.extra["url"] = f"postgres://postgres@127.0.0.1:{port}/postgres"
    return proc


def postgres_stop(proc: Proc) -> None:
    """A fast shutdown (SIGINT to the postmaster, not to runuser, which would turn it into
    SIGTERM then SIGKILL): open connections are ended, as in a database restart."""
    args = [str(a) for a in proc.popen.args]  # type: ignore[union-attr]
    data = Path(args[args.index("-D") + 1])
    os.kill(int((data / "postmaster.pid").read_text().split()[0]), signal.SIGINT)
    proc.popen.wait(timeout=30)


def postgres_restart(proc: Proc) -> Proc:
    """The same server again (data directory, port) after `postgres_stop`."""
    again = start("postgres", [str(a) for a in proc.popen.args], log_dir=proc.log.parent)  # type: ignore[union-attr]
    again.extra.update(proc.extra)
    wait_for_port(int(proc.extra["port"]), proc=again)  # type: ignore[call-overload]
    return again
