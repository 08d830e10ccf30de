"""The query strategies of ``nnUNetv2_sss_suggest``: every :class:`~.base.Strategy` subclass with a
``name`` in a module of this package."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Dict, Type

from nnunetv2_sss.active.strategies.base import Strategy
from nnunetv2_sss.errors import UserValueError


def available() -> Dict[str, Type[Strategy]]:
    """``name -> class`` of every strategy (the modules of this package imported first)."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    found, todo = {}, [Strategy]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.name:
            found[cls.name] = cls
    return dict(sorted(found.items()))


def get(name: str) -> Strategy:
    strategies = available()
    if name not in strategies:
        raise UserValueError(f"--strategy {name}: not a strategy; one of {', '.join(strategies)}")
    return strategies[name]()
