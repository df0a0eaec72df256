"""Methods: one registered plug-in per file. Importing this package registers all of them."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from latentcot.methods.base import METHODS, LossOutput, Method, MethodConfig, register

__all__ = ["METHODS", "LossOutput", "Method", "MethodConfig", "register", "method_class", "build_method"]


def _register_all() -> None:
    import latentcot.methods as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name != "base":
            importlib.import_module(f"latentcot.methods.{mod.name}")


def method_class(name: str) -> type[Method]:
    _register_all()
    return METHODS.get(name)


def build_method(name: str, settings: dict[str, Any], backbone) -> Method:
    """Method `name` over `backbone`, its Config built (typed, validated) from `settings`."""
    from latentcot.config import from_dict

    cls = method_class(name)
    return cls(from_dict(cls.Config, settings, "method"), backbone)
