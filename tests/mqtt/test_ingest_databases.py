"""The batch store's promises on both databases: each message stored once, gapless per room.

The in-process tests (test_ingest_batch.py) run on the test suite's SQLite; the
rows' values are adapted per backend (messages_insert: UUIDs, JSON, times), so
the same batches run here in a process of their own against a SQLite file and
a real PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO, bridge_env

pytestmark = pytest.mark.slow


def test_batches_store_each_message_once_in_order_on_both_databases(
    database_url: str, tmp_path: Path
) -> None:
    env = bridge_env(tmp_path, DATABASE_URL=database_url, MQTT_UNKNOWN_DEVICES="refuse")
    done = subprocess.run([sys.executable, "-m", "tests.support.ingest_scenarios"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])

    # A duplicate id in the middle: one row, and the duplicate answers the first one's seq.
    assert seen["duplicate"]["rows"] == [[1, "a"], [2, "b"], [3, "c"]]
    assert seen["duplicate"]["outcomes"] == [["lobby", 1], ["lobby", 2], ["lobby", 1], ["lobby", 3]]
    assert seen["envelopes_match"], "the envelope a batch answers is what the database holds"

    # A batch spanning rooms: each room its own gapless seq; a refused message takes none.
    assert seen["spanning"]["kitchen"] == [[1, "k1"], [2, "k2"]]
    assert seen["spanning"]["hall"] == [[1, "h1"], [2, "h2"]]
    assert seen["spanning"]["outcomes"] == [
        ["kitchen", 1], ["hall", 1], ["kitchen", 2], "room_not_found", ["hall", 2]]

    # A commit that fails leaves nothing; the same batch twice stores each message once.
    assert seen["failed_commit_raised"]
    assert seen["after_failed_commit"] == {
        "lobby": [[1, "a"], [2, "b"], [3, "c"]], "kitchen": [[1, "k1"], [2, "k2"]], "lobby_last_seq": 3}
    assert seen["retried"]["lobby"] == [[1, "a"], [2, "b"], [3, "c"], [4, "one"], [5, "three"]]
    assert seen["retried"]["kitchen"] == [[1, "k1"], [2, "k2"], [3, "two"]]
    first, second = seen["retried"]["outcomes"]
    assert first == second == [["lobby", 4], ["kitchen", 3], ["lobby", 5]]

    # A batch large enough for COPY on PostgreSQL (escaped text, JSON, a duplicate id)
    # stores exactly what the INSERT path would; a row it must refuse writes nothing.
    large = seen["large"]
    assert large["stored"] == 2 + large["sent"] - 1
    assert large["texts_match"] and large["data_match"] and large["envelopes_match"]
    assert large["duplicate_answers"]
    assert large["again_same"] and large["again_stored"] == large["stored"]
    assert large["clash"] == "IntegrityError"
    assert large["after_clash"] == large["stored"]

    # The publisher's hand-written statements: posts only where a device may post (not
    # where it only listens), the lease held against another process, renewed only by its
    # holder, given back with the cursor moved forward (never back), taken when lapsed.
    claims = seen["claims"]
    assert claims["allowed"] == [
        ["sensor-1", "hall", "device", "sensor-1", False, True, True],
        ["sensor-9", "attic", "device", "sensor-9", True, True, True],
    ]
    assert claims["first"] == [[1, "one"], [2, "two"], True]
    assert claims["held"]
    assert claims["renewed"] == [True, False]
    assert claims["delivered"] and not claims["not_back"]  # the second: no lease left to give back
    assert claims["cursor"] == [2, "", None]
    assert claims["taken"] == ["three"]
    assert claims["lapsed"] == ["three"]
    assert claims["missing_room"] == [0, []]
