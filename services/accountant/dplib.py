"""dp_accounting's modules without its package ``__init__``, which imports every one of
them: the PLD, mechanism calibration and Gaussian-mechanism modules pull in scipy.signal,
scipy.stats and scipy.optimize (~50 MB of resident memory), which the server process never
uses (its tight figures run in :mod:`services.accountant.tightpool`'s worker processes).

:func:`install` puts a ``dp_accounting`` package object in :data:`sys.modules` whose
submodules import as usual (``from dp_accounting.rdp import rdp_privacy_accountant``) and
whose other names (``dp_accounting.get_epsilon_gaussian``, ``dp_accounting.DpEvent``…) run
the real ``__init__`` on first use, so any other caller in the process still sees the whole
package. If the package is already imported, nothing changes.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

PACKAGE = "dp_accounting"


def install() -> None:
    """Make ``import dp_accounting.<submodule>`` skip the package's ``__init__`` (once)."""
    if PACKAGE in sys.modules:
        return
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not installed as a plain package: let imports fail or succeed as usual
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if importlib.util.find_spec(f"{PACKAGE}.{name}") is not None:
            return importlib.import_module(f"{PACKAGE}.{name}")
        # Any other name: the real package, now (it imports every submodule).
        del module.__dict__["__getattr__"]
        loader.exec_module(module)
        return getattr(module, name)

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[PACKAGE] = module


install()
from dp_accounting import dp_event  # noqa: E402 (after install: no package __init__)
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib  # noqa: E402

__all__ = ["dp_event", "install", "rdp_lib"]
