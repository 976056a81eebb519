"""A model of the TensorRT library behind the real Python bindings, for CPU-only test machines.

The real bindings (``tensorrt_bindings`` 10.3 or 11.x) give the enums, ``Dims``, ``nptype``, ``Logger``
and the calibrator / progress-monitor base classes. What needs ``libnvinfer`` (Builder, Runtime,
OnnxParser and every object they make) is replaced by classes generated from the real classes'
signatures (:mod:`.signatures`), whose behaviour is modelled here:

* the ONNX parser applies a subset of onnx-tensorrt's rules (supported ops, Q/DQ zero point 0 and
  INT8, Resize modes, ReduceMax axes as initializer) and reports errors with node names;
* the builder refuses weak-typing flags on a strongly typed network, runs implicit INT8 calibration
  through the calibrator with the real wrapper's behaviour (an exception in ``get_batch`` is printed
  and read as the end of the data), checks DLA cores and GPU fallback, fills and verifies timing
  caches (a cache from another device is rejected), calls an ``IProgressMonitor``, and "serializes"
  an engine that carries the ONNX graph;
* the engine reports its I/O tensors, runs the graph with ONNX Runtime on the host memory at the
  addresses given to ``set_tensor_address`` (see :mod:`.hostmem`), refuses deserialisation on another
  TensorRT version or GPU, and its inspector returns layer information in the documented JSON form
  (``ProfilingVerbosity.DETAILED``; names only otherwise).

What it cannot show: TensorRT's real layer fusion, tactic choice, kernels, numerics (FP16/INT8 run
here as the ONNX graph says, on ONNX Runtime), real CUDA, and the exact text of TensorRT's messages.
"""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from . import fusion
from .hostmem import GPU, POOL
from .signatures import standin_class

__all__ = ["install", "ENGINE_MAGIC", "SUPPORTED_OPS"]

ENGINE_MAGIC = b"STANDIN-TRT-ENGINE\0"
TIMING_MAGIC = b"STANDIN-TRT-TIMING\0"

# onnx-tensorrt docs/operators.md (TensorRT 10.x), the subset DANet and its exports use and a few more.
SUPPORTED_OPS = {
    "Abs", "Add", "ArgMax", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip", "Concat", "Constant",
    "ConstantOfShape", "Conv", "ConvTranspose", "DequantizeLinear", "Div", "Equal", "Erf", "Exp", "Expand",
    "Flatten", "Floor", "Gather", "Gemm", "GlobalAveragePool", "Greater", "Identity", "LeakyRelu", "Less", "Log",
    "MatMul", "Max", "MaxPool", "Min", "Mul", "Neg", "Pad", "Pow", "QuantizeLinear", "Range", "ReduceMax",
    "ReduceMean", "ReduceMin", "ReduceSum", "Relu", "Reshape", "Resize", "Shape", "Sigmoid", "Slice", "Softmax",
    "Split", "Sqrt", "Squeeze", "Sub", "Tanh", "Tile", "TopK", "Transpose", "Unsqueeze", "Where",
}
_NOT_LAYERS = {"Constant", "Identity", "QuantizeLinear", "DequantizeLinear", "Shape"}
_LAYER_TYPE = {"Conv": "CaskConvolution", "MatMul": "CaskGemmMatrixMultiply", "Gemm": "CaskGemmMatrixMultiply",
               "Softmax": "CaskSoftMaxV2", "Resize": "Resize", "ArgMax": "TopK", "ReduceMax": "Reduce",
               "Transpose": "Shuffle", "Reshape": "Shuffle", "Cast": "Cast", "Relu": "PointWiseV2",
               "Add": "PointWiseV2", "Sub": "PointWiseV2", "Mul": "PointWiseV2", "MaxPool": "CaskPooling"}
# Inspector JSON per version. 10.x: one ``Format/Datatype`` text per layer tensor (developer guide, "Engine
# Inspector"; e.g. "Thirty-two wide channel vectorized row major Int8 format."). 11.x: ``Format`` and
# ``Datatype`` split, ``Bindings`` replaced by ``I/O Tensors`` objects (docs, "Migrating IEngineInspector Usage
# from TensorRT 10.x to 11.x"; TensorRT OSS trt-perf-analysis analyze-data.schema.json). The 11.x ``Format``
# texts follow the page's I/O example ("Row major linear FP32 format (kLINEAR)"); the ``Datatype`` names are
# TensorRT's DataType names as that example writes them ("Float"). No full 11.x layer record is published.
_FORMAT = {"fp32": "Row major linear FP32", "fp16": "Channel major FP16 format where channel % 8 == 0",
           "int8": "Thirty-two wide channel vectorized row major Int8 format", "int32": "Row major linear Int32",
           "int64": "Row major linear Int64", "uint8": "Row major linear UInt8 format", "bool": "Row major linear Bool"}
_FORMAT_11 = {"fp32": "Row major linear FP32 format (kLINEAR)", "fp16": "Channel major FP16 format where channel % 8 "
              "== 0 (kHWC8)", "int8": "Thirty-two wide channel vectorized row major Int8 format (kCHW32)"}
_DATATYPE_11 = {"fp32": "Float", "fp16": "Half", "bf16": "BFloat16", "int8": "Int8", "int32": "Int32",
                "int64": "Int64", "uint8": "UInt8", "bool": "Bool"}
_ONNX_TO_NAME = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.INT8: "int8",
                 onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.UINT8: "uint8",
                 onnx.TensorProto.BOOL: "bool", onnx.TensorProto.BFLOAT16: "bf16"}


def _log(trt: Any, logger: Any, severity: str, msg: str) -> None:
    if logger is not None and hasattr(logger, "log"):
        logger.log(getattr(trt.ILogger.Severity, severity), msg)
    else:  # pragma: no cover
        print(f"[TRT] [{severity[0]}] {msg}", file=sys.stderr)


def _major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


@dataclass
class _Graph:
    """What the parser read: the ONNX bytes, I/O, node list with element types."""

    model_bytes: bytes
    model: onnx.ModelProto
    inputs: list[tuple[str, list[int], str]]
    outputs: list[tuple[str, list[int], str]]
    types: dict[str, str]
    shapes: dict[str, list[int]]


class Lib:
    """Holds the real module and the generated stand-in classes; one per test session."""

    def __init__(self, trt: Any) -> None:
        self.trt = trt
        names = ["Builder", "IBuilderConfig", "INetworkDefinition", "ITensor", "OnnxParser", "ParserError",
                 "ITimingCache", "IHostMemory", "Runtime", "ICudaEngine", "IExecutionContext", "EngineInspector",
                 "ILayer"]
        self.cls = {n: standin_class(getattr(trt, n), trt, bytes if n == "IHostMemory" else object) for n in names}
        self.calibration_batches: list[int] = []  # batches seen by the last implicit calibration
        self.force_fp32_layers = False  # a knob for tests: the "engine" ignores the graph's reduced precision
        self.last_build: dict[str, Any] | None = None  # the last engine's header (fusion, memory, pinned layers)

    def wrap(self, name: str, impl: Any) -> Any:
        return self.cls[name]._wrap(impl)


# ----------------------------------------------------------------------------------------------- builder
class BuilderImpl:
    def __init__(self, lib: Lib, logger: Any) -> None:
        if not (GPU.present and GPU.trt_usable):
            raise TypeError("pybind11::init(): factory function returned nullptr")
        self.lib, self.logger = lib, logger
        self.num_DLA_cores = GPU.dla_cores
        self.max_DLA_batch_size = 32
        self.platform_has_fast_fp16 = True
        self.platform_has_fast_int8 = True
        self.platform_has_tf32 = True
        self.max_threads = 1

    def create_network(self, flags: int = 0) -> Any:
        strongly = bool(int(flags) & (1 << int(self.lib.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        return self.lib.wrap("INetworkDefinition", NetworkImpl(self.lib, strongly or _major(self.lib.trt) >= 11))

    def create_builder_config(self) -> Any:
        return self.lib.wrap("IBuilderConfig", ConfigImpl(self.lib))

    def build_serialized_network(self, network: Any, config: Any) -> Any:
        blob = _build(self.lib, self.logger, network._impl, config._impl)
        return None if blob is None else self.lib.wrap("IHostMemory", HostMemoryImpl(blob))


class NetworkImpl:
    def __init__(self, lib: Lib, strongly_typed: bool) -> None:
        self.lib, self.strongly_typed = lib, strongly_typed
        self.graph: _Graph | None = None
        self.name = "Unnamed Network 0"
        self.layers: dict[str, LayerImpl] = {}  # the layers the caller asked for (precision set on them)

    @property
    def num_inputs(self) -> int:
        return len(self.graph.inputs) if self.graph else 0

    @property
    def num_outputs(self) -> int:
        return len(self.graph.outputs) if self.graph else 0

    @property
    def num_layers(self) -> int:
        return sum(n.op_type not in _NOT_LAYERS for n in self.graph.model.graph.node) if self.graph else 0

    def _tensor(self, io: tuple[str, list[int], str], is_input: bool) -> Any:
        name, shape, dtype = io
        return self.lib.wrap("ITensor", TensorImpl(self.lib, name, shape, dtype, is_input))

    def get_input(self, index: int) -> Any:
        return self._tensor(self.graph.inputs[index], True) if self.graph and 0 <= index < self.num_inputs else None

    def get_output(self, index: int) -> Any:
        return self._tensor(self.graph.outputs[index], False) if self.graph and 0 <= index < self.num_outputs else None

    def get_layer(self, index: int) -> Any:
        layers = [n for n in self.graph.model.graph.node if n.op_type not in _NOT_LAYERS] if self.graph else []
        if not 0 <= index < len(layers):
            return None
        node = layers[index]
        if node.name not in self.layers:
            self.layers[node.name] = LayerImpl(self.lib, node)
        return self.lib.wrap("ILayer", self.layers[node.name])


class LayerImpl:
    """A network layer made by the ONNX parser from one node: named after it, with the parser's metadata
    (``[ONNX Layer: name]``, what the inspector's ``Metadata`` repeats); precision and output types settable."""

    def __init__(self, lib: Lib, node: onnx.NodeProto) -> None:
        self.lib, self.node = lib, node
        self.name = node.name
        self.metadata = f"[ONNX Layer: {node.name}]"
        self._precision: Any = None
        self.output_types: dict[int, Any] = {}

    @property
    def type(self) -> Any:
        kinds = {"MatMul": "MATRIX_MULTIPLY", "Softmax": "SOFTMAX", "Conv": "CONVOLUTION", "ReduceMax": "REDUCE"}
        return getattr(self.lib.trt.LayerType, kinds.get(self.node.op_type, "ELEMENTWISE"))

    @property
    def num_inputs(self) -> int:
        return len(self.node.input)

    @property
    def num_outputs(self) -> int:
        return len(self.node.output)

    @property
    def precision(self) -> Any:
        return self._precision if self._precision is not None else self.lib.trt.DataType.FLOAT

    @precision.setter
    def precision(self, value: Any) -> None:
        self._precision = value

    @property
    def precision_is_set(self) -> bool:
        return self._precision is not None

    def set_output_type(self, index: int, dtype: Any) -> None:
        if not 0 <= index < self.num_outputs:
            raise IndexError(index)
        self.output_types[index] = dtype

    def get_output_type(self, index: int) -> Any:
        return self.output_types.get(index, self.lib.trt.DataType.FLOAT)

    def output_type_is_set(self, index: int) -> bool:
        return index in self.output_types


_DTYPE = {"fp32": "FLOAT", "fp16": "HALF", "bf16": "BF16", "int8": "INT8", "int32": "INT32", "int64": "INT64", "uint8": "UINT8",
          "bool": "BOOL"}


class TensorImpl:
    def __init__(self, lib: Lib, name: str, shape: list[int], dtype: str, is_input: bool) -> None:
        self.name = name
        self.shape = lib.trt.Dims(shape)
        self.dtype = getattr(lib.trt.DataType, _DTYPE[dtype])
        self.is_network_input, self.is_network_output = is_input, not is_input


# ------------------------------------------------------------------------------------------------ parser
class ParserErrorImpl:
    def __init__(self, node_index: int, node_name: str, op: str, desc: str) -> None:
        self._i, self._n, self._op, self._d = node_index, node_name, op, desc

    def node(self) -> int:
        return self._i

    def node_name(self) -> str:
        return self._n

    def node_operator(self) -> str:
        return self._op

    def desc(self) -> str:
        return self._d

    def code(self) -> Any:
        return 8  # ErrorCode.UNSUPPORTED_NODE

    def file(self) -> str:
        return "ModelImporter.cpp"

    def func(self) -> str:
        return "parseNode"

    def line(self) -> int:
        return 0


class ParserImpl:
    def __init__(self, lib: Lib, network: Any, logger: Any) -> None:
        self.lib, self.network, self.logger = lib, network._impl, logger
        self.errors: list[ParserErrorImpl] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> Any:
        return self.lib.wrap("ParserError", self.errors[index]) if 0 <= index < len(self.errors) else None

    def clear_errors(self) -> None:
        self.errors = []

    def parse_from_file(self, model: str) -> bool:
        try:
            with open(model, "rb") as f:
                data = f.read()
        except OSError as e:
            self.errors.append(ParserErrorImpl(-1, "", "", f"Failed to open file: {model} ({e})"))
            return False
        return self.parse(data, model)

    def parse(self, model: Any, path: str | None = None) -> bool:
        try:
            proto = onnx.load_from_string(bytes(model))
        except Exception as e:
            self.errors.append(ParserErrorImpl(-1, "", "", f"Failed to parse ONNX model from protobuf: {e}"))
            return False
        self.errors.extend(_parse_rules(proto, self.lib.trt))
        if self.errors:  # one log line, as the parser stops at its first failing node; all errors kept
            e = self.errors[0]
            _log(self.lib.trt, self.logger, "ERROR", f"ModelImporter: node {e._n} ({e._op}): {e._d}")
            return False
        self.network.graph = _read_graph(bytes(model), proto)
        return True


def _init_value(g: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in g.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for n in g.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(n.attribute[0].t)
    return None


def _version_tuple(trt: Any) -> tuple[int, ...]:
    return tuple(int(p) for p in str(trt.__version__).split(".")[:2])


def _parse_rules(proto: onnx.ModelProto, trt: Any) -> list[ParserErrorImpl]:
    """onnx-tensorrt's rules as documented in docs/operators.md, the parts that matter here."""
    errs = []
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    attention = _version_tuple(trt) >= (10, 14)  # ONNX Attention -> IAttention from 10.14 (release notes)
    top = 23 if attention else 20
    if not 9 <= opset <= top:
        errs.append(ParserErrorImpl(-1, "", "", f"Unsupported ONNX opset {opset} (9..{top})"))
    g = proto.graph
    for i, n in enumerate(g.node):
        if n.op_type not in SUPPORTED_OPS and not (n.op_type == "Attention" and attention):
            errs.append(ParserErrorImpl(i, n.name, n.op_type, f"No importer registered for op: {n.op_type}"))
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):  # onnx-tensorrt QuantDequantLinearHelper
            scale = _init_value(g, n.input[1]) if len(n.input) > 1 else None
            if scale is not None and not np.all(np.isfinite(scale) & (scale > 0)):
                errs.append(ParserErrorImpl(i, n.name, n.op_type, "Scale coefficients must all be positive"))
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            zp = _init_value(g, n.input[2])
            if zp is not None and zp.dtype != np.int8:
                errs.append(ParserErrorImpl(i, n.name, n.op_type, f"{zp.dtype} zero point: TensorRT Q/DQ are INT8 "
                                            "(UINT8 only as a network input or output)"))
            elif zp is not None and np.any(zp != 0):
                errs.append(ParserErrorImpl(i, n.name, n.op_type, "non-zero zero point: TensorRT supports only "
                                            "symmetric quantization"))
        if n.op_type == "Resize":
            mode = attrs.get("mode", b"nearest").decode()
            ctm = attrs.get("coordinate_transformation_mode", b"half_pixel").decode()
            if mode not in ("nearest", "linear") or ctm not in ("half_pixel", "pytorch_half_pixel", "asymmetric",
                                                                 "align_corners", "tf_half_pixel_for_nn"):
                errs.append(ParserErrorImpl(i, n.name, n.op_type, f"unsupported Resize mode {mode}/{ctm}"))
        if n.op_type == "ReduceMax" and len(n.input) > 1 and n.input[1] and _init_value(g, n.input[1]) is None:
            errs.append(ParserErrorImpl(i, n.name, n.op_type, "ReduceMax axes must be an initializer"))
    return errs


def _read_graph(data: bytes, proto: onnx.ModelProto) -> _Graph:
    inferred = onnx.shape_inference.infer_shapes(proto)
    types: dict[str, str] = {}
    shapes: dict[str, list[int]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        types[vi.name] = _ONNX_TO_NAME.get(tt.elem_type, "fp32")
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
    for init in inferred.graph.initializer:
        types[init.name] = _ONNX_TO_NAME.get(init.data_type, "fp32")
        shapes[init.name] = list(init.dims)
    inits = {i.name for i in proto.graph.initializer}
    ins = [(v.name, shapes[v.name], types[v.name]) for v in proto.graph.input if v.name not in inits]
    outs = [(v.name, shapes[v.name], types[v.name]) for v in proto.graph.output]
    return _Graph(data, proto, ins, outs, types, shapes)


# ------------------------------------------------------------------------------------------ config, cache
class TimingCacheImpl:
    def __init__(self, device: dict[str, Any], entries: int = 0) -> None:
        self.device, self.entries = device, entries

    def serialize(self) -> bytes:
        return _host_memory(TIMING_MAGIC + json.dumps({"device": self.device, "entries": self.entries}).encode())

    def reset(self) -> bool:
        self.entries = 0
        return True

    def combine(self, input_cache: Any, ignore_mismatch: bool) -> bool:
        other = input_cache._impl
        if other.device != self.device and not ignore_mismatch:
            return False
        self.entries += other.entries
        return True


_HOST_MEMORY_LIB: Lib | None = None


def _host_memory(data: bytes) -> Any:
    return _HOST_MEMORY_LIB.wrap("IHostMemory", HostMemoryImpl(data))


def _this_device() -> dict[str, Any]:
    return {"name": GPU.name, "cc": list(GPU.compute_capability)}


class ConfigImpl:
    def __init__(self, lib: Lib) -> None:
        trt = lib.trt
        self.lib = lib
        self._flags: set[str] = set()
        self._pools: dict[Any, int] = {}
        self._timing: TimingCacheImpl | None = None
        self.builder_optimization_level = 3
        self.default_device_type = trt.DeviceType.GPU
        self.DLA_core = -1
        self.profiling_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY
        self.progress_monitor = None
        self.int8_calibrator = None
        self.avg_timing_iterations = 1
        self.max_aux_streams = -1

    @property
    def flags(self) -> int:
        return sum(1 << int(getattr(self.lib.trt.BuilderFlag, f)) for f in self._flags)

    @flags.setter
    def flags(self, value: int) -> None:
        self._flags = {n for n, v in self.lib.trt.BuilderFlag.__members__.items() if int(value) & (1 << int(v))}

    def set_flag(self, flag: Any) -> None:
        self._flags.add(flag.name)

    def clear_flag(self, flag: Any) -> None:
        self._flags.discard(flag.name)

    def get_flag(self, flag: Any) -> bool:
        return flag.name in self._flags

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        self._pools[pool] = int(pool_size)

    def get_memory_pool_limit(self, pool: Any) -> int:
        return self._pools.get(pool, 1 << 40)

    def create_timing_cache(self, serialized_timing_cache: Any) -> Any:
        blob = bytes(serialized_timing_cache)
        if not blob:
            return self.lib.wrap("ITimingCache", TimingCacheImpl(_this_device()))
        if not blob.startswith(TIMING_MAGIC):
            return None  # TensorRT logs "corrupted timing cache" and returns nullptr
        meta = json.loads(blob[len(TIMING_MAGIC):])
        return self.lib.wrap("ITimingCache", TimingCacheImpl(meta["device"], meta["entries"]))

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
        impl = cache._impl
        if impl.device != _this_device() and not ignore_mismatch:
            return False  # the documented verification-header check
        self._timing = impl
        return True

    def get_timing_cache(self) -> Any:
        return None if self._timing is None else self.lib.wrap("ITimingCache", self._timing)

    def get_device_type(self, layer: Any) -> Any:
        return self.default_device_type


class HostMemoryImpl:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.nbytes = len(data)


# ------------------------------------------------------------------------------------------------ build
def _precision_of_node(node: onnx.NodeProto, g: _Graph, producers: dict[str, onnx.NodeProto],
                       weak: set[str], calibrated: bool, pinned: set[str] = frozenset()) -> str:
    """The precision TensorRT would run ``node`` at: strongly typed -> the graph's types, INT8 when its
    inputs come from DequantizeLinear; weakly typed -> the fastest the flags allow for the layer kind, except a
    layer whose precision and output types were set to FP32 under OBEY/PREFER_PRECISION_CONSTRAINTS (``pinned``;
    without either flag TensorRT 10 ignores a layer's precision: developer guide, "Layer-Level Control of
    Precision")."""
    if node.name in pinned:
        return "fp32"
    float_ins = [t for t in node.input if t and g.types.get(t) in ("fp32", "fp16")]
    if any(producers.get(t) is not None and producers[t].op_type == "DequantizeLinear" for t in node.input if t):
        return "int8"
    base = g.types.get(float_ins[0], "fp32") if float_ins else g.types.get(node.output[0], "fp32")
    if base == "fp32" and weak:
        if "INT8" in weak and calibrated and node.op_type in ("Conv", "MatMul", "Gemm"):
            return "int8"
        if "FP16" in weak and node.op_type not in ("ArgMax", "Cast"):
            return "fp16"
    return base


def _tensor_json(name: str, dims: list[int], kind: str, major: int) -> dict[str, Any]:
    """One layer tensor as the inspector of TensorRT ``major`` writes it (see ``_FORMAT`` above)."""
    t: dict[str, Any] = {"Name": name, "Location": "Device", "Dimensions": dims}
    if major >= 11:
        t["Format"] = _FORMAT_11.get(kind, "Row major linear format (kLINEAR)")
        t["Datatype"] = _DATATYPE_11.get(kind, "Float")
    else:
        t["Format/Datatype"] = _FORMAT.get(kind, _FORMAT["fp32"])
    return t


def _layer_json(g: _Graph, weak: set[str], calibrated: bool, on_dla: bool, all_fp32: bool,
                major: int, pinned: set[str] = frozenset(), fused: list[Any] = (),
                unfused: list[Any] = ()) -> list[dict[str, Any]]:
    """The inspector's layers: one per node, except a fused attention (``fusion.fused_record``: one record for its
    nodes) and the softmax of an unfused one (a Myelin ``kgen __myl_...`` layer, as real 10.x engines show)."""
    producers = {o: n for n in g.model.graph.node for o in n.output}
    in_fused = {n: a for a in fused for n in a.nodes}
    myelin_softmax = {a.nodes[-2] for a in unfused if not a.op}
    layers = []
    for n in g.model.graph.node:
        if n.op_type in _NOT_LAYERS:
            continue
        prec = "fp32" if all_fp32 else _precision_of_node(n, g, producers, weak, calibrated, pinned)

        def io(names: Any, prec: str = prec) -> list[dict[str, Any]]:
            return [_tensor_json(t, g.shapes.get(t, []), prec if g.types.get(t) in ("fp32", "fp16")
                                 else g.types.get(t, "fp32"), major) for t in names if t and t in g.shapes]

        if n.name in in_fused:
            a = in_fused[n.name]
            if n.name == a.nodes[-1]:  # one record, where the attention ends
                layers.append(fusion.fused_record(len(layers), a, io))
            continue
        name, tactic = n.name, ("dla_" if on_dla and prec in ("fp16", "int8") else "sm87_xmma_") + prec
        if n.name in myelin_softmax:
            name, tactic = f"__myl_ExpSumDiv_myl0_{len(layers)}", f"__myl_ExpSumDiv_0x{abs(hash(n.name)) % 16**8:08x}"
        layers.append({"Name": name, "LayerType": "kgen" if n.name in myelin_softmax else
                       _LAYER_TYPE.get(n.op_type, "PointWiseV2"), "Inputs": io(n.input), "Outputs": io(n.output),
                       "TacticName": tactic, "StreamId": 0, "Metadata": f"[ONNX Layer: {n.name}]"})
    return layers


def _calibrate(lib: Lib, logger: Any, calib: Any, g: _Graph) -> bytes | None:
    """Implicit INT8 calibration through the Python calibrator, as TensorRT's wrapper drives it."""
    trt = lib.trt
    cached = calib.read_calibration_cache()
    if cached:
        header = bytes(cached).split(b"\n", 1)[0].decode(errors="replace")
        if header.startswith(f"TRT-{_trt_ver_tag(trt)}-EntropyCalibration2"):
            return bytes(cached)
        _log(trt, logger, "WARNING", f"calibration cache header {header!r} does not match this TensorRT; recalibrating")
    name, shape, dtype = g.inputs[0]
    batch = calib.get_batch_size()
    if batch != shape[0]:
        _log(trt, logger, "ERROR", f"calibrator batch size {batch} does not match the network's {shape[0]}")
        return None
    amax = 0.0
    lib.calibration_batches = []
    while True:
        try:  # TensorRT's pybind11 trampoline: print the exception and treat it as "no more batches"
            ptrs = calib.get_batch([name])
        except Exception as e:  # noqa: BLE001 - this is the modelled behaviour
            print(f"[ERROR] Exception caught in get_batch(): {e}", file=sys.stderr)
            ptrs = None
        if not ptrs:
            break
        x = POOL.array(int(ptrs[0]), tuple(shape), np.dtype(trt.nptype(getattr(trt.DataType, _DTYPE[dtype]))))
        amax = max(amax, float(np.abs(x.astype(np.float32)).max()))
        lib.calibration_batches.append(int(x.astype(np.float64).sum() * 1000) & 0xFFFFFFFF)
    if not lib.calibration_batches:
        _log(trt, logger, "ERROR", "Calibration failure occurred with no scaling factors detected")
        return None
    cache = f"TRT-{_trt_ver_tag(trt)}-EntropyCalibration2\n{name}: {struct.pack('>f', amax / 127).hex()}\n".encode()
    calib.write_calibration_cache(memoryview(cache))
    return cache


def _trt_ver_tag(trt: Any) -> str:
    """``NV_TENSORRT_VERSION`` as TensorRT writes it in cache headers: 10.3.0 -> 100300 (8.6.1 -> 8601)."""
    major, minor, patch = (int(p) for p in (str(trt.__version__).split(".") + ["0", "0"])[:3])
    return str(major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch)


class _MonitorTrampoline:
    """How TensorRT's C++ wrapper calls a Python ``IProgressMonitor`` (``PyProgressMonitor`` in
    ``python/src/infer/pyCore.cpp``, 10.3 tag): an exception from ``phase_start`` / ``phase_finish`` is
    printed and ignored; one from ``step_complete`` is printed and read as "cancel the build" (False)."""

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor

    def phase_start(self, phase: str, parent: str | None, steps: int) -> None:
        try:
            self.monitor.phase_start(phase, parent, steps)
        except BaseException as e:  # noqa: BLE001 - the modelled behaviour
            print(f"[ERROR] Exception caught in phase_start(): {e}", file=sys.stderr)

    def step_complete(self, phase: str, step: int) -> bool:
        try:
            return bool(self.monitor.step_complete(phase, step))
        except BaseException as e:  # noqa: BLE001 - pybind11 turns KeyboardInterrupt into error_already_set too
            print(f"[ERROR] Exception caught in step_complete(): {e}", file=sys.stderr)
            return False  # "Use the exception as an indicator that we should cancel the build"

    def phase_finish(self, phase: str) -> None:
        try:
            self.monitor.phase_finish(phase)
        except BaseException as e:  # noqa: BLE001
            print(f"[ERROR] Exception caught in phase_finish(): {e}", file=sys.stderr)


def _build(lib: Lib, logger: Any, net: NetworkImpl, cfg: ConfigImpl) -> bytes | None:
    trt = lib.trt
    if net.graph is None:
        _log(trt, logger, "ERROR", "Network must have at least one output")
        return None
    g = net.graph
    weak = cfg._flags & {"FP16", "INT8", "BF16", "FP8"}
    if net.strongly_typed and weak:
        _log(trt, logger, "ERROR", f"Builder flags {sorted(weak)} are not allowed with a strongly typed network")
        return None
    if any(d < 0 for _, s, _ in g.inputs + g.outputs for d in s):
        _log(trt, logger, "ERROR", "Network has dynamic or shape inputs, but no optimization profile has been defined")
        return None
    on_dla = cfg.default_device_type == trt.DeviceType.DLA
    if on_dla:
        if not 0 <= cfg.DLA_core < GPU.dla_cores:
            _log(trt, logger, "ERROR", f"DLA core {cfg.DLA_core} requested, {GPU.dla_cores} available")
            return None
        fp32_layers = [n.name for n in g.model.graph.node if n.op_type not in _NOT_LAYERS
                       and g.types.get(n.output[0]) == "fp32" and not weak]
        if fp32_layers and "GPU_FALLBACK" not in cfg._flags:
            _log(trt, logger, "ERROR", f"{fp32_layers[0]}: FP32 layer cannot run on DLA and GPU fallback is not enabled")
            return None
    monitor = None if cfg.progress_monitor is None else _MonitorTrampoline(cfg.progress_monitor)
    steps = max(1, sum(n.op_type not in _NOT_LAYERS for n in g.model.graph.node))
    if monitor is not None:
        monitor.phase_start("Building engine", None, steps)
    calibrated = False
    calib_cache = None
    if "INT8" in weak:
        if cfg.int8_calibrator is None:
            _log(trt, logger, "ERROR", "INT8 requested without a calibrator or Q/DQ: no dynamic ranges")
            return None
        calib_cache = _calibrate(lib, logger, cfg.int8_calibrator, g)
        if calib_cache is None:
            return None
        calibrated = True
    for step in range(steps):
        if monitor is not None and not monitor.step_complete("Building engine", step):
            monitor.phase_finish("Building engine")
            _log(trt, logger, "ERROR", "Build cancelled by the progress monitor")
            return None
    if monitor is not None:
        monitor.phase_finish("Building engine")
    if cfg._timing is not None:
        cfg._timing.entries += steps
    constrained = bool(cfg._flags & {"OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"})
    pinned = {name for name, layer in net.layers.items() if constrained and layer._precision == trt.DataType.FLOAT
              and all(layer.output_types.get(i) == trt.DataType.FLOAT for i in range(layer.num_outputs))}
    types = dict(g.types)
    if weak and not lib.force_fp32_layers:  # weakly typed FP16: what each layer will run at decides the fusion
        producers = {o: n for n in g.model.graph.node for o in n.output}
        for n in g.model.graph.node:
            if n.op_type not in _NOT_LAYERS:
                prec = _precision_of_node(n, g, producers, weak, calibrated, pinned)
                for o in n.output:
                    if types.get(o) in ("fp32", "fp16"):
                        types[o] = prec if prec in ("fp32", "fp16") else types[o]
    attentions = fusion.find_attentions(g.model)
    verdicts = [(a, *fusion.fuses(a, g.model, types, g.shapes, tuple(GPU.compute_capability))) for a in attentions]
    fused = [a for a, ok, _ in verdicts if ok and not lib.force_fp32_layers]
    unfused = [a for a, ok, _ in verdicts if not ok or lib.force_fp32_layers]
    for a, ok, why in verdicts:
        if a.op and not ok:  # a non-decomposable IAttention without a fused kernel
            _log(trt, logger, "ERROR", f"{a.nodes[0]}: Could not find any implementation for node {a.nodes[0]} ({why})")
            return None
    aux = cfg.max_aux_streams != 0
    memory = fusion.device_memory_bytes(g.model, types, g.shapes, fused, unfused, aux, _NOT_LAYERS)
    header = {"trt": str(trt.__version__), "device": _this_device(), "strongly_typed": net.strongly_typed,
              "flags": sorted(cfg._flags), "inputs": g.inputs, "outputs": g.outputs, "dla": on_dla,
              "verbosity": cfg.profiling_verbosity.name,
              "layers": _layer_json(g, weak, calibrated, on_dla, lib.force_fp32_layers, _major(trt), pinned, fused,
                                    unfused),
              "calibrated": calibrated, "types": sorted(set(g.types.values())), "device_memory": memory,
              "max_aux_streams": cfg.max_aux_streams, "pinned": sorted(pinned)}
    lib.last_build = header
    hdr = json.dumps(header).encode()
    return ENGINE_MAGIC + struct.pack("<I", len(hdr)) + hdr + g.model_bytes


# ----------------------------------------------------------------------------------------------- runtime
class RuntimeImpl:
    def __init__(self, lib: Lib, logger: Any) -> None:
        if not (GPU.present and GPU.trt_usable):
            raise TypeError("pybind11::init(): factory function returned nullptr")
        self.lib, self.logger = lib, logger
        self.DLA_core = -1

    def deserialize_cuda_engine(self, serialized_engine: Any) -> Any:
        trt = self.lib.trt
        blob = bytes(serialized_engine)
        if not blob.startswith(ENGINE_MAGIC):
            _log(trt, self.logger, "ERROR", "1: [stdArchiveReader.cpp] Serialization assertion magicTagRead == kMAGIC_TAG "
                 "failed.Magic tag does not match")
            return None
        n = struct.unpack("<I", blob[len(ENGINE_MAGIC):len(ENGINE_MAGIC) + 4])[0]
        start = len(ENGINE_MAGIC) + 4
        header = json.loads(blob[start:start + n])
        if header["trt"] != str(trt.__version__):
            _log(trt, self.logger, "ERROR", f"6: The engine plan file is not compatible with this version of TensorRT, "
                 f"expecting library version {trt.__version__} got {header['trt']}")
            return None
        if header["device"]["cc"] != list(GPU.compute_capability):
            _log(trt, self.logger, "ERROR", "6: The engine plan file is generated on an incompatible device")
            return None
        if header["dla"] and not 0 <= self.DLA_core < GPU.dla_cores:
            _log(trt, self.logger, "ERROR", f"engine needs DLA core {self.DLA_core}, {GPU.dla_cores} available")
            return None
        return self.lib.wrap("ICudaEngine", EngineImpl(self.lib, header, blob[start + n:]))


class EngineImpl:
    def __init__(self, lib: Lib, header: dict[str, Any], model_bytes: bytes) -> None:
        self.lib, self.header, self.model_bytes = lib, header, model_bytes
        self.io = [(n, s, d, True) for n, s, d in header["inputs"]] + [(n, s, d, False) for n, s, d in header["outputs"]]
        self.name = "Unnamed Network 0"
        self._session = None

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    @property
    def num_layers(self) -> int:
        return len(self.header["layers"])

    @property
    def device_memory_size(self) -> int:  # 10.x only (removed in 11.0)
        return int(self.header["device_memory"])

    @property
    def device_memory_size_v2(self) -> int:
        return int(self.header["device_memory"])

    def _find(self, name: str) -> tuple[str, list[int], str, bool] | None:
        return next((t for t in self.io if t[0] == name), None)

    def get_tensor_name(self, index: int) -> str:
        return self.io[index][0]

    def get_tensor_mode(self, name: str) -> Any:
        t = self._find(name)
        m = self.lib.trt.TensorIOMode
        return m.NONE if t is None else (m.INPUT if t[3] else m.OUTPUT)

    def get_tensor_shape(self, name: str) -> Any:
        t = self._find(name)
        return self.lib.trt.Dims(t[1] if t else [])

    def get_tensor_dtype(self, name: str) -> Any:
        t = self._find(name)
        return getattr(self.lib.trt.DataType, _DTYPE[t[2]] if t else "FLOAT")

    def session(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = 2
            if "fp16" in self.header["types"]:  # run FP16 as the graph writes it: no Cast fusion into FP32
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            self._session = ort.InferenceSession(self.model_bytes, so, providers=["CPUExecutionProvider"])
        return self._session

    def create_execution_context(self, *args: Any) -> Any:
        return self.lib.wrap("IExecutionContext", ContextImpl(self.lib, self))

    def create_engine_inspector(self) -> Any:
        return self.lib.wrap("EngineInspector", InspectorImpl(self))


class ContextImpl:
    def __init__(self, lib: Lib, engine: EngineImpl) -> None:
        self.lib, self.engine = lib, engine
        self.addresses: dict[str, int] = {}
        self.executions = 0

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if self.engine._find(name) is None:
            return False
        self.addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self.addresses.get(name, 0)

    def execute_async_v3(self, stream_handle: int) -> bool:
        if int(stream_handle) not in GPU.streams:
            raise RuntimeError(f"stream 0x{int(stream_handle):x} is not a live CUDA stream")
        trt = self.lib.trt
        missing = [t[0] for t in self.engine.io if t[0] not in self.addresses]
        if missing:
            _log(trt, None, "ERROR", f"Address is not set for tensors {missing}")
            return False
        feeds = {}
        for name, shape, dtype, is_input in self.engine.io:
            arr = POOL.array(self.addresses[name], tuple(shape), np.dtype(trt.nptype(getattr(trt.DataType, _DTYPE[dtype]))))
            if is_input:
                feeds[name] = arr.copy()
        outs = self.engine.session().run([t[0] for t in self.engine.io if not t[3]], feeds)
        for (name, shape, dtype, is_input), value in zip([t for t in self.engine.io if not t[3]], outs):
            dst = POOL.array(self.addresses[name], tuple(shape), np.dtype(trt.nptype(getattr(trt.DataType, _DTYPE[dtype]))))
            np.copyto(dst, value, casting="unsafe")
        self.executions += 1
        return True


class InspectorImpl:
    def __init__(self, engine: EngineImpl) -> None:
        self.engine = engine
        self.execution_context = None

    def get_engine_information(self, format: Any) -> str:  # noqa: A002 - the binding's name
        h = self.engine.header
        trt = self.engine.lib.trt
        if h["verbosity"] == "DETAILED":
            layers: list[Any] = h["layers"]
        elif h["verbosity"] == "LAYER_NAMES_ONLY":
            layers = [layer["Name"] for layer in h["layers"]]
        else:
            layers = []
        if format == trt.LayerInformationFormat.JSON:
            if _major(trt) >= 11:  # 11.x: "I/O Tensors" objects (the migration page's example) replace "Bindings"
                io = [{"Name": n, "IOMode": "Input" if is_in else "Output", "DataType": _DATATYPE_11.get(d, "Float"),
                       "Dimensions": s, "Location": "Device", "IsShapeInferenceIO": False,
                       "ProfileInfo": [{"MinShape": s, "OptShape": s, "MaxShape": s,
                                        "Format": _FORMAT_11.get(d, "Row major linear format (kLINEAR)")}]}
                      for n, s, d, is_in in self.engine.io]
                return json.dumps({"Layers": layers, "I/O Tensors": io})
            return json.dumps({"Layers": layers, "Bindings": [t[0] for t in self.engine.io]})
        return "\n".join(layer["Name"] if isinstance(layer, dict) else layer for layer in layers)

    def get_layer_information(self, layer: int, format: Any) -> str:  # noqa: A002
        return json.dumps(self.engine.header["layers"][layer])


# ----------------------------------------------------------------------------------------------- install
def install(trt: Any) -> Lib:
    """Replace ``trt.Builder``, ``trt.Runtime`` and ``trt.OnnxParser`` with checked stand-ins."""
    global _HOST_MEMORY_LIB
    lib = Lib(trt)
    _HOST_MEMORY_LIB = lib
    lib.cls["Builder"]._factory = lambda logger: BuilderImpl(lib, logger)
    lib.cls["Runtime"]._factory = lambda logger: RuntimeImpl(lib, logger)
    lib.cls["OnnxParser"]._factory = lambda network, logger: ParserImpl(lib, network, logger)
    trt.Builder, trt.Runtime, trt.OnnxParser = lib.cls["Builder"], lib.cls["Runtime"], lib.cls["OnnxParser"]
    return lib


@dataclass
class Captured:
    """Used by tests to look at what a build did."""

    logs: list[str] = field(default_factory=list)
