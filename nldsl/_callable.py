"""Modules that can be called: ``nldsl.graph(spec)`` and ``nldsl.explain(spec)``.

``nldsl.graph`` must be both the module (``nldsl.graph.LevelGraph``) and the API function
(``nldsl.graph(spec) -> LevelGraph``): importing a submodule always binds its name on the package, so a
function of the same name in ``nldsl/__init__.py`` would be replaced by the module. Giving the module a
``__call__`` makes both spellings work.
"""
from __future__ import annotations

import sys
import types
from typing import Any, Callable


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__dict__["__call_target__"](*args, **kwargs)


def make_callable(module_name: str, target: Callable[..., Any]) -> None:
    """Make ``sys.modules[module_name](...)`` call ``target(...)``."""
    module = sys.modules[module_name]
    module.__dict__["__call_target__"] = target
    module.__class__ = _CallableModule
