"""Typed settings of the unlearning service (environment prefix ``VEIL_UNLEARNING_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.db import check_url, data_dir, default_sqlite_url


class UnlearningSettings(BaseSettings):
    """Everything the unlearning core needs; the server adds its transport settings."""

    model_config = SettingsConfigDict(env_prefix="VEIL_UNLEARNING_", extra="ignore")

    database_url: str = Field(default_factory=lambda: default_sqlite_url("unlearning"))
    """Jobs and model versions: ``sqlite:////abs/path`` (one replica) or
    ``postgresql+psycopg://…`` (several replicas share the queue: a job runs on one of them,
    and another takes it over when its lease lapses). Default: ``unlearning.sqlite`` in
    ``services.common.db.data_dir()``."""

    model_name: str = "veil_classifier"
    """The served model whose versions this service publishes (the only one it unlearns)."""
    store: Path | None = None
    """Model store that new versions are written to (``<entry>-vN``); None = the inference
    backend's store (``VEIL_INFERENCE_STORE``), else ``VEIL_MODEL_STORE``, else
    ``<data dir>/unlearning/store`` seeded with the packaged entries (never the install
    tree). Triton's ``veil_classifier`` must read the same store (``veil models prepare``
    renders a repository that does)."""
    model_repository: Path | None = None
    """Triton model repository: a published version N gets ``<model_name>/N/model.py``
    (a copy of version 1's) and Triton is asked to load it, which needs explicit model
    control (``--model-control-mode=explicit``): the service is NOT_SERVING while Triton
    refuses load requests. None: no repository (the local backend loads versions from the
    store on first use)."""
    served_with: list[str] = Field(default_factory=lambda: ["veil_protect"])
    """Repository models that serve each version of ``model_name`` too (each gets the
    version's ``N/model.py`` when the repository holds its version 1, and is loaded with
    it): ``veil_protect`` runs FMD against that version."""
    work_dir: Path = Field(default_factory=lambda: data_dir() / "unlearning")
    """Scratch space: the retrained reference's cache, keyed by base model and revision."""

    max_running_jobs: int = Field(default=1, ge=1, le=64)
    """Jobs trained at once by this replica (each is CPU heavy; one per few cores)."""
    job_threads: int = Field(default=1, ge=1, le=64)
    """torch intra-op threads of one job."""
    reference_steps: int | None = Field(default=None, ge=1)
    """Steps of the retrained reference each report compares with (cached per base model
    and revision under ``work_dir``); None = the full ``retrain`` recipe."""
    max_job_seconds: float | None = Field(default=None, gt=0)
    """Wall-clock cap of one job's method: it stops early and says so; None = none."""
    max_attempts: int = Field(default=3, ge=1, le=20)
    """A job interrupted this many times (its replica died) is FAILED, not retried."""
    lease_s: float = Field(default=30.0, gt=0)
    """A running job's lease, renewed every third of it; when a replica dies, another (or
    the same one restarted) takes the job over once the lease has lapsed."""
    poll_s: float = Field(default=0.5, gt=0)
    """How often the queue is polled for jobs and a watched job for changes."""

    max_dataset_size: int = Field(default=50_000, ge=1)
    """Most samples a job's revised dataset may have (``n`` of a dataset URI)."""
    max_steps: int = Field(default=5_000, ge=1)
    """Most training steps a job may ask for (the ``steps`` option)."""
    max_sample_ids: int = Field(default=100_000, ge=0)
    """Most removed plus replaced sample ids in one revision."""
    max_attributes: int = Field(default=16, ge=1)
    """Most forget attributes in one job."""
    max_options: int = Field(default=32, ge=0)
    """Most options in one job; each key and value at most ``max_option_chars``."""
    max_option_chars: int = Field(default=256, ge=1)
    """Longest option key or value, in characters."""
    default_page_size: int = Field(default=50, ge=1)
    """List page size when a request gives 0."""
    max_page_size: int = Field(default=1000, ge=1)
    """Larger page sizes are clamped to this."""

    @field_validator("database_url")
    @classmethod
    def _absolute_sqlite(cls, value: str) -> str:
        return check_url(value)
