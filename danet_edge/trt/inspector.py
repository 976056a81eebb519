"""What a built TensorRT engine really runs: per-layer precision from the engine inspector (pure, no TensorRT).

TensorRT's ``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`` returns the engine's
layers; with ``ProfilingVerbosity.DETAILED`` each layer is an object with ``Name``, ``LayerType``,
``Inputs`` / ``Outputs``, ``TacticName`` and ``Metadata`` (``"[ONNX Layer: /head/sa/MatMul]"``); with less
verbosity layers are bare names. The per-tensor schema differs by version:

* TensorRT 10.x: ``{"Layers": [...], "Bindings": ["input", "output"]}``; each layer tensor has one
  ``Format/Datatype`` text, e.g. ``"Row major linear FP32"``, ``"Channel major FP16 format where channel % 8
  == 0"``, ``"Thirty-two wide channel vectorized row major Int8 format"`` (developer guide, "Engine
  Inspector": https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/advanced.html#engine-inspector).
* TensorRT 11.x: ``Bindings`` became ``"I/O Tensors"`` (objects with ``Name``, ``IOMode``, ``DataType``,
  ``Dimensions``...) and the layer tensors' ``Format/Datatype`` was split into ``Format`` and ``Datatype``
  (docs, "Migrating IEngineInspector Usage from TensorRT 10.x to 11.x":
  https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-IEngineInspector.html;
  the TensorRT OSS perf-analysis schema ``.agents/skills/trt-perf-analysis/schemas/analyze-data.schema.json``
  gives layer tensors ``Datatype`` and ``Format`` keys). Data type names follow ``DataType``: ``Float``,
  ``Half``, ``BFloat16``, ``Int8``, ``Int32``...

Both are read: ``Format/Datatype`` when present, else ``Datatype`` (the type itself, read before ``Format``).
An output where no layer tensor carries any of these keys is refused (a schema this module does not know)
instead of being counted as FP32.

The layer precision used here is the one its data runs in: INT8 if an input is INT8, else FP16 if an
input is FP16 (or BF16), else FP32; layers whose tensors carry no float type (shape, index, cast to
integer) are ``other``. On a device this reads TensorRT's real output; in CI it reads the stand-in's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import EngineError, ManifestError

__all__ = ["LayerInfo", "EnginePrecision", "onnx_layer_names", "parse_layer_info", "summarize_layers", "check_engine_compat",
           "trt_dtype_name"]

_KINDS = (("int8", re.compile(r"\bint8\b", re.I)), ("fp16", re.compile(r"\b(fp16|half|bf16|bfloat16)\b", re.I)),
          ("fp32", re.compile(r"\b(fp32|float)\b", re.I)))
_ATTENTION = re.compile(r"(/sa/|/sc/|attention|softmax|matmul)", re.I)


@dataclass(frozen=True)
class LayerInfo:
    """One engine layer: name, TensorRT layer type, precision (``int8``/``fp16``/``fp32``/``other``),
    the formats of its inputs, its tactic and the ONNX nodes it came from."""

    name: str
    layer_type: str
    precision: str
    formats: tuple[str, ...] = ()
    tactic: str = ""
    onnx_nodes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.layer_type, "precision": self.precision,
                "formats": list(self.formats), "tactic": self.tactic, "onnx": list(self.onnx_nodes)}


@dataclass
class EnginePrecision:
    """Layer counts per precision and the precision of the attention layers.

    ``precision`` is the lowest float precision any layer runs at (what the engine "is").
    """

    total: int
    counts: dict[str, int]
    attention: dict[str, str] = field(default_factory=dict)

    @property
    def precision(self) -> str:
        for p in ("int8", "fp16"):
            if self.counts.get(p):
                return p
        return "fp32"

    @property
    def reduced(self) -> int:
        """Layers running below FP32 (FP16 or INT8)."""
        return self.counts.get("int8", 0) + self.counts.get("fp16", 0)

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "total": self.total, "counts": dict(self.counts),
                "attention": dict(self.attention), "source": "TensorRT engine inspector"}


def _datatype(fmt: str) -> str:
    for kind, rx in _KINDS:
        if rx.search(fmt):
            return kind
    return "other"


#: Per-tensor keys naming the data type, first found wins: 10.x's combined text, 11.x's split fields.
TYPE_KEYS = ("Format/Datatype", "Datatype", "DataType")


def _tensor_type(tensor: dict[str, Any]) -> str | None:
    """The text naming a layer tensor's data type (with its format), or None if no known key holds one."""
    for key in TYPE_KEYS:
        if tensor.get(key):
            fmt = tensor.get("Format") if key != "Format/Datatype" else None
            return f"{tensor[key]} ({fmt})" if fmt else str(tensor[key])
    return None


def onnx_layer_names(metadata: Any) -> tuple[str, ...]:
    """The ONNX node names in a layer's metadata (``"[ONNX Layer: /head/sa/MatMul][ONNX Layer: ...]"``), as the ONNX
    parser writes it into ``ILayer.metadata`` and the inspector repeats it."""
    return tuple(re.findall(r"\[ONNX Layer: ([^\]]+)\]", str(metadata or "")))


def parse_layer_info(text: str) -> list[LayerInfo]:
    """Parse the inspector's JSON into :class:`LayerInfo` rows.

    Raises:
        EngineError: not JSON, no ``Layers`` list, layers given as bare names (the engine was built
            without ``ProfilingVerbosity.DETAILED``, so precision cannot be read), or layers whose tensors
            carry none of :data:`TYPE_KEYS` (an inspector schema not known here).
    """
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError) as e:
        raise EngineError(f"engine inspector output is not JSON ({e})") from None
    layers = data.get("Layers") if isinstance(data, dict) else data
    if not isinstance(layers, list):
        raise EngineError("engine inspector output has no 'Layers' list")
    rows = []
    typed = 0  # tensors whose data type could be read
    for layer in layers:
        if not isinstance(layer, dict):
            raise EngineError("engine inspector gave layer names only: build with ProfilingVerbosity.DETAILED "
                              "to read layer precision")
        ins = [_tensor_type(t) for t in layer.get("Inputs", []) if isinstance(t, dict)]
        outs = [_tensor_type(t) for t in layer.get("Outputs", []) if isinstance(t, dict)]
        typed += sum(t is not None for t in ins + outs)
        ins = [t or "" for t in ins]
        kinds = {_datatype(f) for f in ins} or {_datatype(t or "") for t in outs}
        tactic = str(layer.get("TacticName", ""))
        prec = next((k for k in ("int8", "fp16", "fp32") if k in kinds), "other")
        onnx_nodes = onnx_layer_names(layer.get("Metadata", ""))
        rows.append(LayerInfo(str(layer.get("Name", "?")), str(layer.get("LayerType", "?")), prec,
                              tuple(ins), tactic, onnx_nodes))
    if rows and not typed:
        keys = sorted({k for layer in layers for t in layer.get("Inputs", []) + layer.get("Outputs", [])
                       if isinstance(t, dict) for k in t})
        raise EngineError(f"engine inspector JSON gives no tensor data type (tensor keys: {keys}; known: "
                          f"{list(TYPE_KEYS)}): an inspector schema danet-edge does not read")
    return rows


def summarize_layers(layers: list[LayerInfo], attention_nodes: set[str] | None = None) -> EnginePrecision:
    """Counts per precision; ``attention`` maps each layer that holds an attention node (by ONNX name in
    ``attention_nodes``, or by name pattern when not given) to its precision."""
    counts: dict[str, int] = {"int8": 0, "fp16": 0, "fp32": 0, "other": 0}
    attention: dict[str, str] = {}
    for layer in layers:
        counts[layer.precision] = counts.get(layer.precision, 0) + 1
        nodes = set(layer.onnx_nodes) or {layer.name}
        is_att = bool(nodes & attention_nodes) if attention_nodes is not None else bool(_ATTENTION.search(layer.name))
        if is_att:
            attention[layer.name] = layer.precision
    return EnginePrecision(len(layers), counts, attention)


_FUSED_KERNEL = re.compile(r"(mha|fmha|flash|attention)", re.I)


def _own_words(layer: LayerInfo) -> str:
    """The layer's tactic, name and type, less the ONNX node names its name carries (``pam_attention_0`` names a
    node, not a kernel)."""
    name = layer.name
    for node in layer.onnx_nodes:
        name = name.replace(node, "")
    return f"{layer.tactic} {name} {layer.layer_type}"


def attention_fused(layers: list[LayerInfo], pam: list[tuple[str, ...]]) -> bool | str:
    """Whether TensorRT ran every PAM attention as one fused kernel, read from the inspector's layers.

    ``pam``: per attention, its ONNX nodes: ``(energy MatMul, Softmax, output MatMul)`` or ``(Attention,)``
    (``graph.precision.attention_nodes``). Per attention:

    * fused: a layer holding its nodes (by the ONNX names in ``Metadata``) names a fused attention kernel in its
      own tactic, name or type (``mha``, ``fmha``, ``flash``, ``attention``), e.g. the 10.x record published in
      NVIDIA/TensorRT issue 4397: ``_gemm_mha_v2_myl0_17``, LayerType ``kgen``, tactic ``_gemm_mha_v2_0x...``,
      Metadata listing the MatMul and Softmax ONNX nodes;
    * not fused: its nodes land in two or more layers (the map is written between them: an unfused Myelin
      softmax is a ``kgen`` layer named ``__myl_...``);
    * undecided: a node no layer names, or one layer holding all of them without naming a kernel.

    Returns True when every attention is fused, False when any is not (its map is materialised), ``"unknown"``
    otherwise (also with no PAM, or an engine built without ONNX names in the metadata).
    """
    verdicts = []
    for nodes in pam:
        holders = [layer for layer in layers if set(layer.onnx_nodes) & set(nodes)]
        if any(_FUSED_KERNEL.search(_own_words(layer)) for layer in holders):
            verdicts.append(True)
        elif not all(any(n in layer.onnx_nodes for layer in holders) for n in nodes):
            verdicts.append("unknown")
        else:
            verdicts.append(False if len(holders) > 1 else "unknown")
    if not verdicts or "unknown" in verdicts and False not in verdicts:
        return "unknown"
    return False if False in verdicts else True


def check_engine_compat(built: dict[str, Any] | None, trt_version: str, compute_capability: tuple[int, int],
                        gpu_name: str = "") -> None:
    """Refuse an engine built for another GPU or TensorRT version (engines are not portable).

    Args:
        built: the manifest's ``tensorrt`` entry (``version``, ``compute_capability`` as ``"8.7"``).
        trt_version: TensorRT here; compute_capability: this GPU's ``(major, minor)``.

    Raises:
        ManifestError: the manifest has no ``tensorrt`` entry.
        EngineError: e.g. "engine built for sm_87 with TensorRT 10.3.0, this GPU is sm_89 with
            TensorRT 10.7.0: rebuild on this device".
    """
    if not built or "version" not in built or "compute_capability" not in built:
        raise ManifestError("engine manifest has no 'tensorrt' entry with version and compute_capability "
                            "(build engines with danet-edge build)")
    try:
        b_cc = tuple(int(v) for v in str(built["compute_capability"]).split("."))
    except ValueError:
        raise ManifestError(f"engine manifest compute_capability {built['compute_capability']!r} is not 'major.minor'") \
            from None
    b_ver = ".".join(str(built["version"]).split(".")[:3])
    here_ver = ".".join(str(trt_version).split(".")[:3])
    here_cc = tuple(int(v) for v in compute_capability)
    if b_ver != here_ver or b_cc != here_cc:
        gpu = f" ({gpu_name})" if gpu_name else ""
        raise EngineError(f"engine built for sm_{''.join(map(str, b_cc))} with TensorRT {b_ver}, this GPU{gpu} is "
                          f"sm_{''.join(map(str, here_cc))} with TensorRT {here_ver}: rebuild on this device "
                          "(danet-edge build MODEL.onnx)")


def trt_dtype_name(trt: Any, dtype: Any) -> str | None:
    """A TensorRT ``DataType`` as a numpy dtype name (``float32``, ``uint8``, ``int32``...), None for types numpy
    lacks (BF16, FP8, INT4): what the I/O contract (``core.io_contract``) compares with a manifest."""
    import numpy as np

    try:
        return np.dtype(trt.nptype(dtype)).name
    except TypeError:
        return None
