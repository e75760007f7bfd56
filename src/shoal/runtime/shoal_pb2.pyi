from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("data", "dtype", "shape")
    DATA_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, data: _Optional[bytes] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class EncodedImages(_message.Message):
    __slots__ = ("format", "images")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    format: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, format: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoReply(_message.Message):
    __slots__ = ("plan_fingerprint", "device", "family", "input_shape", "feature_width", "max_batch", "role", "ready", "devices", "shoal_version")
    PLAN_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    SHOAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    plan_fingerprint: str
    device: str
    family: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    feature_width: int
    max_batch: int
    role: str
    ready: bool
    devices: _containers.RepeatedScalarFieldContainer[str]
    shoal_version: str
    def __init__(self, plan_fingerprint: _Optional[str] = ..., device: _Optional[str] = ..., family: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., feature_width: _Optional[int] = ..., max_batch: _Optional[int] = ..., role: _Optional[str] = ..., ready: _Optional[bool] = ..., devices: _Optional[_Iterable[str]] = ..., shoal_version: _Optional[str] = ...) -> None: ...

class FeaturesRequest(_message.Message):
    __slots__ = ("request_id", "input", "plan_fingerprint", "device", "images", "variant")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    PLAN_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    input: Tensor
    plan_fingerprint: str
    device: str
    images: EncodedImages
    variant: str
    def __init__(self, request_id: _Optional[int] = ..., input: _Optional[_Union[Tensor, _Mapping]] = ..., plan_fingerprint: _Optional[str] = ..., device: _Optional[str] = ..., images: _Optional[_Union[EncodedImages, _Mapping]] = ..., variant: _Optional[str] = ...) -> None: ...

class FeaturesReply(_message.Message):
    __slots__ = ("request_id", "features", "compute_ms", "queue_ms", "decode_ms", "device")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    features: Tensor
    compute_ms: float
    queue_ms: float
    decode_ms: float
    device: str
    def __init__(self, request_id: _Optional[int] = ..., features: _Optional[_Union[Tensor, _Mapping]] = ..., compute_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., decode_ms: _Optional[float] = ..., device: _Optional[str] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("input", "top_k", "request_id", "images")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    input: Tensor
    top_k: int
    request_id: int
    images: EncodedImages
    def __init__(self, input: _Optional[_Union[Tensor, _Mapping]] = ..., top_k: _Optional[int] = ..., request_id: _Optional[int] = ..., images: _Optional[_Union[EncodedImages, _Mapping]] = ...) -> None: ...

class DeviceTiming(_message.Message):
    __slots__ = ("device", "compute_ms", "queue_ms", "round_trip_ms", "transfer_ms", "ok", "error")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    ROUND_TRIP_MS_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_MS_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    device: str
    compute_ms: float
    queue_ms: float
    round_trip_ms: float
    transfer_ms: float
    ok: bool
    error: str
    def __init__(self, device: _Optional[str] = ..., compute_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., round_trip_ms: _Optional[float] = ..., transfer_ms: _Optional[float] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class PredictReply(_message.Message):
    __slots__ = ("request_id", "logits", "top_indices", "top_probs", "top_k", "timings", "aggregation_ms", "total_ms", "degraded", "missing", "expected_accuracy", "late", "variant")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    TOP_INDICES_FIELD_NUMBER: _ClassVar[int]
    TOP_PROBS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    logits: Tensor
    top_indices: _containers.RepeatedScalarFieldContainer[int]
    top_probs: _containers.RepeatedScalarFieldContainer[float]
    top_k: int
    timings: _containers.RepeatedCompositeFieldContainer[DeviceTiming]
    aggregation_ms: float
    total_ms: float
    degraded: bool
    missing: _containers.RepeatedScalarFieldContainer[str]
    expected_accuracy: float
    late: bool
    variant: str
    def __init__(self, request_id: _Optional[int] = ..., logits: _Optional[_Union[Tensor, _Mapping]] = ..., top_indices: _Optional[_Iterable[int]] = ..., top_probs: _Optional[_Iterable[float]] = ..., top_k: _Optional[int] = ..., timings: _Optional[_Iterable[_Union[DeviceTiming, _Mapping]]] = ..., aggregation_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., degraded: _Optional[bool] = ..., missing: _Optional[_Iterable[str]] = ..., expected_accuracy: _Optional[float] = ..., late: _Optional[bool] = ..., variant: _Optional[str] = ...) -> None: ...

class FinishRequest(_message.Message):
    __slots__ = ("request_id", "plan_fingerprint", "alpha", "split", "tokens", "sizes", "image", "top_k")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    plan_fingerprint: str
    alpha: float
    split: int
    tokens: Tensor
    sizes: Tensor
    image: PredictRequest
    top_k: int
    def __init__(self, request_id: _Optional[int] = ..., plan_fingerprint: _Optional[str] = ..., alpha: _Optional[float] = ..., split: _Optional[int] = ..., tokens: _Optional[_Union[Tensor, _Mapping]] = ..., sizes: _Optional[_Union[Tensor, _Mapping]] = ..., image: _Optional[_Union[PredictRequest, _Mapping]] = ..., top_k: _Optional[int] = ...) -> None: ...
