"""Benchmarks: loaders, prompts, answer extraction and checking. Importing this registers every task."""

from typing import Any

from latentcot.tasks.base import TASKS, Example, Extracted, Task, TaskConfig, resolve_data_dir

__all__ = ["TASKS", "Example", "Extracted", "Task", "TaskConfig", "resolve_data_dir", "get_task", "task_class"]


def _register_all() -> None:
    # Each module registers its tasks on import; a missing module (work in progress) is not fatal here.
    import importlib
    import pkgutil

    import latentcot.tasks as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in {"base"}:
            importlib.import_module(f"latentcot.tasks.{mod.name}")


def task_class(name: str) -> type[Task]:
    _register_all()
    return TASKS.get(name)


def get_task(name: str, **settings: Any) -> Task:
    """The task `name` with its Config built from `settings` (typed and validated)."""
    from latentcot.config import from_dict

    cls = task_class(name)
    return cls(from_dict(cls.Config, settings, "task"))
