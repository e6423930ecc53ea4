"""Bad settings stop the process at start with the variable's name, never later."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.processes import REPO, bridge_env


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"DEBUG": "0", "SECRET_KEY": ""}, "SECRET_KEY must be set"),
        ({"DEBUG": "maybe"}, "DEBUG must be a boolean"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL must be a logging level name"),
        ({"DATABASE_URL": "foo://nowhere"}, "DATABASE_URL is not a database URL"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL must be redis://"),
        ({"REDIS_URL": "redis://localhost", "REDIS_MAX_CONNECTIONS": "lots"}, "REDIS_MAX_CONNECTIONS must be an integer"),
        ({"REDIS_URL": "redis://localhost", "REDIS_SOCKET_TIMEOUT": "5"}, "REDIS_SOCKET_TIMEOUT must be at least 10"),
        ({"REDIS_CHANNEL_LAYER": "kafka"}, "REDIS_CHANNEL_LAYER must be 'core' or 'pubsub'"),
        ({"MQTT_PROTOCOL": "7"}, "MQTT_PROTOCOL must be"),
        ({"MQTT_LINGER_MS": "-1"}, "MQTT_LINGER_MS must be at least 0"),
        ({"MQTT_LINGER_MS": "5000"}, "MQTT_LINGER_MS is at most 1000"),
    ],
)
def test_a_bad_setting_is_a_clear_error_at_start(tmp_path: object, overrides: dict[str, str], expected: str) -> None:
    env = bridge_env(tmp_path, **overrides)  # type: ignore[arg-type]
    done = subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "ImproperlyConfigured" in last and expected in last, done.stderr[-2000:]


def test_good_settings_pass_the_checks(tmp_path: object) -> None:
    env = bridge_env(tmp_path, REDIS_URL="redis://127.0.0.1:1/0", REDIS_CHANNEL_LAYER="pubsub")  # type: ignore[arg-type]
    done = subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
