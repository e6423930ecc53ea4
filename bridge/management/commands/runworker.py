"""`runworker bridge-tasks`: channels' runworker with the task reconciler."""

from channels.management.commands.runworker import Command as ChannelsRunworker

from bridge.tasks.worker import BridgeWorker


class Command(ChannelsRunworker):
    help = "Run background workers for the given channels (bridge-tasks: the task pool)."
    worker_class = BridgeWorker
