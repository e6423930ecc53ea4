"""Debian's servers in place of the compose file's images: argv and first-run preparation.

Each image's own conventions are kept: postgres' POSTGRES_USER/PASSWORD/DB make
the superuser and the database on first start, mosquitto reads the config the
compose entrypoint copies (its container paths and listener made local),
Prosody reads the repo's config from the environment.
"""

from __future__ import annotations

import getpass
import glob
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from topology.compose import ComposeError

INSTALL_HINT = "scripts/install-system-deps.sh installs the servers"


def _binary(name: str, *candidates: str) -> str:
    """The server's path; its bare name when missing (starting it then says what is missing)."""
    for candidate in (name, *candidates):
        found = shutil.which(candidate) or (candidate if os.path.exists(candidate) else None)
        if found:
            return found
    return name


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else name


def _as_postgres(argv: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def server_argv(kind: str, argv: list[str], *, address: str, volumes: dict[str, str], state: Path,
                name: str = "") -> list[str]:
    """The command that runs this image's server locally."""
    if kind == "nginx":
        return [_binary("nginx", "/usr/sbin/nginx"), "-c", str(_nginx_config(state, name)),
                "-g", "daemon off;"]
    if kind == "postgres":
        data = volumes.get("/var/lib/postgresql/data", str(state / "volumes" / "postgres"))
        return _as_postgres([
            _postgres_bin("postgres"), "-D", data, "-p", "5432", "-k", str(state / "run" / "pg"),
            "-c", f"listen_addresses={address}", "-c", "max_connections=300",
        ])
    if kind == "redis":
        command = argv or ["redis-server"]
        return [_binary(command[0]), *command[1:], "--bind", address, "--port", "6379",
                "--dir", str(state / "volumes" / "redis")]
    if kind == "mosquitto":
        return [_binary("mosquitto", "/usr/sbin/mosquitto"), "-c", _mosquitto_config(argv)]
    if kind == "prosody":
        config = volumes.get("/etc/prosody/prosody.cfg.lua", "/etc/prosody/prosody.cfg.lua")
        return [_binary("prosody"), "--config", config, "-F"]
    raise ComposeError(f"no local server for {kind}")


def _mosquitto_config(argv: list[str]) -> str:
    words = shlex.split(argv[-1]) if argv[:2] == ["sh", "-c"] else argv
    if "-c" not in words:
        raise ComposeError("mosquitto's command names no config file (-c)")
    return words[words.index("-c") + 1]


def _nginx_config(state: Path, name: str) -> Path:
    return state / "run" / f"{name}.nginx.conf"


def prepare(kind: str, argv: list[str], *, env: dict[str, str], address: str,
            volumes: dict[str, str], state: Path, name: str = "",
            peers: dict[str, list[str]] | None = None) -> None:
    """First-run work before the server starts (idempotent)."""
    (state / "run").mkdir(parents=True, exist_ok=True)
    for host in volumes.values():
        if not Path(host).suffix:  # a folder (named volume or bind-mounted directory)
            Path(host).mkdir(parents=True, exist_ok=True)
    if kind == "postgres":
        _prepare_postgres(env, volumes.get("/var/lib/postgresql/data", str(state / "volumes" / "postgres")), state)
    elif kind == "redis":
        (state / "volumes" / "redis").mkdir(parents=True, exist_ok=True)
    elif kind == "mosquitto":
        _prepare_mosquitto(argv, address=address, volumes=volumes)
    elif kind == "nginx":
        source = Path(volumes.get("/etc/nginx/nginx.conf", "/etc/nginx/nginx.conf"))
        _nginx_config(state, name).write_text(
            _local_nginx(source.read_text(), address=address, peers=peers or {}, state=state, name=name))
    elif kind == "prosody":
        data = Path(env.get("PROSODY_DATA_DIR", state / "volumes" / "prosody"))
        (data / "certs").mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            env["PROSODY_RUN_AS_ROOT"] = "1"


def _prepare_postgres(env: dict[str, str], data: str, state: Path) -> None:
    sockets = state / "run" / "pg"
    sockets.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        for path in (Path(data), sockets):
            shutil.chown(path, "postgres")
    if (Path(data) / "PG_VERSION").exists():
        return
    user = env.get("POSTGRES_USER", "postgres")
    database = env.get("POSTGRES_DB", user)
    pwfile = Path(data).parent / f".{Path(data).name}.pw"
    pwfile.write_text(env["POSTGRES_PASSWORD"] + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres")
    try:
        _run(_as_postgres([_postgres_bin("initdb"), "-D", data, "-U", user, f"--pwfile={pwfile}",
                           "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8"]))
    finally:
        pwfile.unlink()
    if database != "postgres":
        _run(_as_postgres([_postgres_bin("postgres"), "--single", "-D", data, "postgres"]),
             stdin=f"CREATE DATABASE {database};\n")


def _prepare_mosquitto(argv: list[str], *, address: str, volumes: dict[str, str]) -> None:
    # What the compose entrypoint does before `exec mosquitto` (copying the config).
    if argv[:2] == ["sh", "-c"] and "exec " in argv[2]:
        _run(["sh", "-c", argv[2].split("exec ", 1)[0].rstrip(" &;")])
    path = Path(_mosquitto_config(argv))
    text = path.read_text()
    for target in sorted(volumes, key=len, reverse=True):
        text = text.replace(target.rstrip("/") + "/", volumes[target].rstrip("/") + "/")
    text = re.sub(r"(?m)^plugin (\S+)$", lambda m: f"plugin {_local_plugin(m[1])}", text)
    text = re.sub(r"(?m)^listener (\d+)\s*$", rf"listener \1 {address}", text)
    text = re.sub(r"(?m)^log_dest stdout$", "log_dest stderr", text)
    # Started as root, mosquitto would switch to its own user, who cannot write our folder.
    path.write_text(text + f"\nuser {getpass.getuser()}\n")


def _local_nginx(text: str, *, address: str, peers: dict[str, list[str]], state: Path, name: str) -> str:
    """The proxy's config on this machine: its own address, an upstream group per service
    it proxies to (Docker's DNS answered with every replica), its own pid file."""
    text = re.sub(r"(?m)^(\s*)listen (\d+);", rf"\1listen {address}:\2;", text)
    text = re.sub(r"(?m)^\s*resolver [^;]*;\n", "", text)
    text = re.sub(r"(?m)^pid [^;]*;", f"pid {state / 'run' / name}.nginx.pid;", text)
    groups = []
    for service, addresses in peers.items():
        pattern = rf"http://{re.escape(service)}:(\d+)"
        for port in sorted(set(re.findall(pattern, text))):
            group = f"stack_{service}_{port}".replace("-", "_")
            servers = "".join(f"        server {a}:{port};\n" for a in addresses)
            groups.append(f"    upstream {group} {{\n{servers}    }}\n")
            text = text.replace(f"http://{service}:{port}", f"http://{group}")
    return re.sub(r"(?m)^http \{\n", lambda m: m[0] + "".join(groups), text, count=1)


def _local_plugin(path: str) -> str:
    """The image's plugin path, or where this machine's mosquitto package put the same file
    (Debian: /usr/lib/<arch>/)."""
    if Path(path).exists():
        return path
    found = sorted(glob.glob(f"/usr/lib/*/{Path(path).name}"))
    return found[0] if found else path


def _run(argv: list[str], *, stdin: str | None = None) -> None:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ComposeError(f"{exc.filename} is not installed ({INSTALL_HINT})") from exc
    if done.returncode != 0:
        raise ComposeError(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
