import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from services._proto.veil.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AttributeInfo(_message.Message):
    __slots__ = ("name", "description", "clip_bound")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CLIP_BOUND_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    clip_bound: float
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., clip_bound: _Optional[float] = ...) -> None: ...

class AttributeWeight(_message.Message):
    __slots__ = ("attribute", "weight")
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    attribute: str
    weight: float
    def __init__(self, attribute: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class ListAttributesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAttributesResponse(_message.Message):
    __slots__ = ("attributes",)
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    attributes: _containers.RepeatedCompositeFieldContainer[AttributeInfo]
    def __init__(self, attributes: _Optional[_Iterable[_Union[AttributeInfo, _Mapping]]] = ...) -> None: ...

class CreatePreviewRequest(_message.Message):
    __slots__ = ("tenant_id", "dataset_id", "subject_id", "image", "weights", "strengths", "delta", "ddim_steps", "seed")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    STRENGTHS_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    DDIM_STEPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    dataset_id: str
    subject_id: str
    image: _common_pb2.Image
    weights: _containers.RepeatedCompositeFieldContainer[AttributeWeight]
    strengths: _containers.RepeatedScalarFieldContainer[float]
    delta: float
    ddim_steps: int
    seed: int
    def __init__(self, tenant_id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., subject_id: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., weights: _Optional[_Iterable[_Union[AttributeWeight, _Mapping]]] = ..., strengths: _Optional[_Iterable[float]] = ..., delta: _Optional[float] = ..., ddim_steps: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("index", "epsilon", "image", "cost_if_released")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COST_IF_RELEASED_FIELD_NUMBER: _ClassVar[int]
    index: int
    epsilon: float
    image: _common_pb2.Image
    cost_if_released: _common_pb2.PrivacyCost
    def __init__(self, index: _Optional[int] = ..., epsilon: _Optional[float] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., cost_if_released: _Optional[_Union[_common_pb2.PrivacyCost, _Mapping]] = ...) -> None: ...

class CreatePreviewResponse(_message.Message):
    __slots__ = ("session_id", "candidates", "expires_at")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, session_id: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("session_id", "epsilon", "candidate_index", "idempotency_key")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_INDEX_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    epsilon: float
    candidate_index: int
    idempotency_key: str
    def __init__(self, session_id: _Optional[str] = ..., epsilon: _Optional[float] = ..., candidate_index: _Optional[int] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("image", "cost", "spend_id")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    SPEND_ID_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    cost: _common_pb2.PrivacyCost
    spend_id: str
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., cost: _Optional[_Union[_common_pb2.PrivacyCost, _Mapping]] = ..., spend_id: _Optional[str] = ...) -> None: ...

class CancelPreviewRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CancelPreviewResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SanitizeRequest(_message.Message):
    __slots__ = ("tenant_id", "dataset_id", "subject_id", "image", "weights", "epsilon", "delta", "ddim_steps", "idempotency_key")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    DDIM_STEPS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    dataset_id: str
    subject_id: str
    image: _common_pb2.Image
    weights: _containers.RepeatedCompositeFieldContainer[AttributeWeight]
    epsilon: float
    delta: float
    ddim_steps: int
    idempotency_key: str
    def __init__(self, tenant_id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., subject_id: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., weights: _Optional[_Iterable[_Union[AttributeWeight, _Mapping]]] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., ddim_steps: _Optional[int] = ..., idempotency_key: _Optional[str] = ...) -> None: ...
