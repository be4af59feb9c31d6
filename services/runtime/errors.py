"""Error kinds → gRPC status: the one table, and the ``google.rpc.Status`` a client sees.

:mod:`services.common.errors` defines the kinds without grpc so that kernels and serving can
raise them; this module gives each its status code. A kind not in the table takes the code
of its nearest listed ancestor (``InvalidImage`` → INVALID_ARGUMENT), so a new subclass can
never fall through to INTERNAL by accident.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

from services.common import errors as e

STATUS: dict[type[e.VeilError], grpc.StatusCode] = {
    e.VeilError: grpc.StatusCode.INTERNAL,
    e.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    e.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    e.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    e.NotFound: grpc.StatusCode.NOT_FOUND,
    e.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    e.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    e.BudgetExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    e.Unavailable: grpc.StatusCode.UNAVAILABLE,
    e.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    e.Aborted: grpc.StatusCode.ABORTED,
    e.Cancelled: grpc.StatusCode.CANCELLED,
}


def status_code(error: e.VeilError) -> grpc.StatusCode:
    """The status of ``error``: its own kind's, else its nearest listed ancestor's."""
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return grpc.StatusCode.INTERNAL


def rpc_status(
    code: grpc.StatusCode, message: str, reason: str, metadata: dict[str, str]
) -> status_pb2.Status:
    """A ``google.rpc.Status`` carrying one ``ErrorInfo`` (domain ``veil``)."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain="veil", metadata=metadata)
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(info)
    return status


def to_status(error: e.VeilError) -> status_pb2.Status:
    """The wire form of a Veil error: its code, message and details; an InvalidArgument that
    names its ``field`` also carries a ``google.rpc.BadRequest`` field violation."""
    status = rpc_status(status_code(error), error.message, error.reason, error.details)
    if isinstance(error, e.InvalidArgument) and "field" in error.details:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.details["field"], description=error.message
        )
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    return status


_KIND_OF_CODE: dict[grpc.StatusCode, type[e.VeilError]] = {
    code: kind for kind, code in reversed(list(STATUS.items())) if kind is not e.VeilError
}
_KIND_OF_CODE[grpc.StatusCode.RESOURCE_EXHAUSTED] = e.ResourceExhausted
_KIND_OF_CODE[grpc.StatusCode.UNAVAILABLE] = e.Unavailable
_KIND_OF_CODE[grpc.StatusCode.INVALID_ARGUMENT] = e.InvalidArgument


def from_rpc_error(error: grpc.RpcError, what: str) -> e.VeilError:
    """The error kind a service raises when a call to another service (``what``, e.g.
    "the accountant") failed: same status, the callee's message and ``ErrorInfo`` details
    (a refused spend's remaining budget). Statuses with no kind of their own — INTERNAL,
    UNKNOWN, UNIMPLEMENTED — and a callee that cannot be reached are Unavailable: the
    caller may retry, and nothing of the callee's internals leaks."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else "") or ""
    details: dict[str, str] = {}
    reason = ""
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    details.update(info.metadata)
                    reason = info.reason
    if reason == "BUDGET_EXHAUSTED":
        return e.BudgetExhausted(f"{what}: {message}", details=details)
    kind = _KIND_OF_CODE.get(code)
    if kind is None or code in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ):
        # A callee too slow, or this service's own credentials there wrong: not the
        # caller's fault; retryable.
        return e.Unavailable(
            f"{what} is unavailable ({code.name if code else 'UNKNOWN'}): {message}",
            details={"dependency": what},
        )
    return kind(f"{what}: {message}", details=details)
