"""Task functions by name. A task gets its recorded args and must be idempotent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TaskFunc = Callable[..., None]
_TASKS: dict[str, TaskFunc] = {}


def task(name: str) -> Callable[[TaskFunc], TaskFunc]:
    def register(func: TaskFunc) -> TaskFunc:
        _TASKS[name] = func
        return func

    return register


def task_func(name: str) -> TaskFunc | None:
    return _TASKS.get(name)


def task_names() -> list[str]:
    return sorted(_TASKS)


def run_task(name: str, args: dict[str, Any]) -> None:
    func = _TASKS[name]
    func(**args)
