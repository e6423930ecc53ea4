"""docker-compose.yml as data: services with their commands, environment, healthchecks.

Interpolation follows the compose specification for what our file uses:
`$$` is a literal `$`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
`${VAR:?error}` and `${VAR?error}`. A missing required variable is an error
naming it, as with `docker compose config`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class ComposeError(Exception):
    """The compose file cannot be read as we need it (a missing variable, a bad shape)."""


@dataclass(frozen=True)
class Healthcheck:
    test: list[str]  # argv (CMD) or ["sh", "-c", line] (CMD-SHELL)
    interval: float = 30.0


@dataclass(frozen=True)
class Service:
    name: str
    image: str | None
    built: bool  # `build: .`: our own image, whose commands run in the project's venv
    command: list[str]
    entrypoint: list[str]
    environment: dict[str, str]
    depends_on: dict[str, str]  # service -> condition
    healthcheck: Healthcheck | None
    replicas: int = 1
    profiles: tuple[str, ...] = ()
    ports: tuple[str, ...] = field(default_factory=tuple)

    @property
    def argv(self) -> list[str]:
        return [*self.entrypoint, *self.command]


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        op, arg = match["op"] or "", match["arg"] or ""
        value = variables.get(name)
        unset = value is None or (op.startswith(":") and value == "")
        if op.endswith("?") and unset:
            raise ComposeError(f"{name} is required: {arg or 'set it in .env'}")
        if op.endswith("-") and unset:
            return interpolate(arg, variables)
        return value or ""

    return _VARIABLE.sub(replace, text)


def _interpolate_tree(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [_interpolate_tree(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, variables) for key, value in node.items()}
    return node


def _argv(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return ["sh", "-c", value]
    if isinstance(value, list) and all(isinstance(item, str | int) for item in value):
        return [str(item) for item in value]
    raise ComposeError(f"{what}: a list of strings or one string")


def _environment(value: object, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    if isinstance(value, list):
        return dict(str(item).partition("=")[::2] for item in value)
    raise ComposeError(f"{what}: a mapping or a list of NAME=value")


def _healthcheck(value: object, what: str) -> Healthcheck | None:
    if not isinstance(value, dict) or value.get("disable"):
        return None
    test = value.get("test")
    if isinstance(test, str):
        argv = ["sh", "-c", test]
    elif isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL"):
        argv = [str(item) for item in test[1:]] if test[0] == "CMD" else ["sh", "-c", str(test[1])]
    else:
        raise ComposeError(f"{what}: test must be CMD, CMD-SHELL or a string")
    return Healthcheck(test=argv, interval=_seconds(value.get("interval", "30s")))


def _seconds(value: object) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", str(value))
    if not match:
        raise ComposeError(f"not a duration: {value!r}")
    number, unit = float(match[1]), match[2] or "s"
    return number / 1000 if unit == "ms" else number * 60 if unit == "m" else number


def _depends_on(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, list):
        return {str(name): "service_started" for name in value}
    if isinstance(value, dict):
        return {str(k): str((v or {}).get("condition", "service_started")) for k, v in value.items()}
    raise ComposeError("depends_on: a list or a mapping")


def _merged(base: Any, override: Any) -> Any:
    """An override file over the base, as compose merges them: mappings deep, the rest replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: _merged(base.get(k), v) for k, v in override.items()}}
    return override


def load(path: Path, variables: Mapping[str, str], *, override: Path | None = None) -> dict[str, Service]:
    """Every service of the compose file at `path` (and `override`), interpolated with `variables`."""
    document = yaml.safe_load(path.read_text())
    if override is not None and override.exists():
        document = _merged(document, yaml.safe_load(override.read_text()) or {})
    if not isinstance(document, dict) or not isinstance(document.get("services"), dict):
        raise ComposeError(f"{path}: no services")
    services = _interpolate_tree(document["services"], variables)
    result: dict[str, Service] = {}
    for name, spec in services.items():
        what = f"{path.name}: services.{name}"
        deploy = spec.get("deploy") or {}
        result[name] = Service(
            name=name,
            image=spec.get("image"),
            built="build" in spec,
            command=_argv(spec.get("command"), f"{what}.command"),
            entrypoint=_argv(spec.get("entrypoint"), f"{what}.entrypoint"),
            environment=_environment(spec.get("environment"), f"{what}.environment"),
            depends_on=_depends_on(spec.get("depends_on")),
            healthcheck=_healthcheck(spec.get("healthcheck"), f"{what}.healthcheck"),
            replicas=int(deploy.get("replicas", 1)),
            profiles=tuple(spec.get("profiles") or ()),
            ports=tuple(str(port) for port in spec.get("ports") or ()),
        )
    return result


def read_env_file(path: Path) -> dict[str, str]:
    """A compose .env file: NAME=value lines, # comments, optional quotes."""
    variables: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        variables[name.strip()] = value
    return variables
