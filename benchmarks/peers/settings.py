"""Settings of the peer project: SQLite file and the Redis channel layer, from the environment.

PEER_DATABASE: SQLite path; PEER_REDIS_URL; PEER_LAYER: `core` (RedisChannelLayer,
the tutorial's) or `pubsub` (RedisPubSubChannelLayer).
"""

import os

SECRET_KEY = "benchmark-peer-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = ["benchmarks.peers"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "benchmarks.peers.asgi"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("PEER_DATABASE", "peer.sqlite3"),
        "OPTIONS": {"timeout": 30},
    }
}
_LAYER = os.environ.get("PEER_LAYER", "core")
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": (
            "channels_redis.pubsub.RedisPubSubChannelLayer"
            if _LAYER == "pubsub"
            else "channels_redis.core.RedisChannelLayer"
        ),
        # The tutorial's config but for two redis-py defaults that would stop the run
        # rather than measure it: a 5 s read timeout (equal to the layer's blocking
        # pop, so a quiet receive loop dies) and a 100-connection pool.
        "CONFIG": {"hosts": [{
            "address": os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/0"),
            "socket_timeout": 30,
            "max_connections": 2000,
        }]},
    }
}
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}}
