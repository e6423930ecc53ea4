"""Settings for the test run: development defaults, in-memory channel layer, test SQLite."""

import os

os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("SECRET_KEY", "tests-only-not-secret")
os.environ.pop("REDIS_URL", None)
for _name in [n for n in os.environ if n.startswith(("MQTT_", "XMPP_"))]:
    del os.environ[_name]

# No per-sender limits unless a test turns them on (tests post fast from one user).
for _name in ("WS_RATE", "API_RATE", "MQTT_RATE"):
    os.environ[_name] = "0"

from project.settings import *  # noqa: E402,F403
