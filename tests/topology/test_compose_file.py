"""docker-compose.yml as Debian's docker-compose reads it (no Docker engine needed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.processes import REPO, require_binary
from topology.compose import load

pytestmark = pytest.mark.slow

SECRETS = {"SECRET_KEY": "s", "POSTGRES_PASSWORD": "p", "MQTT_BRIDGE_PASSWORD": "m",
           "XMPP_COMPONENT_SECRET": "x", "ALLOWED_HOSTS": "chat.example.org"}


def compose_config(tmp_path: Path, variables: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in variables.items()))
    return subprocess.run(
        [require_binary("docker-compose"), "--env-file", str(env_file), "-f",
         str(REPO / "docker-compose.yml"), "config"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},  # not the test run's variables
    )


def test_valid_and_our_reader_agrees_with_docker_compose(tmp_path: Path) -> None:
    done = compose_config(tmp_path, SECRETS)
    assert done.returncode == 0, done.stderr
    theirs = yaml.safe_load(done.stdout)["services"]
    ours = load(REPO / "docker-compose.yml", SECRETS)
    assert set(theirs) == set(ours)
    for name, service in ours.items():
        assert {k: str(v) for k, v in (theirs[name].get("environment") or {}).items()} == service.environment, name
        command = theirs[name].get("command") or []
        assert [str(part) for part in command] == service.command, name
        assert theirs[name].get("depends_on", {}).keys() == service.depends_on.keys(), name
    assert ours["web"].environment["ALLOWED_HOSTS"] == "chat.example.org,127.0.0.1"


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_every_secret_is_required(tmp_path: Path, missing: str) -> None:
    done = compose_config(tmp_path, {k: v for k, v in SECRETS.items() if k != missing})
    assert done.returncode != 0
    assert missing in done.stderr
