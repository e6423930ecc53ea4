"""Background work run by `runworker bridge-tasks`."""
