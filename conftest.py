"""Test-run defaults: development settings on an in-memory channel layer."""

import os

os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("SECRET_KEY", "tests-only-not-secret")
os.environ.pop("REDIS_URL", None)
