from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    INT8: _ClassVar[DataType]
    UINT8: _ClassVar[DataType]
    INT16: _ClassVar[DataType]
    INT32: _ClassVar[DataType]
    INT64: _ClassVar[DataType]
    FLOAT32: _ClassVar[DataType]

class Placement(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLACEMENT_UNSPECIFIED: _ClassVar[Placement]
    NPU: _ClassVar[Placement]
    CPU: _ClassVar[Placement]

class Rounding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUNDING_SINGLE: _ClassVar[Rounding]
    ROUNDING_DOUBLE: _ClassVar[Rounding]
DATA_TYPE_UNSPECIFIED: DataType
INT8: DataType
UINT8: DataType
INT16: DataType
INT32: DataType
INT64: DataType
FLOAT32: DataType
PLACEMENT_UNSPECIFIED: Placement
NPU: Placement
CPU: Placement
ROUNDING_SINGLE: Rounding
ROUNDING_DOUBLE: Rounding

class QuantParams(_message.Message):
    __slots__ = ("scale", "zero_point")
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINT_FIELD_NUMBER: _ClassVar[int]
    scale: float
    zero_point: int
    def __init__(self, scale: _Optional[float] = ..., zero_point: _Optional[int] = ...) -> None: ...

class TensorInfo(_message.Message):
    __slots__ = ("name", "onnx_name", "onnx_float_name", "onnx_dtype", "logical_layout", "dtype", "shape", "quant", "aligned_layout", "aligned_shape", "aligned_strides", "producer")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ONNX_NAME_FIELD_NUMBER: _ClassVar[int]
    ONNX_FLOAT_NAME_FIELD_NUMBER: _ClassVar[int]
    ONNX_DTYPE_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    QUANT_FIELD_NUMBER: _ClassVar[int]
    ALIGNED_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    ALIGNED_SHAPE_FIELD_NUMBER: _ClassVar[int]
    ALIGNED_STRIDES_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    name: str
    onnx_name: str
    onnx_float_name: str
    onnx_dtype: int
    logical_layout: str
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    quant: QuantParams
    aligned_layout: str
    aligned_shape: _containers.RepeatedScalarFieldContainer[int]
    aligned_strides: _containers.RepeatedScalarFieldContainer[int]
    producer: str
    def __init__(self, name: _Optional[str] = ..., onnx_name: _Optional[str] = ..., onnx_float_name: _Optional[str] = ..., onnx_dtype: _Optional[int] = ..., logical_layout: _Optional[str] = ..., dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., quant: _Optional[_Union[QuantParams, _Mapping]] = ..., aligned_layout: _Optional[str] = ..., aligned_shape: _Optional[_Iterable[int]] = ..., aligned_strides: _Optional[_Iterable[int]] = ..., producer: _Optional[str] = ...) -> None: ...

class Constant(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Attribute(_message.Message):
    __slots__ = ("i", "f", "s", "ints", "floats")
    I_FIELD_NUMBER: _ClassVar[int]
    F_FIELD_NUMBER: _ClassVar[int]
    S_FIELD_NUMBER: _ClassVar[int]
    INTS_FIELD_NUMBER: _ClassVar[int]
    FLOATS_FIELD_NUMBER: _ClassVar[int]
    i: int
    f: float
    s: str
    ints: IntList
    floats: FloatList
    def __init__(self, i: _Optional[int] = ..., f: _Optional[float] = ..., s: _Optional[str] = ..., ints: _Optional[_Union[IntList, _Mapping]] = ..., floats: _Optional[_Union[FloatList, _Mapping]] = ...) -> None: ...

class IntList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class FloatList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("name", "op", "inputs", "outputs", "constants", "attrs", "placement", "onnx_nodes", "onnx_op")
    class AttrsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Attribute
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Attribute, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    CONSTANTS_FIELD_NUMBER: _ClassVar[int]
    ATTRS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    ONNX_NODES_FIELD_NUMBER: _ClassVar[int]
    ONNX_OP_FIELD_NUMBER: _ClassVar[int]
    name: str
    op: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    outputs: _containers.RepeatedScalarFieldContainer[str]
    constants: _containers.RepeatedScalarFieldContainer[str]
    attrs: _containers.MessageMap[str, Attribute]
    placement: Placement
    onnx_nodes: _containers.RepeatedScalarFieldContainer[str]
    onnx_op: str
    def __init__(self, name: _Optional[str] = ..., op: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., outputs: _Optional[_Iterable[str]] = ..., constants: _Optional[_Iterable[str]] = ..., attrs: _Optional[_Mapping[str, Attribute]] = ..., placement: _Optional[_Union[Placement, str]] = ..., onnx_nodes: _Optional[_Iterable[str]] = ..., onnx_op: _Optional[str] = ...) -> None: ...

class Preprocess(_message.Message):
    __slots__ = ("input", "color", "model_color", "mean", "std", "image_shape")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    COLOR_FIELD_NUMBER: _ClassVar[int]
    MODEL_COLOR_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    input: str
    color: str
    model_color: str
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    image_shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, input: _Optional[str] = ..., color: _Optional[str] = ..., model_color: _Optional[str] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., image_shape: _Optional[_Iterable[int]] = ...) -> None: ...

class Target(_message.Message):
    __slots__ = ("name", "c_align", "w_align", "rounding")
    NAME_FIELD_NUMBER: _ClassVar[int]
    C_ALIGN_FIELD_NUMBER: _ClassVar[int]
    W_ALIGN_FIELD_NUMBER: _ClassVar[int]
    ROUNDING_FIELD_NUMBER: _ClassVar[int]
    name: str
    c_align: int
    w_align: int
    rounding: Rounding
    def __init__(self, name: _Optional[str] = ..., c_align: _Optional[int] = ..., w_align: _Optional[int] = ..., rounding: _Optional[_Union[Rounding, str]] = ...) -> None: ...

class Program(_message.Message):
    __slots__ = ("name", "target", "inputs", "outputs", "tensors", "constants", "nodes", "preprocess", "source_sha256", "source_format", "compiler_version", "onnx_inputs", "onnx_outputs", "runtime_model", "runtime_format")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    CONSTANTS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SHA256_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    COMPILER_VERSION_FIELD_NUMBER: _ClassVar[int]
    ONNX_INPUTS_FIELD_NUMBER: _ClassVar[int]
    ONNX_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_MODEL_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FORMAT_FIELD_NUMBER: _ClassVar[int]
    name: str
    target: Target
    inputs: _containers.RepeatedScalarFieldContainer[str]
    outputs: _containers.RepeatedScalarFieldContainer[str]
    tensors: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    constants: _containers.RepeatedCompositeFieldContainer[Constant]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    preprocess: _containers.RepeatedCompositeFieldContainer[Preprocess]
    source_sha256: str
    source_format: str
    compiler_version: str
    onnx_inputs: _containers.RepeatedScalarFieldContainer[str]
    onnx_outputs: _containers.RepeatedScalarFieldContainer[str]
    runtime_model: bytes
    runtime_format: str
    def __init__(self, name: _Optional[str] = ..., target: _Optional[_Union[Target, _Mapping]] = ..., inputs: _Optional[_Iterable[str]] = ..., outputs: _Optional[_Iterable[str]] = ..., tensors: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., constants: _Optional[_Iterable[_Union[Constant, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., preprocess: _Optional[_Iterable[_Union[Preprocess, _Mapping]]] = ..., source_sha256: _Optional[str] = ..., source_format: _Optional[str] = ..., compiler_version: _Optional[str] = ..., onnx_inputs: _Optional[_Iterable[str]] = ..., onnx_outputs: _Optional[_Iterable[str]] = ..., runtime_model: _Optional[bytes] = ..., runtime_format: _Optional[str] = ...) -> None: ...
