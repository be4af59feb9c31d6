from services._proto.veil.v1 import common_pb2 as _common_pb2
from services._proto.veil.v1 import unlearning_pb2 as _unlearning_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisteredModel(_message.Message):
    __slots__ = ("name", "aliases", "versions", "page", "resolution", "num_classes", "target", "kind", "shared", "current")
    class AliasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    aliases: _containers.ScalarMap[str, int]
    versions: _containers.RepeatedCompositeFieldContainer[_unlearning_pb2.ModelVersion]
    page: _common_pb2.PageResponse
    resolution: int
    num_classes: int
    target: str
    kind: str
    shared: bool
    current: _unlearning_pb2.ModelVersion
    def __init__(self, name: _Optional[str] = ..., aliases: _Optional[_Mapping[str, int]] = ..., versions: _Optional[_Iterable[_Union[_unlearning_pb2.ModelVersion, _Mapping]]] = ..., page: _Optional[_Union[_common_pb2.PageResponse, _Mapping]] = ..., resolution: _Optional[int] = ..., num_classes: _Optional[int] = ..., target: _Optional[str] = ..., kind: _Optional[str] = ..., shared: _Optional[bool] = ..., current: _Optional[_Union[_unlearning_pb2.ModelVersion, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[RegisteredModel]
    def __init__(self, models: _Optional[_Iterable[_Union[RegisteredModel, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("tenant_id", "name", "page")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    name: str
    page: _common_pb2.PageRequest
    def __init__(self, tenant_id: _Optional[str] = ..., name: _Optional[str] = ..., page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ...) -> None: ...

class SetAliasRequest(_message.Message):
    __slots__ = ("tenant_id", "ref", "alias")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    ref: _common_pb2.ModelRef
    alias: str
    def __init__(self, tenant_id: _Optional[str] = ..., ref: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., alias: _Optional[str] = ...) -> None: ...

class ResolveModelRequest(_message.Message):
    __slots__ = ("tenant_id", "ref", "alias")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    ref: _common_pb2.ModelRef
    alias: str
    def __init__(self, tenant_id: _Optional[str] = ..., ref: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., alias: _Optional[str] = ...) -> None: ...

class ResolvedModel(_message.Message):
    __slots__ = ("version", "serving_version", "resolution", "num_classes", "kind", "sha256", "entry")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    version: _unlearning_pb2.ModelVersion
    serving_version: int
    resolution: int
    num_classes: int
    kind: str
    sha256: str
    entry: str
    def __init__(self, version: _Optional[_Union[_unlearning_pb2.ModelVersion, _Mapping]] = ..., serving_version: _Optional[int] = ..., resolution: _Optional[int] = ..., num_classes: _Optional[int] = ..., kind: _Optional[str] = ..., sha256: _Optional[str] = ..., entry: _Optional[str] = ...) -> None: ...
