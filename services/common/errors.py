"""One error hierarchy for every Veil service.

Core code raises these; it never imports grpc. Each kind's gRPC status code lives in the
runtime (``services.runtime.errors.STATUS``), which the error interceptor applies: every
layer may raise these, only the transport knows what they mean on the wire. ``details`` is a flat
``str -> str`` map sent to the client as a ``google.rpc.ErrorInfo`` (for example the
remaining budget on a refused spend); it must never carry secrets or another tenant's data.
Anything that is not a ``VeilError`` becomes INTERNAL with a generic message.
"""

from __future__ import annotations

from collections.abc import Mapping


class VeilError(Exception):
    """Root of every error a Veil service reports to its callers."""

    reason: str = "INTERNAL"
    """``google.rpc.ErrorInfo`` reason: stable, machine-readable."""

    def __init__(self, message: str, *, details: Mapping[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, str] = {k: str(v) for k, v in (details or {}).items()}


class InvalidArgument(VeilError):
    """The request is malformed or a parameter is out of range."""

    reason = "INVALID_ARGUMENT"


class InvalidImage(InvalidArgument):
    """An image could not be decoded or breaks the size/format limits."""

    reason = "INVALID_IMAGE"


class Unauthenticated(VeilError):
    """No bearer token, or one that no tenant owns."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(VeilError):
    """The caller's tenant or scopes do not allow this request."""

    reason = "PERMISSION_DENIED"


class NotFound(VeilError):
    """The named object does not exist (or is not visible to this tenant)."""

    reason = "NOT_FOUND"


class AlreadyExists(VeilError):
    """An object with this name or key exists with different content."""

    reason = "ALREADY_EXISTS"


class FailedPrecondition(VeilError):
    """The system is not in a state that allows this request (e.g. a lease expired)."""

    reason = "FAILED_PRECONDITION"


class OutOfDomain(FailedPrecondition):
    """The input lies outside what the loaded model was trained on (its in-domain score is
    above the model's threshold); nothing was charged. ``details`` carry the score: they go
    to the caller who sent the input, never to logs or metrics."""

    reason = "OUT_OF_DOMAIN"


class ModelChanged(FailedPrecondition):
    """The model that made a preview session is no longer the one served (an operator
    moved the registry's alias); nothing was charged: a new preview is needed."""

    reason = "MODEL_CHANGED"


class BudgetExhausted(VeilError):
    """The charge would take a privacy budget past its limit; nothing was spent."""

    reason = "BUDGET_EXHAUSTED"


class ResourceExhausted(VeilError):
    """A capacity limit (queue, sessions, rate) is reached; retry later."""

    reason = "RESOURCE_EXHAUSTED"


class ModelNotReady(VeilError):
    """A model or backend this request needs is not ready; retry later."""

    reason = "MODEL_NOT_READY"


class Unavailable(VeilError):
    """A dependency (database, Triton, another service) cannot be reached."""

    reason = "UNAVAILABLE"


class DeadlineExceeded(VeilError):
    """The work could not finish within the caller's deadline."""

    reason = "DEADLINE_EXCEEDED"


class Aborted(VeilError):
    """A concurrent change conflicted with this one; the caller may retry."""

    reason = "ABORTED"


class Cancelled(VeilError):
    """The work was cancelled at the caller's request."""

    reason = "CANCELLED"
