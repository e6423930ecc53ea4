"""Settings, read from environment variables (see .env.example for every one)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from project.env import env

BASE_DIR = Path(__file__).resolve().parent.parent

# --- Core -------------------------------------------------------------------

DEBUG = env.bool("DEBUG", default=False)
if DEBUG:
    # Development only: a fixed key keeps sessions across restarts of the quick start.
    SECRET_KEY = env.str("SECRET_KEY", default="dev-insecure-do-not-use-in-production")
else:
    SECRET_KEY = env.str(  # production secrets have no default
        "SECRET_KEY", hint="DEBUG=1 uses a development key; production needs its own"
    )

ALLOWED_HOSTS = env.list(
    "ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if DEBUG else []
)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    # daphne first: its runserver (ASGI: HTTP and WebSocket, static files with DEBUG)
    # replaces Django's WSGI one, Channels' convention.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # bridge first: its runworker (with the reconciler) overrides channels'.
    "bridge",
    "protocols.mqtt",
    "protocols.xmpp",
    "channels",
]

MIDDLEWARE = [
    "bridge.logcontext.RequestContext",  # a request id on every log line of the request
    "bridge.middleware.ApiJsonErrors",  # sees Django's own error pages too
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

TIME_ZONE = env.str("TIME_ZONE", default="UTC")  # of logs and the admin; the API speaks UTC
USE_TZ = True

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

# --- Database ---------------------------------------------------------------

DATABASE_URL = env.str("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
try:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a database URL: {exc}") from exc
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Reused across calls: opening SQLite (and running its PRAGMAs) per call cost ~9 % of runmqtt.
    DATABASES["default"]["CONN_MAX_AGE"] = 600
    DATABASES["default"]["OPTIONS"] = {
        # IMMEDIATE takes the write lock at BEGIN, so concurrent writers queue on the
        # busy timeout instead of failing with "database is locked" on lock upgrade.
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer ----------------------------------------------------------

REDIS_URL = env.optional("REDIS_URL")
# "core" (lists, per-channel capacity) or "pubsub" (Redis PUBLISH: measured ~3.5x cheaper
# group_send, see benchmarks/channel_layers.py). Both are at-most-once; the bridge
# tolerates that by design (seq gaps are filled from the database).
REDIS_CHANNEL_LAYER = env.str("REDIS_CHANNEL_LAYER", default="core")
if REDIS_CHANNEL_LAYER not in {"core", "pubsub"}:
    raise ImproperlyConfigured(
        f"REDIS_CHANNEL_LAYER must be 'core' or 'pubsub', got {REDIS_CHANNEL_LAYER!r}"
    )
if REDIS_URL and not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(f"REDIS_URL must be redis://, rediss:// or unix://, got {REDIS_URL!r}")
if REDIS_URL:
    _redis_host = {
        "address": REDIS_URL,
        # redis-py's default read timeout equals channels-redis's 5 s blocking pop:
        # after 5 idle seconds the receive loop would die with TimeoutError.
        "socket_timeout": env.int("REDIS_SOCKET_TIMEOUT", 30, minimum=10),
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 30,
        # The pool default (100) fails group_add under a burst of WebSocket
        # handshakes with "Too many connections".
        "max_connections": env.int("REDIS_MAX_CONNECTIONS", 2000, minimum=10),
    }
    if REDIS_CHANNEL_LAYER == "pubsub":
        CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                "CONFIG": {"hosts": [_redis_host]},
            }
        }
    else:
        CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {
                    "hosts": [_redis_host],
                    "capacity": env.int("CHANNEL_CAPACITY", 1000, minimum=10),
                    "expiry": 60,
                    "group_expiry": 86400,
                },
            }
        }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Static files -----------------------------------------------------------

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# --- Security ---------------------------------------------------------------

# WebSocket handshakes are accepted from exactly these origins (scheme://host[:port]);
# empty: the site's own origin (the handshake's scheme and Host, the host in ALLOWED_HOSTS).
WEBSOCKET_ALLOWED_ORIGINS = env.list("WEBSOCKET_ALLOWED_ORIGINS", default=[])
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # the chat page reads it to post
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if not DEBUG:
    SESSION_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

# --- Bridge -----------------------------------------------------------------

BRIDGE_MAX_TEXT = env.int("BRIDGE_MAX_TEXT", 4000, minimum=1)  # characters in one message
BRIDGE_MAX_FRAME = env.int("BRIDGE_MAX_FRAME", 16384, minimum=256)  # bytes in one WS frame
BRIDGE_HISTORY_LIMIT = 50
# Seconds a WebSocket send may wait for a client that does not read before it is let go.
BRIDGE_WS_SEND_TIMEOUT = env.int("BRIDGE_WS_SEND_TIMEOUT", 20, minimum=1)
# permessage-deflate for WebSockets (runweb, runbridge). Off: browsers offer it, and its zlib
# contexts cost about 19 KiB more per idle socket (measured: 37 KiB instead of 18), and a
# compressed frame is compressed again for every socket instead of written as it is.
WEBSOCKET_COMPRESSION = env.bool("WEBSOCKET_COMPRESSION", default=False)
BRIDGE_TASKS_CHANNEL = "bridge-tasks"
# Seconds a worker holds a task unless it renews the lease (it does, every third of it,
# while the task runs): a killed worker's task is taken over within this long.
BRIDGE_TASK_LEASE = env.int("BRIDGE_TASK_LEASE", 15, minimum=3)
# Seconds a stopping process (SIGTERM) gives the work in hand before it exits; keep it
# below the orchestrator's kill timeout (compose: stop_grace_period 30 s).
BRIDGE_SHUTDOWN_GRACE = env.int("BRIDGE_SHUTDOWN_GRACE", 20, minimum=0)
BRIDGE_RECONCILE_INTERVAL = env.int("BRIDGE_RECONCILE_INTERVAL", 15, minimum=1)  # seconds
BRIDGE_RETENTION_DAYS = env.int("BRIDGE_RETENTION_DAYS", 0, minimum=0)  # 0 keeps all
# Seconds a web user's presence lasts unless its server renews it (every third of it):
# a server that dies without goodbyes leaves nobody "online" for longer than this.
BRIDGE_PRESENCE_TTL = env.int("BRIDGE_PRESENCE_TTL", 90, minimum=3)
# Completed and failed Task rows are deleted after this many hours (0 keeps them).
BRIDGE_TASK_KEEP_HOURS = env.int("BRIDGE_TASK_KEEP_HOURS", 168, minimum=0)

# --- Telemetry ----------------------------------------------------------------

# The worker channel of rollups and alerts (`runworker bridge-telemetry`), apart from chat tasks.
BRIDGE_TELEMETRY_CHANNEL = "bridge-telemetry"
# Lengths in seconds of the two rollup windows the API calls "1m" and "1h" (shorter in tests).
TELEMETRY_WINDOW_SHORT = env.int("TELEMETRY_WINDOW_SHORT", 60, minimum=1)
TELEMETRY_WINDOW_LONG = env.int("TELEMETRY_WINDOW_LONG", 3600, minimum=1)
# Readings rolled up per transaction.
TELEMETRY_BATCH = env.int("TELEMETRY_BATCH", 1000, minimum=1)
# Seconds between a telemetry worker's sweeps (lost wake-ups, silent devices).
TELEMETRY_SWEEP_INTERVAL = env.int("TELEMETRY_SWEEP_INTERVAL", 5, minimum=1)
# Hours to keep raw readings (once rolled up), 1m and 1h rollups; 0 keeps them.
TELEMETRY_KEEP_RAW_HOURS = env.int("TELEMETRY_KEEP_RAW_HOURS", 48, minimum=0)
TELEMETRY_KEEP_SHORT_HOURS = env.int("TELEMETRY_KEEP_SHORT_HOURS", 168, minimum=0)
TELEMETRY_KEEP_LONG_HOURS = env.int("TELEMETRY_KEEP_LONG_HOURS", 8760, minimum=0)

# Where `runbridge` says what it serves (the MQTT broker, for simulate_devices).
BRIDGE_RUN_FILE = env.str("BRIDGE_RUN_FILE", default=str(BASE_DIR / "var" / "runbridge.json"))
# What `runbridge` runs in one process (see bridge/embedded.py).
BRIDGE_EMBEDDED_SERVICES = env.list(
    "BRIDGE_EMBEDDED_SERVICES",
    default=[
        "protocols.websocket.embedded.serve",
        "bridge.tasks.embedded.serve",
        "protocols.xmpp.embedded.serve",
        "protocols.mqtt.embedded.serve",
    ],
)

# --- Ops ------------------------------------------------------------------------

# The health endpoint of runmqtt, runxmpp and runworker (bridge/ops.py): /healthz and
# /readyz on OPS_HOST:OPS_PORT; 0 is off (each command's --ops-port overrides it).
OPS_HOST = env.str("OPS_HOST", default="127.0.0.1")
OPS_PORT = env.int("OPS_PORT", 0, minimum=0)
# Client networks the web process's /metrics answers (comma-separated CIDRs); others get 403.
METRICS_ALLOWED_NETWORKS = env.list("METRICS_ALLOWED_NETWORKS", default=["127.0.0.0/8", "::1/128"])
try:
    METRICS_NETWORKS = tuple(ipaddress.ip_network(net, strict=False) for net in METRICS_ALLOWED_NETWORKS)
except ValueError as exc:
    raise ImproperlyConfigured(f"METRICS_ALLOWED_NETWORKS: {exc}") from exc

# --- Rate limits (bridge/ratelimit.py) --------------------------------------

# One shape for every edge: <EDGE>_RATE messages per second per sender (0: no limit) and
# <EDGE>_BURST at once. Shared through Redis when REDIS_URL is set, per process otherwise.
WS_RATE = env.float("WS_RATE", 5, minimum=0)  # frames per signed-in user (or per socket)
WS_BURST = env.int("WS_BURST", 20, minimum=1)
API_RATE = env.float("API_RATE", 10, minimum=0)  # POSTs per API user
API_BURST = env.int("API_BURST", 50, minimum=1)
MQTT_RATE = env.float("MQTT_RATE", 20, minimum=0)  # messages per device
MQTT_BURST = env.int("MQTT_BURST", 200, minimum=1)
XMPP_RATE = env.float("XMPP_RATE", 2, minimum=0)  # messages per occupant's real JID
XMPP_BURST = env.int("XMPP_BURST", 10, minimum=1)
# Seconds without voice for an occupant the limit refuses 5 times in a row (0: never muted).
XMPP_FLOOD_MUTE = env.float("XMPP_FLOOD_MUTE", 30, minimum=0)

# --- MQTT -------------------------------------------------------------------

# mqtt://user:password@host:1883/?client_id=bridge-1 (mqtts:// for TLS); unset: the embedded broker.
# Sender kinds whose "/cmd <device> <text>" in a room commands a device in that room.
MQTT_CHAT_COMMAND_SENDERS = env.list("MQTT_CHAT_COMMAND_SENDERS", default=["user"])
MQTT_URL = env.optional("MQTT_URL")
MQTT_CLIENT_ID = env.str("MQTT_CLIENT_ID", default="")  # overrides the URL's client_id
MQTT_PROTOCOL = env.str("MQTT_PROTOCOL", default="auto")  # auto (5, else 3.1.1), 5, 3.1.1
if MQTT_PROTOCOL not in {"auto", "5", "3.1.1"}:
    raise ImproperlyConfigured(f"MQTT_PROTOCOL must be auto, 5 or 3.1.1, got {MQTT_PROTOCOL!r}")
MQTT_TOPIC_PREFIX = env.str("MQTT_TOPIC_PREFIX", default="").strip("/")
MQTT_QOS = env.int("MQTT_QOS", 1, minimum=0)  # for what the bridge publishes
if MQTT_QOS > 2:
    raise ImproperlyConfigured(f"MQTT_QOS must be 0, 1 or 2, got {MQTT_QOS}")
# Several runmqtt processes split the incoming stream through $share/<group>/; empty: no sharing.
MQTT_SHARED_GROUP = env.str("MQTT_SHARED_GROUP", default="bridge")
MQTT_SESSION_EXPIRY = env.int("MQTT_SESSION_EXPIRY", 86400, minimum=0)  # seconds
MQTT_KEEPALIVE = env.int("MQTT_KEEPALIVE", 30, minimum=5)  # seconds
MQTT_RECONNECT_MAX = env.int("MQTT_RECONNECT_MAX", 30, minimum=1)  # back-off ceiling, seconds
MQTT_MAX_PAYLOAD = env.int("MQTT_MAX_PAYLOAD", 16384, minimum=256)  # bytes from a device
MQTT_SWEEP_INTERVAL = env.int("MQTT_SWEEP_INTERVAL", 10, minimum=1)  # lost wake-ups, new rooms
# Milliseconds runmqtt waits for more of a burst before it stores (and before it claims what
# to publish): fewer transactions per message for at most this much latency. Lower it for
# latency at a few hundred messages per second, at the price of more CPU per message.
MQTT_LINGER_MS = env.float("MQTT_LINGER_MS", 10, minimum=0)
if MQTT_LINGER_MS > 1000:
    raise ImproperlyConfigured(f"MQTT_LINGER_MS is at most 1000 (a second), got {MQTT_LINGER_MS:g}")
# Seconds a room's unconfirmed publishes stay with a runmqtt that stopped renewing (died).
MQTT_PUBLISH_LEASE = env.int("MQTT_PUBLISH_LEASE", 30, minimum=3)
# What a device the bridge does not know gets: refused, or registered (development).
MQTT_UNKNOWN_DEVICES = env.str("MQTT_UNKNOWN_DEVICES", default="register" if DEBUG else "refuse")
if MQTT_UNKNOWN_DEVICES not in {"refuse", "register"}:
    raise ImproperlyConfigured(
        f"MQTT_UNKNOWN_DEVICES must be refuse or register, got {MQTT_UNKNOWN_DEVICES!r}"
    )
# The bridge manages device permissions in mosquitto's dynamic security plugin (deploy/mosquitto/):
# each device a client bound to its own client id with exactly its topics. Off: private rooms
# are not published on MQTT (nothing would keep other devices from reading them).
MQTT_DYNSEC = env.bool("MQTT_DYNSEC", default=False)
if MQTT_DYNSEC and not MQTT_URL:
    raise ImproperlyConfigured("MQTT_DYNSEC=1 needs MQTT_URL (the broker and the bridge's admin account)")
# Seconds between full comparisons of the broker's permissions with the database.
MQTT_DYNSEC_RESYNC = env.int("MQTT_DYNSEC_RESYNC", 60, minimum=5)
# A mosquitto password file the bridge manages (`devices add --password`); unset: not managed.
MQTT_PASSWD_FILE = env.optional("MQTT_PASSWD_FILE")

# --- XMPP -------------------------------------------------------------------

# XMPP is off unless the domain, component, secret, server host and MUC service are all set.
XMPP_DOMAIN = env.optional("XMPP_DOMAIN")  # the users' domain, e.g. localhost
XMPP_COMPONENT_JID = env.optional("XMPP_COMPONENT_JID")  # the bridge, e.g. bridge.localhost
XMPP_COMPONENT_SECRET = env.optional("XMPP_COMPONENT_SECRET")  # shared with the server
XMPP_SERVER_HOST = env.optional("XMPP_SERVER_HOST")  # where the server's component port is
XMPP_SERVER_PORT = env.int("XMPP_SERVER_PORT", 5347, minimum=1)  # its component port (XEP-0114)
XMPP_MUC_SERVICE = env.optional("XMPP_MUC_SERVICE")  # e.g. conference.localhost
XMPP_BRIDGE_NICK = env.str("XMPP_BRIDGE_NICK", default="bridge")  # the relay's nick in each room
# Seconds between checks for rooms created without the edge hearing of it.
XMPP_ROOM_SYNC_INTERVAL = env.int("XMPP_ROOM_SYNC_INTERVAL", 30, minimum=1)
# Messages per room sent to the MUC and not yet echoed back; within the server's replayed history.
XMPP_WINDOW = env.int("XMPP_WINDOW", 10, minimum=1)

# --- Logging ----------------------------------------------------------------

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(f"LOG_LEVEL must be a logging level name, got {LOG_LEVEL!r}")
# plain (human lines) or json (one JSON object per line on stdout, with request, room, sender).
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
if LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, got {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "bridge.logcontext.JsonFormatter"},
    },
    "filters": {"context": {"()": "bridge.logcontext.ContextFilter"}},
    "handlers": {
        # JSON lines go to stdout (what log collectors read); plain lines to stderr as before.
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"],
                    **({"stream": "ext://sys.stdout"} if LOG_FORMAT == "json" else {})},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own console handler (DEBUG only) would print its lines twice.
        "django": {"handlers": [], "propagate": True},
        "django.channels.server": {"level": "WARNING"},
        "slixmpp": {"level": "WARNING"},
        "amqtt": {"level": "WARNING"},
        "paho": {"level": "WARNING"},
        "transitions": {"level": "WARNING"},
    },
}
