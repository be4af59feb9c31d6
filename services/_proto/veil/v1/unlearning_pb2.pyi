import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from services._proto.veil.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UnlearningMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNLEARNING_METHOD_UNSPECIFIED: _ClassVar[UnlearningMethod]
    UNLEARNING_METHOD_RETRAIN: _ClassVar[UnlearningMethod]
    UNLEARNING_METHOD_FINETUNE: _ClassVar[UnlearningMethod]
    UNLEARNING_METHOD_FEATURE: _ClassVar[UnlearningMethod]
    UNLEARNING_METHOD_SCRUB: _ClassVar[UnlearningMethod]

class ModelVersionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_VERSION_STATE_UNSPECIFIED: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_LOADING: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_READY: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_RETIRED: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_FAILED: _ClassVar[ModelVersionState]
UNLEARNING_METHOD_UNSPECIFIED: UnlearningMethod
UNLEARNING_METHOD_RETRAIN: UnlearningMethod
UNLEARNING_METHOD_FINETUNE: UnlearningMethod
UNLEARNING_METHOD_FEATURE: UnlearningMethod
UNLEARNING_METHOD_SCRUB: UnlearningMethod
MODEL_VERSION_STATE_UNSPECIFIED: ModelVersionState
MODEL_VERSION_STATE_LOADING: ModelVersionState
MODEL_VERSION_STATE_READY: ModelVersionState
MODEL_VERSION_STATE_RETIRED: ModelVersionState
MODEL_VERSION_STATE_FAILED: ModelVersionState

class DatasetRevision(_message.Message):
    __slots__ = ("dataset_uri", "removed_sample_ids", "replaced_sample_ids")
    DATASET_URI_FIELD_NUMBER: _ClassVar[int]
    REMOVED_SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    REPLACED_SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    dataset_uri: str
    removed_sample_ids: _containers.RepeatedScalarFieldContainer[str]
    replaced_sample_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dataset_uri: _Optional[str] = ..., removed_sample_ids: _Optional[_Iterable[str]] = ..., replaced_sample_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("tenant_id", "base_model", "revision", "forget_attributes", "method", "options", "idempotency_key", "trained_entry")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    FORGET_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TRAINED_ENTRY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    base_model: _common_pb2.ModelRef
    revision: DatasetRevision
    forget_attributes: _containers.RepeatedScalarFieldContainer[str]
    method: UnlearningMethod
    options: _containers.ScalarMap[str, str]
    idempotency_key: str
    trained_entry: str
    def __init__(self, tenant_id: _Optional[str] = ..., base_model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., revision: _Optional[_Union[DatasetRevision, _Mapping]] = ..., forget_attributes: _Optional[_Iterable[str]] = ..., method: _Optional[_Union[UnlearningMethod, str]] = ..., options: _Optional[_Mapping[str, str]] = ..., idempotency_key: _Optional[str] = ..., trained_entry: _Optional[str] = ...) -> None: ...

class AttributeLeakage(_message.Message):
    __slots__ = ("attribute", "probe_accuracy", "chance_accuracy")
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    PROBE_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    CHANCE_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    attribute: str
    probe_accuracy: float
    chance_accuracy: float
    def __init__(self, attribute: _Optional[str] = ..., probe_accuracy: _Optional[float] = ..., chance_accuracy: _Optional[float] = ...) -> None: ...

class ReferenceFigures(_message.Message):
    __slots__ = ("task_accuracy", "leakage", "membership_inference_auc", "wall_seconds")
    TASK_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LEAKAGE_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_INFERENCE_AUC_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    task_accuracy: float
    leakage: _containers.RepeatedCompositeFieldContainer[AttributeLeakage]
    membership_inference_auc: float
    wall_seconds: float
    def __init__(self, task_accuracy: _Optional[float] = ..., leakage: _Optional[_Iterable[_Union[AttributeLeakage, _Mapping]]] = ..., membership_inference_auc: _Optional[float] = ..., wall_seconds: _Optional[float] = ...) -> None: ...

class UnlearningReport(_message.Message):
    __slots__ = ("task_accuracy", "leakage", "membership_inference_auc", "wall_seconds", "retrain_reference")
    TASK_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LEAKAGE_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_INFERENCE_AUC_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    task_accuracy: float
    leakage: _containers.RepeatedCompositeFieldContainer[AttributeLeakage]
    membership_inference_auc: float
    wall_seconds: float
    retrain_reference: ReferenceFigures
    def __init__(self, task_accuracy: _Optional[float] = ..., leakage: _Optional[_Iterable[_Union[AttributeLeakage, _Mapping]]] = ..., membership_inference_auc: _Optional[float] = ..., wall_seconds: _Optional[float] = ..., retrain_reference: _Optional[_Union[ReferenceFigures, _Mapping]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("status", "spec", "result_model", "report")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    RESULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    status: _common_pb2.JobStatus
    spec: SubmitJobRequest
    result_model: _common_pb2.ModelRef
    report: UnlearningReport
    def __init__(self, status: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ..., spec: _Optional[_Union[SubmitJobRequest, _Mapping]] = ..., result_model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., report: _Optional[_Union[UnlearningReport, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("tenant_id", "state", "model_name", "page")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    state: _common_pb2.JobState
    model_name: str
    page: _common_pb2.PageRequest
    def __init__(self, tenant_id: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., model_name: _Optional[str] = ..., page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "page")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    page: _common_pb2.PageResponse
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., page: _Optional[_Union[_common_pb2.PageResponse, _Mapping]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("status", "phase", "report")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    status: _common_pb2.JobStatus
    phase: str
    report: UnlearningReport
    def __init__(self, status: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ..., phase: _Optional[str] = ..., report: _Optional[_Union[UnlearningReport, _Mapping]] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("ref", "state", "parent_job_id", "created_at", "metrics", "parent_version", "method", "aliases", "lineage")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class LineageEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REF_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PARENT_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    ref: _common_pb2.ModelRef
    state: ModelVersionState
    parent_job_id: str
    created_at: _timestamp_pb2.Timestamp
    metrics: _containers.ScalarMap[str, float]
    parent_version: int
    method: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    lineage: _containers.ScalarMap[str, str]
    def __init__(self, ref: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., state: _Optional[_Union[ModelVersionState, str]] = ..., parent_job_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., parent_version: _Optional[int] = ..., method: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., lineage: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListModelVersionsRequest(_message.Message):
    __slots__ = ("tenant_id", "model_name", "page")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    model_name: str
    page: _common_pb2.PageRequest
    def __init__(self, tenant_id: _Optional[str] = ..., model_name: _Optional[str] = ..., page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ...) -> None: ...

class ListModelVersionsResponse(_message.Message):
    __slots__ = ("versions", "page")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    page: _common_pb2.PageResponse
    def __init__(self, versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., page: _Optional[_Union[_common_pb2.PageResponse, _Mapping]] = ...) -> None: ...

class GetModelVersionRequest(_message.Message):
    __slots__ = ("tenant_id", "ref")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    ref: _common_pb2.ModelRef
    def __init__(self, tenant_id: _Optional[str] = ..., ref: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class RollbackModelRequest(_message.Message):
    __slots__ = ("tenant_id", "target", "reason", "idempotency_key")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    target: _common_pb2.ModelRef
    reason: str
    idempotency_key: str
    def __init__(self, tenant_id: _Optional[str] = ..., target: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., reason: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...
