"""`runbridge`'s run file: where the running quick start serves, for tools on the same machine.

`simulate_devices` reads it to find the MQTT broker of a `runbridge` started
with `--mqtt-port N`. JSON, written when a service is up and removed at exit;
an entry whose process is gone is ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings


def _path() -> Path:
    return Path(settings.BRIDGE_RUN_FILE)


def run_file_read() -> dict[str, Any]:
    """The entries of a live runbridge ({} when none runs or the file is stale)."""
    try:
        entries = json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(entries, dict) or not _alive(entries.get("pid")):
        return {}
    return entries


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_file_entry(key: str, value: Any) -> Iterator[None]:
    """Record `key` for as long as the block runs (this process's pid with it)."""
    path = _path()
    entries = run_file_read()
    if entries.get("pid") != os.getpid():
        entries = {"pid": os.getpid()}
    entries[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))
    try:
        yield
    finally:
        current = run_file_read()
        if current.get("pid") == os.getpid():
            current.pop(key, None)
            if set(current) == {"pid"}:
                path.unlink(missing_ok=True)
            else:
                path.write_text(json.dumps(current))
