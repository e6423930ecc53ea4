"""One WebSocket client sending stamped chat messages at a steady rate into a room.

Run: python -m benchmarks.load.ws_sender --url ws://... --rate 50 --count 500 --tag run1 [--bridge --cookie ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from benchmarks.load import rawws
from benchmarks.load.stats import stamp_text

ACK_TIMEOUT = 120.0  # seconds after the last send
JOIN_TIMEOUT = 10.0  # seconds for the bridge's presence frames after the handshake
# Seconds between joining and the first message, for every target. A join is itself a
# fan-out (the bridge tells the room the sender is online: one frame to each socket, a
# pass of about 15 ms over 1,000); a message sent while that pass still runs waits for
# it, and measures the join, not the rate (the first message of each 1,000-client step
# was the slowest: 16-24 ms to its first socket where the others took 4-5 ms).
SETTLE = 0.25


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--tag", default="")
    parser.add_argument("--bridge", action="store_true", help="the bridge's frames, else the tutorial's")
    parser.add_argument("--cookie", default="")
    parser.add_argument("--origin", default="")
    args = parser.parse_args()

    headers = {k: v for k, v in (("Cookie", args.cookie), ("Origin", args.origin)) if v}
    acked = 0
    all_acked = asyncio.Event()
    joined = asyncio.Event()

    def on_text(payload: bytes) -> None:
        nonlocal acked
        if payload.startswith(b'{"type": "presence"'):
            joined.set()
        elif payload.startswith(b'{"type": "ack"'):
            acked += 1
            if acked >= args.count:
                all_acked.set()

    sock = await rawws.connect(args.url, on_text, headers=headers)
    if args.bridge:
        # The bridge sends history, then presence (a signed-in sender sees itself online), and
        # handles a client's frames one at a time: a message sent before that waits for the
        # whole join, which is the sender's connection, not the message's delivery.
        try:
            await asyncio.wait_for(joined.wait(), JOIN_TIMEOUT)
        except TimeoutError:
            pass
    await asyncio.sleep(SETTLE)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for n in range(args.count):
        due = started + n / args.rate
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        text = stamp_text(time.monotonic(), args.tag, n)
        body = {"type": "message", "text": text} if args.bridge else {"message": text}
        sock.send_text(json.dumps(body))
    if args.bridge:
        # The bridge acknowledges each post once stored: a server slower than the rate still
        # holds some, and closing now would take them away from it (unacknowledged, so
        # never stored). Seconds are until the last acknowledgement.
        try:
            await asyncio.wait_for(all_acked.wait(), ACK_TIMEOUT)
        except TimeoutError:
            pass
    elapsed = loop.time() - started
    await asyncio.sleep(0.5)  # let the last frames leave before the close
    sock.close()
    sys.stdout.write(json.dumps({"sent": args.count, "acked": acked, "seconds": round(elapsed, 3)}) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
