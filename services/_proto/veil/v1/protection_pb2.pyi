from services._proto.veil.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Robustness(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROBUSTNESS_UNSPECIFIED: _ClassVar[Robustness]
    ROBUSTNESS_NONE: _ClassVar[Robustness]
    ROBUSTNESS_JPEG: _ClassVar[Robustness]
    ROBUSTNESS_FULL: _ClassVar[Robustness]

class ImageEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_ENCODING_UNSPECIFIED: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_PNG: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_JPEG: _ClassVar[ImageEncoding]

class ProtectionMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTECTION_MODE_UNSPECIFIED: _ClassVar[ProtectionMode]
    PROTECTION_MODE_FMD: _ClassVar[ProtectionMode]
    PROTECTION_MODE_FAST: _ClassVar[ProtectionMode]
ROBUSTNESS_UNSPECIFIED: Robustness
ROBUSTNESS_NONE: Robustness
ROBUSTNESS_JPEG: Robustness
ROBUSTNESS_FULL: Robustness
IMAGE_ENCODING_UNSPECIFIED: ImageEncoding
IMAGE_ENCODING_PNG: ImageEncoding
IMAGE_ENCODING_JPEG: ImageEncoding
PROTECTION_MODE_UNSPECIFIED: ProtectionMode
PROTECTION_MODE_FMD: ProtectionMode
PROTECTION_MODE_FAST: ProtectionMode

class FmdParams(_message.Message):
    __slots__ = ("epsilon", "step_size", "iterations", "ce_weight", "feature_layer", "robustness")
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    STEP_SIZE_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    CE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    FEATURE_LAYER_FIELD_NUMBER: _ClassVar[int]
    ROBUSTNESS_FIELD_NUMBER: _ClassVar[int]
    epsilon: float
    step_size: float
    iterations: int
    ce_weight: float
    feature_layer: str
    robustness: Robustness
    def __init__(self, epsilon: _Optional[float] = ..., step_size: _Optional[float] = ..., iterations: _Optional[int] = ..., ce_weight: _Optional[float] = ..., feature_layer: _Optional[str] = ..., robustness: _Optional[_Union[Robustness, str]] = ...) -> None: ...

class ProtectRequest(_message.Message):
    __slots__ = ("tenant_id", "image", "authorized_model", "params", "label", "request_id", "mode", "output_encoding", "jpeg_quality", "allow_out_of_domain")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZED_MODEL_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_ENCODING_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    ALLOW_OUT_OF_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    image: _common_pb2.Image
    authorized_model: _common_pb2.ModelRef
    params: FmdParams
    label: int
    request_id: str
    mode: ProtectionMode
    output_encoding: ImageEncoding
    jpeg_quality: int
    allow_out_of_domain: bool
    def __init__(self, tenant_id: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., authorized_model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., params: _Optional[_Union[FmdParams, _Mapping]] = ..., label: _Optional[int] = ..., request_id: _Optional[str] = ..., mode: _Optional[_Union[ProtectionMode, str]] = ..., output_encoding: _Optional[_Union[ImageEncoding, str]] = ..., jpeg_quality: _Optional[int] = ..., allow_out_of_domain: _Optional[bool] = ...) -> None: ...

class TransformCheck(_message.Message):
    __slots__ = ("transform", "prediction", "margin")
    TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    transform: str
    prediction: int
    margin: float
    def __init__(self, transform: _Optional[str] = ..., prediction: _Optional[int] = ..., margin: _Optional[float] = ...) -> None: ...

class ProtectResponse(_message.Message):
    __slots__ = ("image", "linf", "feature_distortion", "authorized_label", "authorized_prediction_after", "request_id", "error", "steps_run", "early_stopped", "mode", "psnr_db", "authorized_model", "robustness", "optimised_for", "checks", "margin", "domain")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LINF_FIELD_NUMBER: _ClassVar[int]
    FEATURE_DISTORTION_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZED_LABEL_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZED_PREDICTION_AFTER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STEPS_RUN_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPED_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PSNR_DB_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZED_MODEL_FIELD_NUMBER: _ClassVar[int]
    ROBUSTNESS_FIELD_NUMBER: _ClassVar[int]
    OPTIMISED_FOR_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    linf: float
    feature_distortion: float
    authorized_label: int
    authorized_prediction_after: int
    request_id: str
    error: _common_pb2.ItemError
    steps_run: int
    early_stopped: bool
    mode: ProtectionMode
    psnr_db: float
    authorized_model: _common_pb2.ModelRef
    robustness: Robustness
    optimised_for: _containers.RepeatedScalarFieldContainer[str]
    checks: _containers.RepeatedCompositeFieldContainer[TransformCheck]
    margin: float
    domain: _common_pb2.DomainScore
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., linf: _Optional[float] = ..., feature_distortion: _Optional[float] = ..., authorized_label: _Optional[int] = ..., authorized_prediction_after: _Optional[int] = ..., request_id: _Optional[str] = ..., error: _Optional[_Union[_common_pb2.ItemError, _Mapping]] = ..., steps_run: _Optional[int] = ..., early_stopped: _Optional[bool] = ..., mode: _Optional[_Union[ProtectionMode, str]] = ..., psnr_db: _Optional[float] = ..., authorized_model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., robustness: _Optional[_Union[Robustness, str]] = ..., optimised_for: _Optional[_Iterable[str]] = ..., checks: _Optional[_Iterable[_Union[TransformCheck, _Mapping]]] = ..., margin: _Optional[float] = ..., domain: _Optional[_Union[_common_pb2.DomainScore, _Mapping]] = ...) -> None: ...

class LabeledImage(_message.Message):
    __slots__ = ("original", "protected", "label")
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    PROTECTED_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    original: _common_pb2.Image
    protected: _common_pb2.Image
    label: int
    def __init__(self, original: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., protected: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., label: _Optional[int] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("tenant_id", "images", "authorized_model", "unauthorized_models")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZED_MODEL_FIELD_NUMBER: _ClassVar[int]
    UNAUTHORIZED_MODELS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    images: _containers.RepeatedCompositeFieldContainer[LabeledImage]
    authorized_model: _common_pb2.ModelRef
    unauthorized_models: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelRef]
    def __init__(self, tenant_id: _Optional[str] = ..., images: _Optional[_Iterable[_Union[LabeledImage, _Mapping]]] = ..., authorized_model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., unauthorized_models: _Optional[_Iterable[_Union[_common_pb2.ModelRef, _Mapping]]] = ...) -> None: ...

class ModelAccuracy(_message.Message):
    __slots__ = ("model", "accuracy_original", "accuracy_protected")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_PROTECTED_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    accuracy_original: float
    accuracy_protected: float
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., accuracy_original: _Optional[float] = ..., accuracy_protected: _Optional[float] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("authorized_accuracy_original", "authorized_accuracy_protected", "unauthorized", "mean_linf", "mean_psnr_db", "image_count")
    AUTHORIZED_ACCURACY_ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZED_ACCURACY_PROTECTED_FIELD_NUMBER: _ClassVar[int]
    UNAUTHORIZED_FIELD_NUMBER: _ClassVar[int]
    MEAN_LINF_FIELD_NUMBER: _ClassVar[int]
    MEAN_PSNR_DB_FIELD_NUMBER: _ClassVar[int]
    IMAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    authorized_accuracy_original: float
    authorized_accuracy_protected: float
    unauthorized: _containers.RepeatedCompositeFieldContainer[ModelAccuracy]
    mean_linf: float
    mean_psnr_db: float
    image_count: int
    def __init__(self, authorized_accuracy_original: _Optional[float] = ..., authorized_accuracy_protected: _Optional[float] = ..., unauthorized: _Optional[_Iterable[_Union[ModelAccuracy, _Mapping]]] = ..., mean_linf: _Optional[float] = ..., mean_psnr_db: _Optional[float] = ..., image_count: _Optional[int] = ...) -> None: ...
