from qverify.v1 import model_pb2 as _model_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DumpMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DUMP_NONE: _ClassVar[DumpMode]
    DUMP_OUTPUTS: _ClassVar[DumpMode]
    DUMP_ALL: _ClassVar[DumpMode]
    DUMP_NAMED: _ClassVar[DumpMode]

class DumpLayout(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LAYOUT_VALID: _ClassVar[DumpLayout]
    LAYOUT_ALIGNED: _ClassVar[DumpLayout]
    LAYOUT_BOTH: _ClassVar[DumpLayout]

class DumpValues(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VALUES_RAW: _ClassVar[DumpValues]
    VALUES_DEQUANTIZED: _ClassVar[DumpValues]
DUMP_NONE: DumpMode
DUMP_OUTPUTS: DumpMode
DUMP_ALL: DumpMode
DUMP_NAMED: DumpMode
LAYOUT_VALID: DumpLayout
LAYOUT_ALIGNED: DumpLayout
LAYOUT_BOTH: DumpLayout
VALUES_RAW: DumpValues
VALUES_DEQUANTIZED: DumpValues

class GetInfoRequest(_message.Message):
    __slots__ = ("client_protocol_version",)
    CLIENT_PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    client_protocol_version: str
    def __init__(self, client_protocol_version: _Optional[str] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_model_bytes", "max_message_bytes", "store_capacity_bytes", "max_queue", "max_input_bytes", "max_tensor_bytes")
    MAX_MODEL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORE_CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_TENSOR_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_model_bytes: int
    max_message_bytes: int
    store_capacity_bytes: int
    max_queue: int
    max_input_bytes: int
    max_tensor_bytes: int
    def __init__(self, max_model_bytes: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., store_capacity_bytes: _Optional[int] = ..., max_queue: _Optional[int] = ..., max_input_bytes: _Optional[int] = ..., max_tensor_bytes: _Optional[int] = ...) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("agent_version", "protocol_version", "board_id", "hostname", "backend", "runtime_version", "driver_version", "firmware_version", "target", "cpu_count", "memory_bytes", "model_store_path", "model_store_free_bytes", "limits", "capabilities", "npu_cores", "faults")
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BOARD_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    DRIVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    FIRMWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_STORE_PATH_FIELD_NUMBER: _ClassVar[int]
    MODEL_STORE_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    NPU_CORES_FIELD_NUMBER: _ClassVar[int]
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    protocol_version: str
    board_id: str
    hostname: str
    backend: str
    runtime_version: str
    driver_version: str
    firmware_version: str
    target: _model_pb2.Target
    cpu_count: int
    memory_bytes: int
    model_store_path: str
    model_store_free_bytes: int
    limits: Limits
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    npu_cores: int
    faults: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, agent_version: _Optional[str] = ..., protocol_version: _Optional[str] = ..., board_id: _Optional[str] = ..., hostname: _Optional[str] = ..., backend: _Optional[str] = ..., runtime_version: _Optional[str] = ..., driver_version: _Optional[str] = ..., firmware_version: _Optional[str] = ..., target: _Optional[_Union[_model_pb2.Target, _Mapping]] = ..., cpu_count: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., model_store_path: _Optional[str] = ..., model_store_free_bytes: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., capabilities: _Optional[_Iterable[str]] = ..., npu_cores: _Optional[int] = ..., faults: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class HasModelReply(_message.Message):
    __slots__ = ("present", "size_bytes")
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    present: bool
    size_bytes: int
    def __init__(self, present: _Optional[bool] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StoredModel(_message.Message):
    __slots__ = ("sha256", "size_bytes", "last_used_unix_ms", "name", "target")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    last_used_unix_ms: int
    name: str
    target: str
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., last_used_unix_ms: _Optional[int] = ..., name: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class ModelList(_message.Message):
    __slots__ = ("models", "used_bytes", "capacity_bytes")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[StoredModel]
    used_bytes: int
    capacity_bytes: int
    def __init__(self, models: _Optional[_Iterable[_Union[StoredModel, _Mapping]]] = ..., used_bytes: _Optional[int] = ..., capacity_bytes: _Optional[int] = ...) -> None: ...

class DeleteModelReply(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class PushChunk(_message.Message):
    __slots__ = ("sha256", "total_bytes", "data")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    total_bytes: int
    data: bytes
    def __init__(self, sha256: _Optional[str] = ..., total_bytes: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class PushModelReply(_message.Message):
    __slots__ = ("sha256", "size_bytes", "already_present")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    already_present: bool
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., already_present: _Optional[bool] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data", "layout")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: _model_pb2.DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    layout: str
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[_model_pb2.DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., layout: _Optional[str] = ...) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("model_sha256", "inputs", "dump", "dump_names", "dump_layout", "dump_values", "frames", "warmup", "core", "chunk_bytes", "isolate", "feeds", "groups")
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    DUMP_FIELD_NUMBER: _ClassVar[int]
    DUMP_NAMES_FIELD_NUMBER: _ClassVar[int]
    DUMP_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    DUMP_VALUES_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    CORE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    ISOLATE_FIELD_NUMBER: _ClassVar[int]
    FEEDS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    model_sha256: str
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    dump: DumpMode
    dump_names: _containers.RepeatedScalarFieldContainer[str]
    dump_layout: DumpLayout
    dump_values: DumpValues
    frames: int
    warmup: int
    core: int
    chunk_bytes: int
    isolate: bool
    feeds: _containers.RepeatedCompositeFieldContainer[Tensor]
    groups: _containers.RepeatedCompositeFieldContainer[NodeGroup]
    def __init__(self, model_sha256: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., dump: _Optional[_Union[DumpMode, str]] = ..., dump_names: _Optional[_Iterable[str]] = ..., dump_layout: _Optional[_Union[DumpLayout, str]] = ..., dump_values: _Optional[_Union[DumpValues, str]] = ..., frames: _Optional[int] = ..., warmup: _Optional[int] = ..., core: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., isolate: _Optional[bool] = ..., feeds: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[NodeGroup, _Mapping]]] = ...) -> None: ...

class NodeGroup(_message.Message):
    __slots__ = ("first", "last")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    first: str
    last: str
    def __init__(self, first: _Optional[str] = ..., last: _Optional[str] = ...) -> None: ...

class DumpHeader(_message.Message):
    __slots__ = ("index", "name", "producer", "onnx_float_name", "dtype", "shape", "aligned_shape", "aligned_strides", "aligned_layout", "scale", "zero_point", "layout", "total_bytes", "placement", "data", "isolated")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    ONNX_FLOAT_NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    ALIGNED_SHAPE_FIELD_NUMBER: _ClassVar[int]
    ALIGNED_STRIDES_FIELD_NUMBER: _ClassVar[int]
    ALIGNED_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINT_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ISOLATED_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    producer: str
    onnx_float_name: str
    dtype: _model_pb2.DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    aligned_shape: _containers.RepeatedScalarFieldContainer[int]
    aligned_strides: _containers.RepeatedScalarFieldContainer[int]
    aligned_layout: str
    scale: float
    zero_point: int
    layout: str
    total_bytes: int
    placement: str
    data: bytes
    isolated: bool
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., producer: _Optional[str] = ..., onnx_float_name: _Optional[str] = ..., dtype: _Optional[_Union[_model_pb2.DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., aligned_shape: _Optional[_Iterable[int]] = ..., aligned_strides: _Optional[_Iterable[int]] = ..., aligned_layout: _Optional[str] = ..., scale: _Optional[float] = ..., zero_point: _Optional[int] = ..., layout: _Optional[str] = ..., total_bytes: _Optional[int] = ..., placement: _Optional[str] = ..., data: _Optional[bytes] = ..., isolated: _Optional[bool] = ...) -> None: ...

class DumpBatch(_message.Message):
    __slots__ = ("dumps",)
    DUMPS_FIELD_NUMBER: _ClassVar[int]
    dumps: _containers.RepeatedCompositeFieldContainer[DumpHeader]
    def __init__(self, dumps: _Optional[_Iterable[_Union[DumpHeader, _Mapping]]] = ...) -> None: ...

class DumpChunk(_message.Message):
    __slots__ = ("index", "offset", "data")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    offset: int
    data: bytes
    def __init__(self, index: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class LayerTiming(_message.Message):
    __slots__ = ("node", "op", "placement", "frame_us", "acc_overflow", "saturated")
    NODE_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    FRAME_US_FIELD_NUMBER: _ClassVar[int]
    ACC_OVERFLOW_FIELD_NUMBER: _ClassVar[int]
    SATURATED_FIELD_NUMBER: _ClassVar[int]
    node: str
    op: str
    placement: str
    frame_us: _containers.RepeatedScalarFieldContainer[float]
    acc_overflow: int
    saturated: int
    def __init__(self, node: _Optional[str] = ..., op: _Optional[str] = ..., placement: _Optional[str] = ..., frame_us: _Optional[_Iterable[float]] = ..., acc_overflow: _Optional[int] = ..., saturated: _Optional[int] = ...) -> None: ...

class Distribution(_message.Message):
    __slots__ = ("min_us", "median_us", "p99_us", "max_us", "mean_us")
    MIN_US_FIELD_NUMBER: _ClassVar[int]
    MEDIAN_US_FIELD_NUMBER: _ClassVar[int]
    P99_US_FIELD_NUMBER: _ClassVar[int]
    MAX_US_FIELD_NUMBER: _ClassVar[int]
    MEAN_US_FIELD_NUMBER: _ClassVar[int]
    min_us: float
    median_us: float
    p99_us: float
    max_us: float
    mean_us: float
    def __init__(self, min_us: _Optional[float] = ..., median_us: _Optional[float] = ..., p99_us: _Optional[float] = ..., max_us: _Optional[float] = ..., mean_us: _Optional[float] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("model", "layers", "queue_wait_us", "frame_us", "core")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_US_FIELD_NUMBER: _ClassVar[int]
    FRAME_US_FIELD_NUMBER: _ClassVar[int]
    CORE_FIELD_NUMBER: _ClassVar[int]
    model: Distribution
    layers: _containers.RepeatedCompositeFieldContainer[LayerTiming]
    queue_wait_us: float
    frame_us: _containers.RepeatedScalarFieldContainer[float]
    core: int
    def __init__(self, model: _Optional[_Union[Distribution, _Mapping]] = ..., layers: _Optional[_Iterable[_Union[LayerTiming, _Mapping]]] = ..., queue_wait_us: _Optional[float] = ..., frame_us: _Optional[_Iterable[float]] = ..., core: _Optional[int] = ...) -> None: ...

class RunReply(_message.Message):
    __slots__ = ("output", "dump_header", "dump_chunk", "timing", "dump_batch")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    DUMP_HEADER_FIELD_NUMBER: _ClassVar[int]
    DUMP_CHUNK_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    DUMP_BATCH_FIELD_NUMBER: _ClassVar[int]
    output: Tensor
    dump_header: DumpHeader
    dump_chunk: DumpChunk
    timing: Timing
    dump_batch: DumpBatch
    def __init__(self, output: _Optional[_Union[Tensor, _Mapping]] = ..., dump_header: _Optional[_Union[DumpHeader, _Mapping]] = ..., dump_chunk: _Optional[_Union[DumpChunk, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., dump_batch: _Optional[_Union[DumpBatch, _Mapping]] = ...) -> None: ...

class PerfRequest(_message.Message):
    __slots__ = ("model_sha256", "inputs", "frames", "threads", "warmup")
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    model_sha256: str
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    frames: int
    threads: int
    warmup: int
    def __init__(self, model_sha256: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., frames: _Optional[int] = ..., threads: _Optional[int] = ..., warmup: _Optional[int] = ...) -> None: ...

class PerfReply(_message.Message):
    __slots__ = ("latency", "fps", "frames", "threads", "wall_s")
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    WALL_S_FIELD_NUMBER: _ClassVar[int]
    latency: Distribution
    fps: float
    frames: int
    threads: int
    wall_s: float
    def __init__(self, latency: _Optional[_Union[Distribution, _Mapping]] = ..., fps: _Optional[float] = ..., frames: _Optional[int] = ..., threads: _Optional[int] = ..., wall_s: _Optional[float] = ...) -> None: ...
