"""Long-lived servers freeze what they loaded at start, so full collections skip it."""

from __future__ import annotations

import subprocess
import sys

from tests.support.processes import REPO


def test_loading_the_application_freezes_what_it_loaded() -> None:
    # A process of its own: this test run's garbage collector is left as it is.
    code = "import gc; import project.asgi; print(gc.get_freeze_count(), gc.isenabled())"
    env = {"DJANGO_SETTINGS_MODULE": "project.settings", "DEBUG": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    frozen, enabled = done.stdout.split()
    assert int(frozen) > 10_000, done.stdout
    assert enabled == "True"  # collections still run, over what came after
