"""Public names imported on first use, so that importing a package loads none of its modules."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def lazy_attribute(package: str, homes: Mapping[str, str], name: str) -> Any:
    """The public attribute ``name`` of ``package``, imported from its module on first use (a module
    ``__getattr__``).

    Parameters:
      package(str): The package's ``__name__``.
      homes(dict[str, str]): The module defining each public name, relative to the package (".inspection").

    Raises:
      AttributeError: ``name`` is not one of ``homes``.
    """
    home = homes.get(name)
    if home is None:
        raise AttributeError("module %r has no attribute %r" % (package, name))
    return getattr(importlib.import_module(home, package), name)
