"""Runs the embedded mosquitto for `runbridge` and ends it when `runbridge` goes, however it goes.

    python protocols/mqtt/broker_guard.py <mosquitto> -c <conf>

`runbridge` starts this with a pipe on its standard input and never writes to
it. The pipe reaches end-of-file when `runbridge` exits, `kill -9` included,
and then mosquitto is terminated. PR_SET_PDEATHSIG cannot do this: mosquitto
started as root drops to its own user, and the kernel clears the death signal
on that change. SIGTERM or SIGINT to the guard is passed on to mosquitto. The
guard exits with mosquitto's status. Standard library only: no Django here.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from types import FrameType


def main(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write("usage: broker_guard.py <mosquitto> [args...]\n")
        return 2
    # Its logs go where ours go (runbridge reads our stderr).
    broker = subprocess.Popen(argv, stdin=subprocess.DEVNULL)

    def pass_on(signum: int, frame: FrameType | None) -> None:
        broker.send_signal(signum)

    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)

    def watch_parent() -> None:
        sys.stdin.buffer.read()  # returns at end-of-file: runbridge is gone
        if broker.poll() is None:
            broker.terminate()

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    return broker.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
