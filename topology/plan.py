"""From compose services to local processes: addresses, paths, commands, environment.

Each replica of a service gets its own loopback address in the stack's /24
(`127.A.B.x`), so every process keeps the port the compose file gives it and
only host names change: `postgres` in `...@postgres:5432/...` becomes that
service's address, `0.0.0.0` (listen everywhere) becomes the replica's own.
Named volumes are folders under the state directory, bind mounts the repo's
own files. Images become Debian's servers (see `servers.py`); services built
from this repo (`build: .`) run their compose command in the project's venv.
"""

from __future__ import annotations

import functools
import getpass
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from topology.compose import ComposeError, Service, load, read_env_file
from topology.servers import server_argv

REPO = Path(__file__).resolve().parent.parent
OVERRIDE_FILE = "docker-compose.override.yml"
COMPOSE_FILE = REPO / "docker-compose.yml"
# Images we know how to run from Debian's packages; anything else is left out locally.
SERVER_IMAGES = {
    "postgres": "postgres",
    "redis": "redis",
    "eclipse-mosquitto": "mosquitto",
    "prosody/prosody": "prosody",
    "nginx": "nginx",
}
# What the image would put on PATH or in the environment of our own image (Dockerfile).
IMAGE_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
# The image's user that owns what its server reads; locally, whoever runs the stack.
CONTAINER_USERS = ("mosquitto:mosquitto", "prosody:prosody")


@dataclass(frozen=True)
class LocalProcess:
    name: str  # "web-1"; a service with one replica keeps its name
    service: str
    kind: str  # "bridge", "postgres", "redis", "mosquitto", "prosody", or "oneshot" variants
    argv: list[str]
    source_argv: list[str]  # the compose command with paths made local (what `argv` adapts)
    entrypoint: list[str]  # the part of `argv` that `run SERVICE ARGS` keeps
    env: dict[str, str]
    address: str
    healthcheck: list[str] | None
    depends_on: dict[str, str]
    oneshot: bool
    volumes: dict[str, str]  # container path -> host path
    ports: tuple[int, ...] = ()
    # Every service's replica addresses (a proxy balances them, as Docker's DNS would).
    peers: dict[str, list[str]] = field(default_factory=dict)

    def localize(self, text: str) -> str:
        """A container path of this service's volumes, as the local path."""
        for target in sorted(self.volumes, key=len, reverse=True):
            if text == target or text.startswith(target.rstrip("/") + "/"):
                return self.volumes[target] + text[len(target):]
        return text


@dataclass(frozen=True)
class Plan:
    state: Path
    processes: dict[str, LocalProcess]
    skipped: dict[str, str]  # service -> why it does not run locally

    def replicas(self, service: str) -> list[LocalProcess]:
        return [p for p in self.processes.values() if p.service == service]

    def by_name(self, name: str) -> LocalProcess:
        try:
            return self.processes[name]
        except KeyError:
            raise ComposeError(f"no process {name!r}; try: {', '.join(self.processes)}") from None


def _kind(service: Service) -> str | None:
    if service.built:
        return "bridge"
    image = (service.image or "").rsplit(":", 1)[0]
    return SERVER_IMAGES.get(image)


def _volumes(spec_volumes: list[str], state: Path) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for entry in spec_volumes:
        source, _, rest = entry.partition(":")
        target = rest.split(":", 1)[0]
        host = (REPO / source).resolve() if source.startswith((".", "/")) else state / "volumes" / source
        mapping[target] = str(host)
    return mapping


def _rewrite(text: str, *, hosts: dict[str, str], volumes: dict[str, str], own: str, env: bool = False) -> str:
    """Container names, listen-everywhere addresses and container paths, made local.

    In environment values a whole value that is a service name is that service's
    host (XMPP_SERVER_HOST: prosody) and `*` means every interface; in commands
    only URLs and `0.0.0.0` are addresses (`migrate` is also a word there).
    """
    if text == "0.0.0.0" or (env and text == "*"):
        return own
    text = re.sub(r"^0\.0\.0\.0(?=:\d+$)", own, text)  # ADDR:PORT arguments
    if env and text in hosts:
        return hosts[text]
    # The container's own loopback (health checks, ALLOWED_HOSTS) is the replica's address.
    text = re.sub(r"(?<![\d.])127\.0\.0\.1(?![\d])", own, text) if env else text
    for name, address in hosts.items():
        text = re.sub(rf"(?<=@){re.escape(name)}(?=[:/])|(?<=//){re.escape(name)}(?=[:/])", address, text)
    for target in sorted(volumes, key=len, reverse=True):
        text = re.sub(rf"(?<![\w.]){re.escape(target)}(?=/|\b|$)", volumes[target], text)
    for user in CONTAINER_USERS:
        text = text.replace(user, _local_owner())
    return text


def _local_owner() -> str:
    import grp

    return f"{getpass.getuser()}:{grp.getgrgid(os.getegid()).gr_name}"


def _venv_tool(argv: list[str]) -> list[str]:
    """`python` and console scripts of our image are the project's venv's locally."""
    if not argv:
        return argv
    head = argv[0]
    if head == "python":
        return [sys.executable, *argv[1:]]
    candidate = Path(sys.executable).parent / head
    return [str(candidate), *argv[1:]] if candidate.exists() else argv


def _raw_volumes(path: Path) -> dict[str, list[str]]:
    import yaml

    services = yaml.safe_load(path.read_text())["services"]
    return {name: [str(v) for v in spec.get("volumes") or []] for name, spec in services.items()}


def base_env() -> dict[str, str]:
    """What every local process inherits from the person's shell: little, on purpose."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TERM", "TMPDIR", "USER")
    return {k: os.environ[k] for k in keep if k in os.environ}


def make_plan(
    state: Path,
    *,
    compose_file: Path = COMPOSE_FILE,
    scale: dict[str, int] | None = None,
    profiles: tuple[str, ...] = (),
) -> Plan:
    """The local processes of `compose_file`, with the variables of `state`/stack.env."""
    variables = read_env_file(state / "stack.env")
    subnet = variables.get("STACK_SUBNET", "127.0.77")
    if not re.fullmatch(r"127\.\d{1,3}\.\d{1,3}", subnet):
        raise ComposeError(f"STACK_SUBNET must look like 127.A.B, got {subnet!r}")
    # Like docker-compose.override.yml beside the compose file: the stack's own adjustments.
    services = load(compose_file, variables, override=state / OVERRIDE_FILE)
    raw_volumes = _raw_volumes(compose_file)
    skipped: dict[str, str] = {}
    wanted: list[tuple[Service, str]] = []
    for service in services.values():
        kind = _kind(service)
        if service.profiles and not set(service.profiles) & set(profiles):
            skipped[service.name] = f"profile {', '.join(service.profiles)} (run it on demand)"
        elif kind is None:
            skipped[service.name] = f"image {service.image} has no local equivalent"
        else:
            wanted.append((service, kind))

    addresses: dict[str, list[str]] = {}
    for index, (service, _) in enumerate(wanted):
        count = (scale or {}).get(service.name, service.replicas)
        addresses[service.name] = [f"{subnet}.{10 * (index + 1) + r}" for r in range(1, count + 1)]
    hosts = {name: found[0] for name, found in addresses.items()}

    processes: dict[str, LocalProcess] = {}
    for service, kind in wanted:
        volumes = _volumes(raw_volumes.get(service.name, []), state)
        many = len(addresses[service.name]) > 1
        for replica, address in enumerate(addresses[service.name], start=1):
            name = f"{service.name}-{replica}" if many else service.name
            rewrite = functools.partial(_rewrite, hosts=hosts, volumes=volumes, own=address)
            env = {**base_env(), **IMAGE_ENV,
                   **{k: rewrite(v, env=True) for k, v in service.environment.items()},
                   # Docker gives each container its id as HOSTNAME; locally the replica's name.
                   "HOSTNAME": name}
            argv = [rewrite(part) for part in service.argv]
            health = service.healthcheck.test if service.healthcheck else None
            if health is not None:
                health = [rewrite(part, env=True) for part in health]
            oneshot = _is_oneshot(service, services)
            source_argv = argv
            if kind == "bridge":
                argv = _venv_tool(argv)
            elif not oneshot:
                argv = server_argv(kind, argv, address=address, volumes=volumes, state=state, name=name)
            processes[name] = LocalProcess(
                name=name,
                service=service.name,
                kind=kind,
                argv=argv,
                source_argv=source_argv,
                entrypoint=argv[: len(service.entrypoint)] if kind == "bridge" else [],
                env=env,
                address=address,
                healthcheck=_venv_tool(health) if health and kind == "bridge" else health,
                depends_on={d: c for d, c in service.depends_on.items() if d in addresses},
                oneshot=oneshot,
                volumes=volumes,
                ports=_container_ports(service),
                peers=addresses,
            )
    return Plan(state=state, processes=processes, skipped=skipped)


def _is_oneshot(service: Service, services: dict[str, Service]) -> bool:
    return any(
        s.depends_on.get(service.name) == "service_completed_successfully" for s in services.values()
    )


def _container_ports(service: Service) -> tuple[int, ...]:
    return tuple(int(port.rsplit(":", 1)[-1].split("/")[0]) for port in service.ports)
