"""`runworker bridge-telemetry` that stops inside its first rollup transaction (a fault for tests).

After adding a batch to its rollups, before marking the readings and committing,
it writes the file named by ROLLUP_STALL_FILE and sleeps, so a test can kill it
mid-rollup with SIGKILL and check that nothing of the batch was written.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import django


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    django.setup()
    from bridge.services import telemetry

    marker = Path(os.environ["ROLLUP_STALL_FILE"])
    original = telemetry._upsert_latest

    def stalled(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        marker.write_text(str(os.getpid()))
        time.sleep(600)

    telemetry._upsert_latest = stalled  # type: ignore[assignment]
    from django.core.management import execute_from_command_line

    execute_from_command_line([sys.argv[0], "runworker", "bridge-telemetry"])


if __name__ == "__main__":
    main()
