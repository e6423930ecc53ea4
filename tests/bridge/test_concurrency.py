"""Concurrent writers in separate OS processes: seq has no gaps, no duplicates; keys store once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support.processes import bridge_env, manage, query, start

pytestmark = pytest.mark.slow

PER_POSTER = 60


def test_concurrent_posts_get_gapless_unique_seqs(database_url: str, tmp_path: Path) -> None:
    env = bridge_env(tmp_path, DATABASE_URL=database_url)
    manage(["migrate", "--noinput", "-v0"], env=env)
    manage(["rooms", "add", "race"], env=env)
    posters = [
        ["carol", "--keys", "shared"],  # these two race on the same idempotency keys
        ["carol", "--keys", "shared"],
        ["dave"],
        ["erin"],
    ]
    procs = [
        start(f"poster{i}", [sys.executable, "-m", "tests.support.poster", "race", str(PER_POSTER), *args], log_dir=tmp_path, env=env)
        for i, args in enumerate(posters)
    ]
    for proc in procs:
        assert proc.popen.wait(timeout=240) == 0, proc.output()

    seqs = [row[0] for row in query(database_url, "SELECT m.seq FROM bridge_message m JOIN bridge_room r ON r.id = m.room_id WHERE r.slug = 'race' ORDER BY m.seq")]
    assert seqs == list(range(1, 3 * PER_POSTER + 1))
    carol = query(database_url, "SELECT COUNT(*) FROM bridge_message m JOIN bridge_identity i ON i.id = m.sender_id WHERE i.name = 'carol'")
    assert carol[0][0] == PER_POSTER
    last_seq = query(database_url, "SELECT last_seq FROM bridge_room WHERE slug = 'race'")
    assert last_seq[0][0] == 3 * PER_POSTER
