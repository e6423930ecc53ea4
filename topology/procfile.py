"""The Procfile honcho runs for `make stack`, and the stack's own variables (stack.env)."""

from __future__ import annotations

import random
import secrets
import shlex
import sys
from pathlib import Path

from topology.plan import Plan

# Secrets the compose file requires from .env; the local stack makes its own once.
GENERATED = ("SECRET_KEY", "POSTGRES_PASSWORD", "MQTT_BRIDGE_PASSWORD", "XMPP_COMPONENT_SECRET")


def init_state(state: Path, *, subnet: str | None = None) -> Path:
    """`state`/stack.env with fresh secrets and a loopback subnet, unless it exists."""
    state.mkdir(parents=True, exist_ok=True)
    env_file = state / "stack.env"
    if not env_file.exists():
        chosen = subnet or f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
        lines = [f"{name}={secrets.token_urlsafe(24)}" for name in GENERATED]
        # Every address of the stack is a loopback one: any Host is this machine's own.
        lines += [f"STACK_SUBNET={chosen}", "ALLOWED_HOSTS=*", "SECURE_COOKIES=0",
                  "LOG_FORMAT=plain"]
        env_file.write_text("# make stack's .env (docker compose reads .env the same way)\n"
                            + "\n".join(lines) + "\n")
        env_file.chmod(0o600)
    return env_file


def procfile(plan: Plan, *, state_arg: str) -> str:
    """One line per process: `python -m topology start NAME`; the command it runs above it."""
    python = shlex.quote(sys.executable)
    lines = ["# Generated from docker-compose.yml by `python -m topology procfile`; do not edit."]
    for process in plan.processes.values():
        lines.append(f"# {process.name}: {shlex.join(process.argv)}")
        lines.append(f"{process.name}: exec {python} -m topology --state {shlex.quote(state_arg)} start {process.name}")
    for service, why in plan.skipped.items():
        lines.append(f"# {service}: not run locally: {why}")
    return "\n".join(lines) + "\n"
