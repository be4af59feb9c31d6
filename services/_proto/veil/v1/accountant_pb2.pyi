import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from services._proto.veil.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TightState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIGHT_STATE_UNSPECIFIED: _ClassVar[TightState]
    TIGHT_STATE_COMPUTED: _ClassVar[TightState]
    TIGHT_STATE_NOT_COMPUTED: _ClassVar[TightState]
    TIGHT_STATE_INFEASIBLE: _ClassVar[TightState]
TIGHT_STATE_UNSPECIFIED: TightState
TIGHT_STATE_COMPUTED: TightState
TIGHT_STATE_NOT_COMPUTED: TightState
TIGHT_STATE_INFEASIBLE: TightState

class BudgetScope(_message.Message):
    __slots__ = ("tenant_id", "dataset_id", "subject_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    dataset_id: str
    subject_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., subject_id: _Optional[str] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("scope", "epsilon", "delta", "created_at", "subject_default")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    scope: BudgetScope
    epsilon: float
    delta: float
    created_at: _timestamp_pb2.Timestamp
    subject_default: SubjectDefault
    def __init__(self, scope: _Optional[_Union[BudgetScope, _Mapping]] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., subject_default: _Optional[_Union[SubjectDefault, _Mapping]] = ...) -> None: ...

class SubjectDefault(_message.Message):
    __slots__ = ("epsilon", "delta")
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    epsilon: float
    delta: float
    def __init__(self, epsilon: _Optional[float] = ..., delta: _Optional[float] = ...) -> None: ...

class BudgetStatus(_message.Message):
    __slots__ = ("scope", "epsilon_limit", "delta", "epsilon_spent_rdp", "epsilon_spent_tight", "tight_accountant", "epsilon_remaining", "event_count", "epsilon_reserved", "created_at", "updated_at", "epsilon_spent", "epsilon_spent_by", "tight_state", "epsilon_spent_basic", "subject_default")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    EPSILON_LIMIT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_RDP_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_TIGHT_FIELD_NUMBER: _ClassVar[int]
    TIGHT_ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_REMAINING_FIELD_NUMBER: _ClassVar[int]
    EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_RESERVED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_BY_FIELD_NUMBER: _ClassVar[int]
    TIGHT_STATE_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_BASIC_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    scope: BudgetScope
    epsilon_limit: float
    delta: float
    epsilon_spent_rdp: float
    epsilon_spent_tight: float
    tight_accountant: str
    epsilon_remaining: float
    event_count: int
    epsilon_reserved: float
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    epsilon_spent: float
    epsilon_spent_by: str
    tight_state: TightState
    epsilon_spent_basic: float
    subject_default: SubjectDefault
    def __init__(self, scope: _Optional[_Union[BudgetScope, _Mapping]] = ..., epsilon_limit: _Optional[float] = ..., delta: _Optional[float] = ..., epsilon_spent_rdp: _Optional[float] = ..., epsilon_spent_tight: _Optional[float] = ..., tight_accountant: _Optional[str] = ..., epsilon_remaining: _Optional[float] = ..., event_count: _Optional[int] = ..., epsilon_reserved: _Optional[float] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., epsilon_spent: _Optional[float] = ..., epsilon_spent_by: _Optional[str] = ..., tight_state: _Optional[_Union[TightState, str]] = ..., epsilon_spent_basic: _Optional[float] = ..., subject_default: _Optional[_Union[SubjectDefault, _Mapping]] = ...) -> None: ...

class GaussianMechanism(_message.Message):
    __slots__ = ("noise_multiplier",)
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    noise_multiplier: float
    def __init__(self, noise_multiplier: _Optional[float] = ...) -> None: ...

class SubsampledGaussianMechanism(_message.Message):
    __slots__ = ("noise_multiplier", "sampling_rate", "steps")
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_RATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    noise_multiplier: float
    sampling_rate: float
    steps: int
    def __init__(self, noise_multiplier: _Optional[float] = ..., sampling_rate: _Optional[float] = ..., steps: _Optional[int] = ...) -> None: ...

class LaplaceMechanism(_message.Message):
    __slots__ = ("scale", "sensitivity")
    SCALE_FIELD_NUMBER: _ClassVar[int]
    SENSITIVITY_FIELD_NUMBER: _ClassVar[int]
    scale: float
    sensitivity: float
    def __init__(self, scale: _Optional[float] = ..., sensitivity: _Optional[float] = ...) -> None: ...

class PureEpsilon(_message.Message):
    __slots__ = ("epsilon",)
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    epsilon: float
    def __init__(self, epsilon: _Optional[float] = ...) -> None: ...

class PrivacyEvent(_message.Message):
    __slots__ = ("gaussian", "subsampled_gaussian", "laplace", "pure_epsilon", "count")
    GAUSSIAN_FIELD_NUMBER: _ClassVar[int]
    SUBSAMPLED_GAUSSIAN_FIELD_NUMBER: _ClassVar[int]
    LAPLACE_FIELD_NUMBER: _ClassVar[int]
    PURE_EPSILON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    gaussian: GaussianMechanism
    subsampled_gaussian: SubsampledGaussianMechanism
    laplace: LaplaceMechanism
    pure_epsilon: PureEpsilon
    count: int
    def __init__(self, gaussian: _Optional[_Union[GaussianMechanism, _Mapping]] = ..., subsampled_gaussian: _Optional[_Union[SubsampledGaussianMechanism, _Mapping]] = ..., laplace: _Optional[_Union[LaplaceMechanism, _Mapping]] = ..., pure_epsilon: _Optional[_Union[PureEpsilon, _Mapping]] = ..., count: _Optional[int] = ...) -> None: ...

class Charge(_message.Message):
    __slots__ = ("tenant_id", "dataset_id", "subject_ids", "event", "service", "request_id", "idempotency_key", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    dataset_id: str
    subject_ids: _containers.RepeatedScalarFieldContainer[str]
    event: PrivacyEvent
    service: str
    request_id: str
    idempotency_key: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, tenant_id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., subject_ids: _Optional[_Iterable[str]] = ..., event: _Optional[_Union[PrivacyEvent, _Mapping]] = ..., service: _Optional[str] = ..., request_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PutBudgetRequest(_message.Message):
    __slots__ = ("budget",)
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    budget: Budget
    def __init__(self, budget: _Optional[_Union[Budget, _Mapping]] = ...) -> None: ...

class GetBudgetRequest(_message.Message):
    __slots__ = ("scope",)
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    scope: BudgetScope
    def __init__(self, scope: _Optional[_Union[BudgetScope, _Mapping]] = ...) -> None: ...

class ListBudgetsRequest(_message.Message):
    __slots__ = ("tenant_id", "dataset_id", "page")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    dataset_id: str
    page: _common_pb2.PageRequest
    def __init__(self, tenant_id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ...) -> None: ...

class ListBudgetsResponse(_message.Message):
    __slots__ = ("budgets", "page")
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    budgets: _containers.RepeatedCompositeFieldContainer[BudgetStatus]
    page: _common_pb2.PageResponse
    def __init__(self, budgets: _Optional[_Iterable[_Union[BudgetStatus, _Mapping]]] = ..., page: _Optional[_Union[_common_pb2.PageResponse, _Mapping]] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ("charge",)
    CHARGE_FIELD_NUMBER: _ClassVar[int]
    charge: Charge
    def __init__(self, charge: _Optional[_Union[Charge, _Mapping]] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("allowed", "projected", "reason", "exceeded", "cost")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    PROJECTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXCEEDED_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    projected: _containers.RepeatedCompositeFieldContainer[BudgetStatus]
    reason: str
    exceeded: _containers.RepeatedCompositeFieldContainer[BudgetScope]
    cost: _common_pb2.PrivacyCost
    def __init__(self, allowed: _Optional[bool] = ..., projected: _Optional[_Iterable[_Union[BudgetStatus, _Mapping]]] = ..., reason: _Optional[str] = ..., exceeded: _Optional[_Iterable[_Union[BudgetScope, _Mapping]]] = ..., cost: _Optional[_Union[_common_pb2.PrivacyCost, _Mapping]] = ...) -> None: ...

class ChargeBatchRequest(_message.Message):
    __slots__ = ("tenant_id", "charges", "idempotency_key")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    CHARGES_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    charges: _containers.RepeatedCompositeFieldContainer[Charge]
    idempotency_key: str
    def __init__(self, tenant_id: _Optional[str] = ..., charges: _Optional[_Iterable[_Union[Charge, _Mapping]]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class ChargeError(_message.Message):
    __slots__ = ("code", "reason", "message", "details")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: str
    message: str
    details: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ChargeBatchResult(_message.Message):
    __slots__ = ("index", "receipt", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    receipt: Receipt
    error: ChargeError
    def __init__(self, index: _Optional[int] = ..., receipt: _Optional[_Union[Receipt, _Mapping]] = ..., error: _Optional[_Union[ChargeError, _Mapping]] = ...) -> None: ...

class ChargeBatchResponse(_message.Message):
    __slots__ = ("results", "accepted", "refused")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ChargeBatchResult]
    accepted: int
    refused: int
    def __init__(self, results: _Optional[_Iterable[_Union[ChargeBatchResult, _Mapping]]] = ..., accepted: _Optional[int] = ..., refused: _Optional[int] = ...) -> None: ...

class SpendRequest(_message.Message):
    __slots__ = ("charge",)
    CHARGE_FIELD_NUMBER: _ClassVar[int]
    charge: Charge
    def __init__(self, charge: _Optional[_Union[Charge, _Mapping]] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("spend_id", "replayed", "after", "cost", "committed_at", "reservation_id")
    SPEND_ID_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    spend_id: str
    replayed: bool
    after: _containers.RepeatedCompositeFieldContainer[BudgetStatus]
    cost: _common_pb2.PrivacyCost
    committed_at: _timestamp_pb2.Timestamp
    reservation_id: str
    def __init__(self, spend_id: _Optional[str] = ..., replayed: _Optional[bool] = ..., after: _Optional[_Iterable[_Union[BudgetStatus, _Mapping]]] = ..., cost: _Optional[_Union[_common_pb2.PrivacyCost, _Mapping]] = ..., committed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reservation_id: _Optional[str] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("charge", "lease")
    CHARGE_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    charge: Charge
    lease: _duration_pb2.Duration
    def __init__(self, charge: _Optional[_Union[Charge, _Mapping]] = ..., lease: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("reservation_id", "expires_at", "projected", "cost", "replayed", "spend_id")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    PROJECTED_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    SPEND_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    expires_at: _timestamp_pb2.Timestamp
    projected: _containers.RepeatedCompositeFieldContainer[BudgetStatus]
    cost: _common_pb2.PrivacyCost
    replayed: bool
    spend_id: str
    def __init__(self, reservation_id: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., projected: _Optional[_Iterable[_Union[BudgetStatus, _Mapping]]] = ..., cost: _Optional[_Union[_common_pb2.PrivacyCost, _Mapping]] = ..., replayed: _Optional[bool] = ..., spend_id: _Optional[str] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("reservation_id", "tenant_id")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    tenant_id: str
    def __init__(self, reservation_id: _Optional[str] = ..., tenant_id: _Optional[str] = ...) -> None: ...

class ReleaseReservationRequest(_message.Message):
    __slots__ = ("reservation_id", "reason", "tenant_id")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    reason: str
    tenant_id: str
    def __init__(self, reservation_id: _Optional[str] = ..., reason: _Optional[str] = ..., tenant_id: _Optional[str] = ...) -> None: ...

class ReleaseReservationResponse(_message.Message):
    __slots__ = ("reservation_id", "released")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    released: bool
    def __init__(self, reservation_id: _Optional[str] = ..., released: _Optional[bool] = ...) -> None: ...

class LedgerEvent(_message.Message):
    __slots__ = ("spend_id", "charge", "cost", "committed_at", "reservation_id")
    SPEND_ID_FIELD_NUMBER: _ClassVar[int]
    CHARGE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    spend_id: str
    charge: Charge
    cost: _common_pb2.PrivacyCost
    committed_at: _timestamp_pb2.Timestamp
    reservation_id: str
    def __init__(self, spend_id: _Optional[str] = ..., charge: _Optional[_Union[Charge, _Mapping]] = ..., cost: _Optional[_Union[_common_pb2.PrivacyCost, _Mapping]] = ..., committed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reservation_id: _Optional[str] = ...) -> None: ...

class ListEventsRequest(_message.Message):
    __slots__ = ("scope", "since", "until", "page")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    scope: BudgetScope
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    page: _common_pb2.PageRequest
    def __init__(self, scope: _Optional[_Union[BudgetScope, _Mapping]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ...) -> None: ...

class ListEventsResponse(_message.Message):
    __slots__ = ("events", "page")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[LedgerEvent]
    page: _common_pb2.PageResponse
    def __init__(self, events: _Optional[_Iterable[_Union[LedgerEvent, _Mapping]]] = ..., page: _Optional[_Union[_common_pb2.PageResponse, _Mapping]] = ...) -> None: ...

class ExportAuditRequest(_message.Message):
    __slots__ = ("tenant_id", "since")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    since: _timestamp_pb2.Timestamp
    def __init__(self, tenant_id: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AuditChunk(_message.Message):
    __slots__ = ("jsonl",)
    JSONL_FIELD_NUMBER: _ClassVar[int]
    jsonl: bytes
    def __init__(self, jsonl: _Optional[bytes] = ...) -> None: ...
