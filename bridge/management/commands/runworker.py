"""`runworker bridge-tasks`: channels' runworker with the task reconciler and an ops endpoint."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any

from channels.management.commands.runworker import Command as ChannelsRunworker

from bridge.ops import add_ops_argument
from bridge.tasks.worker import BridgeWorker


class Command(ChannelsRunworker):
    help = "Run background workers for the given channels (bridge-tasks: the task pool)."
    worker_class: Callable[..., BridgeWorker] = BridgeWorker

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        add_ops_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        self.worker_class = functools.partial(BridgeWorker, ops_port=options["ops_port"])
        super().handle(*args, **options)
