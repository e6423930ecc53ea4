"""A separate OS process that posts messages, for concurrency tests.

python -m tests.support.poster ROOM COUNT SENDER [--keys PREFIX]
Each message gets client key PREFIX-i when --keys is given, and is posted twice.
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("room")
    parser.add_argument("count", type=int)
    parser.add_argument("sender")
    parser.add_argument("--keys")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from bridge.services.identities import identity_get_or_create
    from bridge.services.messages import message_store

    sender = identity_get_or_create(kind="user", name=args.sender)
    for i in range(args.count):
        key = f"{args.keys}-{i}" if args.keys else None
        for _ in range(2 if key else 1):
            message_store(room=args.room, sender=sender, origin="api", text=f"{args.sender} {i}", client_key=key)
    sys.stdout.write("done\n")


if __name__ == "__main__":
    main()
