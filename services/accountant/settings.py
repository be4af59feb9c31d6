"""Typed settings of the accountant (environment prefix ``VEIL_ACCOUNTANT_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AccountantSettings(BaseSettings):
    """Everything the ledger core needs; the servicer adds its own transport settings."""

    model_config = SettingsConfigDict(env_prefix="VEIL_ACCOUNTANT_", extra="ignore")

    database_url: str = "sqlite:///var/accountant.sqlite"
    """SQLAlchemy URL: ``sqlite:///path`` (embedded, WAL) or ``postgresql+psycopg://…``."""

    tight_accountant: Literal["pld", "prv"] = "pld"
    """Tight accountant reported beside RDP (and used by ``enforce_with`` = tight or min).
    PLD is the default: PRV's cost grows steeply with the number of steps."""

    enforce_with: Literal["min", "rdp", "pld", "prv"] = "min"
    """Figure compared with the limit. ``min`` = min(RDP, tight): both are upper bounds on
    the true ε, so their minimum is one too; it only computes the tight figure when RDP
    alone would refuse."""

    default_lease_s: float = Field(default=30.0, gt=0)
    """Lease of a reservation when the caller gives none."""

    max_lease_s: float = Field(default=600.0, gt=0)
    """Longest lease a caller may ask for (a held reservation blocks other spends)."""

    low_cardinality_datasets: list[str] = Field(default_factory=list)
    """Dataset ids allowed as a metrics label value; every other dataset is ``other``."""
