"""docker-compose.yml read as docker compose reads it, and made local (no servers started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from topology.compose import ComposeError, interpolate
from topology.plan import Plan, make_plan
from topology.procfile import init_state, procfile


@pytest.fixture
def plan(tmp_path: Path) -> Plan:
    init_state(tmp_path, subnet="127.0.99")
    return make_plan(tmp_path)


def test_interpolation_follows_compose() -> None:
    variables = {"SET": "value", "EMPTY": ""}
    assert interpolate("$$HOME ${SET} $SET", variables) == "$HOME value value"
    assert interpolate("${EMPTY:-fallback}|${EMPTY-fallback}|${UNSET-x}", variables) == "fallback||x"
    with pytest.raises(ComposeError, match="NEEDED is required: set it"):
        interpolate("${NEEDED:?set it}", variables)
    with pytest.raises(ComposeError, match="EMPTY"):
        interpolate("${EMPTY:?}", variables)


def test_every_service_replica_gets_its_own_loopback_address(plan: Plan) -> None:
    names = list(plan.processes)
    assert {"postgres", "redis", "mosquitto", "prosody", "migrate", "xmpp"} <= set(names)
    assert {"web-1", "web-2", "worker-1", "worker-2", "mqtt-1", "mqtt-2"} <= set(names)
    addresses = [p.address for p in plan.processes.values()]
    assert len(set(addresses)) == len(addresses)
    assert all(address.startswith("127.0.99.") for address in addresses)
    assert set(plan.skipped) == {"manage"}
    assert plan.by_name("prosody-cert").oneshot and not plan.by_name("prosody").oneshot


def test_service_names_become_addresses_only_where_they_are_hosts(plan: Plan) -> None:
    web = plan.by_name("web-1")
    postgres, redis, prosody = (plan.by_name(n).address for n in ("postgres", "redis", "prosody"))
    assert web.env["DATABASE_URL"].startswith("postgres://bridge:")  # the scheme stays
    assert web.env["DATABASE_URL"].endswith(f"@{postgres}:5432/bridge")
    assert web.env["REDIS_URL"] == f"redis://{redis}:6379/0"
    assert web.env["XMPP_SERVER_HOST"] == prosody
    assert web.env["OPS_HOST"] == web.address  # 0.0.0.0: this replica's own address
    assert f"{web.address}:8000" in web.argv
    assert plan.by_name("migrate").argv[-2:] == ["migrate", "--noinput"]  # a word, not a host
    assert plan.by_name("prosody").env["PROSODY_INTERFACE"] == prosody


def test_scale_and_healthchecks_and_procfile(tmp_path: Path) -> None:
    init_state(tmp_path, subnet="127.0.98")
    plan = make_plan(tmp_path, scale={"mqtt": 3})
    assert [p.name for p in plan.replicas("mqtt")] == ["mqtt-1", "mqtt-2", "mqtt-3"]
    mqtt = plan.by_name("mqtt-3")
    assert mqtt.env["HOSTNAME"] == "mqtt-3"  # the slot lease's owner, as a container's id
    assert mqtt.healthcheck is not None and mqtt.address in mqtt.healthcheck
    assert mqtt.depends_on["mosquitto"] == "service_healthy"
    text = procfile(plan, state_arg=str(tmp_path))
    assert "mqtt-3: exec " in text and "start mqtt-3" in text
    assert "# manage: not run locally" in text
    secrets = (tmp_path / "stack.env").read_text()
    assert "SECRET_KEY=" in secrets and (tmp_path / "stack.env").stat().st_mode & 0o077 == 0
