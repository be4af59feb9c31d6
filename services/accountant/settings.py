"""Typed settings of the accountant (environment prefix ``VEIL_ACCOUNTANT_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.accountant.limits import Limits
from services.common.db import check_url, default_sqlite_url


class AccountantSettings(BaseSettings):
    """Everything the ledger core needs; the servicer adds its own transport settings."""

    model_config = SettingsConfigDict(env_prefix="VEIL_ACCOUNTANT_", extra="ignore")

    database_url: str = Field(default_factory=lambda: default_sqlite_url("accountant"))
    """SQLAlchemy URL: ``sqlite:////abs/path`` (embedded, WAL) or ``postgresql+psycopg://…``.
    Default: ``accountant.sqlite`` in ``services.common.db.data_dir()`` (``$VEIL_DATA_DIR``,
    else ``~/.local/share/veil``). A relative SQLite path is refused at start-up."""

    tight_accountant: Literal["pld", "prv"] = "pld"
    """Tight accountant reported beside RDP (and used by ``enforce_with`` = tight or min).
    PLD is the default: PRV's cost grows steeply with the number of steps."""

    enforce_with: Literal["min", "rdp", "pld", "prv"] = "min"
    """Figure compared with the limit. ``min`` = min(RDP, tight): both are upper bounds on
    the true ε, so their minimum is one too; it only computes the tight figure when RDP
    alone would refuse."""

    tight_workers: int = Field(default=1, ge=1)
    """Processes that compute tight figures (started on first need): their CPU never holds
    the server's interpreter lock."""

    tight_timeout_s: float = Field(default=5.0, gt=0)
    """Deadline of one tight figure; past it the other bounds (RDP, basic) stand."""

    default_lease_s: float = Field(default=30.0, gt=0)
    """Lease of a reservation when the caller gives none."""

    max_lease_s: float = Field(default=600.0, gt=0)
    """Longest lease a caller may ask for (a held reservation blocks other spends)."""

    max_delta: float = Field(default=1e-5, gt=0, lt=1)
    """Largest δ a budget (or a dataset's subject default) may be given; PutBudget refuses
    a larger one as INVALID_ARGUMENT. δ is the chance that the ε bound fails, so it should
    stay well below 1/n for n subjects. Budgets stored with a larger δ keep it (an audit
    replay restores them too); only a new PutBudget is refused."""

    group_max: int = Field(default=64, ge=1)
    """Most spends decided and committed in one transaction by the group commit (spends that
    arrive together wait for one writer; a group of one under no concurrency)."""

    spend_queue: int = Field(default=1024, ge=1)
    """Spends that may wait for the ledger's writer; one more is RESOURCE_EXHAUSTED."""

    limits: Limits = Field(default_factory=Limits)
    """Caps on ids, keys and charge sizes (JSON, e.g. ``{"max_subjects": 500}``); see
    :class:`services.accountant.limits.Limits`."""

    low_cardinality_datasets: list[str] = Field(default_factory=list)
    """Dataset ids allowed as a metrics label value; every other dataset is ``other``."""

    @field_validator("database_url")
    @classmethod
    def _absolute_sqlite(cls, value: str) -> str:
        return check_url(value)
