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

class Complement(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPLEMENT_UNSPECIFIED: _ClassVar[Complement]
    COMPLEMENT_KEEP: _ClassVar[Complement]
    COMPLEMENT_ERASE: _ClassVar[Complement]
COMPLEMENT_UNSPECIFIED: Complement
COMPLEMENT_KEEP: Complement
COMPLEMENT_ERASE: Complement

class Box(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    width: int
    height: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class FaceSelection(_message.Message):
    __slots__ = ("whole_image", "box")
    WHOLE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    whole_image: bool
    box: Box
    def __init__(self, whole_image: _Optional[bool] = ..., box: _Optional[_Union[Box, _Mapping]] = ...) -> None: ...

class SanitizerModel(_message.Message):
    __slots__ = ("name", "resolution", "training_data", "notes", "version", "lineage", "probes", "probes_lineage", "current")
    class LineageEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ProbesLineageEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    TRAINING_DATA_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    PROBES_FIELD_NUMBER: _ClassVar[int]
    PROBES_LINEAGE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    resolution: int
    training_data: str
    notes: str
    version: int
    lineage: _containers.ScalarMap[str, str]
    probes: str
    probes_lineage: _containers.ScalarMap[str, str]
    current: bool
    def __init__(self, name: _Optional[str] = ..., resolution: _Optional[int] = ..., training_data: _Optional[str] = ..., notes: _Optional[str] = ..., version: _Optional[int] = ..., lineage: _Optional[_Mapping[str, str]] = ..., probes: _Optional[str] = ..., probes_lineage: _Optional[_Mapping[str, str]] = ..., current: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("attributes", "model", "max_strengths", "default_complement", "default_ddim_steps")
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_STRENGTHS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_COMPLEMENT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_DDIM_STEPS_FIELD_NUMBER: _ClassVar[int]
    attributes: _containers.RepeatedCompositeFieldContainer[AttributeInfo]
    model: SanitizerModel
    max_strengths: int
    default_complement: Complement
    default_ddim_steps: int
    def __init__(self, attributes: _Optional[_Iterable[_Union[AttributeInfo, _Mapping]]] = ..., model: _Optional[_Union[SanitizerModel, _Mapping]] = ..., max_strengths: _Optional[int] = ..., default_complement: _Optional[_Union[Complement, str]] = ..., default_ddim_steps: _Optional[int] = ...) -> None: ...

class CreatePreviewRequest(_message.Message):
    __slots__ = ("tenant_id", "dataset_id", "subject_id", "image", "weights", "strengths", "delta", "ddim_steps", "seed", "complement", "face", "allow_out_of_domain")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    STRENGTHS_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    DDIM_STEPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    COMPLEMENT_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_OUT_OF_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    dataset_id: str
    subject_id: str
    image: _common_pb2.Image
    weights: _containers.RepeatedCompositeFieldContainer[AttributeWeight]
    strengths: _containers.RepeatedScalarFieldContainer[float]
    delta: float
    ddim_steps: int
    seed: int
    complement: Complement
    face: FaceSelection
    allow_out_of_domain: bool
    def __init__(self, tenant_id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., subject_id: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., weights: _Optional[_Iterable[_Union[AttributeWeight, _Mapping]]] = ..., strengths: _Optional[_Iterable[float]] = ..., delta: _Optional[float] = ..., ddim_steps: _Optional[int] = ..., seed: _Optional[int] = ..., complement: _Optional[_Union[Complement, str]] = ..., face: _Optional[_Union[FaceSelection, _Mapping]] = ..., allow_out_of_domain: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("session_id", "candidates", "expires_at", "face_box", "domain")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    FACE_BOX_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    expires_at: _timestamp_pb2.Timestamp
    face_box: Box
    domain: _common_pb2.DomainScore
    def __init__(self, session_id: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., face_box: _Optional[_Union[Box, _Mapping]] = ..., domain: _Optional[_Union[_common_pb2.DomainScore, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("image", "cost", "spend_id", "face_box", "composed_draws", "replayed", "complement", "rdp_epsilon", "noise_multiplier", "ledger_cost", "domain")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    SPEND_ID_FIELD_NUMBER: _ClassVar[int]
    FACE_BOX_FIELD_NUMBER: _ClassVar[int]
    COMPOSED_DRAWS_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    COMPLEMENT_FIELD_NUMBER: _ClassVar[int]
    RDP_EPSILON_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    LEDGER_COST_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    cost: _common_pb2.PrivacyCost
    spend_id: str
    face_box: Box
    composed_draws: int
    replayed: bool
    complement: Complement
    rdp_epsilon: float
    noise_multiplier: float
    ledger_cost: _common_pb2.PrivacyCost
    domain: _common_pb2.DomainScore
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., cost: _Optional[_Union[_common_pb2.PrivacyCost, _Mapping]] = ..., spend_id: _Optional[str] = ..., face_box: _Optional[_Union[Box, _Mapping]] = ..., composed_draws: _Optional[int] = ..., replayed: _Optional[bool] = ..., complement: _Optional[_Union[Complement, str]] = ..., rdp_epsilon: _Optional[float] = ..., noise_multiplier: _Optional[float] = ..., ledger_cost: _Optional[_Union[_common_pb2.PrivacyCost, _Mapping]] = ..., domain: _Optional[_Union[_common_pb2.DomainScore, _Mapping]] = ...) -> None: ...

class CancelPreviewRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CancelPreviewResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SanitizeRequest(_message.Message):
    __slots__ = ("tenant_id", "dataset_id", "subject_id", "image", "weights", "epsilon", "delta", "ddim_steps", "idempotency_key", "complement", "face", "allow_out_of_domain")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    DDIM_STEPS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    COMPLEMENT_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_OUT_OF_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    dataset_id: str
    subject_id: str
    image: _common_pb2.Image
    weights: _containers.RepeatedCompositeFieldContainer[AttributeWeight]
    epsilon: float
    delta: float
    ddim_steps: int
    idempotency_key: str
    complement: Complement
    face: FaceSelection
    allow_out_of_domain: bool
    def __init__(self, tenant_id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., subject_id: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., weights: _Optional[_Iterable[_Union[AttributeWeight, _Mapping]]] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., ddim_steps: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., complement: _Optional[_Union[Complement, str]] = ..., face: _Optional[_Union[FaceSelection, _Mapping]] = ..., allow_out_of_domain: _Optional[bool] = ...) -> None: ...

class SanitizeBatchRequest(_message.Message):
    __slots__ = ("item_id", "request")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    request: SanitizeRequest
    def __init__(self, item_id: _Optional[str] = ..., request: _Optional[_Union[SanitizeRequest, _Mapping]] = ...) -> None: ...

class SanitizeBatchResponse(_message.Message):
    __slots__ = ("item_id", "result", "error", "done", "failed")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    result: ReleaseResponse
    error: _common_pb2.ItemError
    done: int
    failed: int
    def __init__(self, item_id: _Optional[str] = ..., result: _Optional[_Union[ReleaseResponse, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.ItemError, _Mapping]] = ..., done: _Optional[int] = ..., failed: _Optional[int] = ...) -> None: ...
