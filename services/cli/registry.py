"""The services ``veil serve`` and ``veil up`` know: name → app factory, settings class.

Imports are lazy so ``veil --version`` and one service's start-up do not import every
service's dependencies (torch, for instance).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.runtime.server import ServiceApp
    from services.runtime.settings import ServiceSettings


@dataclass(frozen=True)
class ServiceEntry:
    """Where a service's ``build_app`` and settings class live, and its default ports."""

    module: str
    port: int
    metrics_port: int
    inference: bool = False
    """The service calls the heavy kernels (``attach_backend``): ``veil up`` starts Triton
    before it and points it there."""

    def settings(self, **overrides: object) -> ServiceSettings:
        """The service's settings from its ``VEIL_<SERVICE>_`` environment, plus overrides."""
        cls = importlib.import_module(self.module).Settings
        return cls(**overrides)

    def build(self, settings: ServiceSettings) -> ServiceApp:
        return importlib.import_module(self.module).build_app(settings)


SERVICES: dict[str, ServiceEntry] = {
    "accountant": ServiceEntry("services.accountant.app", port=50052, metrics_port=9462),
    "sanitizer": ServiceEntry(
        "services.sanitizer.app", port=50053, metrics_port=9463, inference=True
    ),
    "protection": ServiceEntry(
        "services.protection.app", port=50054, metrics_port=9464, inference=True
    ),
    "unlearning": ServiceEntry(
        "services.unlearning.app", port=50055, metrics_port=9465, inference=True
    ),
}
"""Services that can be served today; the others join as they land."""


def uses_inference(names: list[str]) -> bool:
    """Whether any of ``names`` calls the inference backend."""
    return any(SERVICES[name].inference for name in names)
