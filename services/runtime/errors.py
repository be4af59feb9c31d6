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
