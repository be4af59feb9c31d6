"""The accountant's server: its settings and the servicers it mounts."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from services.common.diagnostics import diagnostics_mount
from services.common.server import ServiceApp
from services.common.settings import ServiceSettings


class Settings(ServiceSettings):
    """Accountant server settings (environment prefix ``VEIL_ACCOUNTANT_``)."""

    model_config = SettingsConfigDict(env_prefix="VEIL_ACCOUNTANT_", extra="ignore")
    port: int = 50052
    metrics_port: int | None = 9462


def build_app(settings: Settings) -> ServiceApp:
    """The accountant's app; the ledger RPCs mount here once the ledger lands."""
    return ServiceApp(
        name="accountant",
        settings=settings,
        mounts=[diagnostics_mount("accountant", settings.image_limits)],
    )
