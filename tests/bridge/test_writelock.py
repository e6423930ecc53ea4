"""The SQLite writers' turn (bridge.writelock): held across processes and threads, a no-op
where SQLite's own locking is not in the way."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from bridge import writelock

HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()  # until the test lets go
open(sys.argv[2], "w").close()  # the marker is written while the lock is still held
fcntl.flock(fd, fcntl.LOCK_UN)
"""


def _at(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    monkeypatch.setattr(writelock, "_lock_path", lambda: str(path))


def test_a_writer_waits_for_another_process_s_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock, marker = tmp_path / "db.sqlite3-writers.lock", tmp_path / "released"
    _at(monkeypatch, lock)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), str(marker)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"
        entered = threading.Event()

        def write() -> None:
            with writelock.held():
                entered.set()
                assert marker.exists()  # only after the other process let go

        writer = threading.Thread(target=write)
        writer.start()
        assert not entered.wait(0.3)  # still the other's turn
        holder.stdin.write("go\n")
        holder.stdin.flush()
        writer.join(10)
        assert entered.is_set()
    finally:
        holder.kill()
        holder.wait()


def test_threads_of_one_process_take_turns_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _at(monkeypatch, tmp_path / "db.sqlite3-writers.lock")
    inside: list[str] = []
    order: list[str] = []
    release = threading.Event()

    def first() -> None:
        with writelock.held():
            inside.append("first")
            release.wait(10)
            order.append("first out")

    def second() -> None:
        with writelock.held():
            order.append("second in")

    one = threading.Thread(target=first)
    one.start()
    while not inside:
        threading.Event().wait(0.01)
    two = threading.Thread(target=second)
    two.start()
    two.join(0.3)
    assert two.is_alive()  # waiting: a lock per thread, not one shared descriptor
    release.set()
    one.join(10)
    two.join(10)
    assert order == ["first out", "second in"]


@pytest.mark.parametrize(("vendor", "name", "expected"), [
    ("sqlite", "/srv/bridge/db.sqlite3", "/srv/bridge/db.sqlite3-writers.lock"),
    ("sqlite", ":memory:", None),
    ("sqlite", "file:memorydb_default?mode=memory&cache=shared", None),
    ("sqlite", "", None),
    ("postgresql", "bridge", None),
])
def test_only_a_sqlite_file_has_a_writers_lock(monkeypatch: pytest.MonkeyPatch, vendor: str, name: str,
                                                expected: str | None) -> None:
    monkeypatch.setattr(writelock, "connection", SimpleNamespace(vendor=vendor, settings_dict={"NAME": name}))
    assert writelock._lock_path() == expected
    if expected is None:
        with writelock.held():  # nothing to take
            pass
