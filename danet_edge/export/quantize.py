"""INT8 Q/DQ graphs from an FP32 graph and a calibration set (ONNX Runtime quantization tools).

``quantize_int8`` calibrates on ``calib.CalibrationSet`` images through exactly ``danet_edge.data.preprocess``
and writes a Q/DQ graph with ``onnxruntime.quantization.quantize_static`` (QuantFormat.QDQ, per-channel
weights, per-tensor activations):

* ``target="tensorrt"``: symmetric int8 activations and weights (every zero point 0, INT8), Q/DQ on
  the inputs of Conv only (and of the attention MatMuls with ``include_attention``), float bias;
  the form TensorRT's explicit quantization takes (onnx-tensorrt operators.md: zero point 0, INT8).
* ``target="cpu"``: uint8 activations, int8 per-channel weights: what ONNX Runtime's CPU kernels
  run fast (0.15 s vs 0.49 s for DANet R-50 at 256x512 on this project's CPU; NOTES.md).

Calibration is reproducible and reused: a JSON record names the images (paths), their count, the
method, the seed and the SHA-256 of the graph (``calib.graph_sha256``: the graph proto, metadata
excluded); the tensor ranges (ORT's calibration cache) and the record are named after that hash, and a
later run with the same graph, images, method and seed reuses the ranges instead of calibrating again.

No TensorRT calibration cache is written here: the Q/DQ graph carries its scales, and TensorRT 10's
implicit calibration (``danet-edge build --int8-calib``) writes and keys its own cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..core.optional import import_onnxruntime
from ..data.calib import CalibrationSet, graph_sha256
from ..core.choices import CALIB_METHODS, TARGETS
from ..core.errors import CalibrationError, ConfigError, DataError
from ..data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from ..core.progress import track
from ..core.utils import atomic_path, read_json, write_json

__all__ = ["Int8Result", "quantize_int8", "calibration_chunk", "CALIB_CHUNK", "residual_adds", "HIGH_PRECISIONS",
           "drop_unread_qdq", "classifier_conv"]

#: What the part of an INT8 graph outside the Q/DQ runs at: ``fp16`` (TensorRT target default: under
#: strong typing an op left FP32 runs FP32) or ``fp32``.
HIGH_PRECISIONS = ("fp16", "fp32")

CALIB_CHUNK = 4  # calibration batches held in memory at once


def _input_spec(model: onnx.ModelProto) -> tuple[str, list[int], int]:
    inp = model.graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    return inp.name, dims, inp.type.tensor_type.elem_type


class _Reader:
    """``CalibrationDataReader``: one ``{input: batch}`` per batch of calibration images.

    Float inputs get ``preprocess(frames, (H, W), mean, std)`` ``(N, 3, H, W) float32``; uint8 (fused I/O)
    inputs get the same resized frames ``(N, H, W, 3) uint8``. The last batch is padded by repeating
    images so every batch has the graph's static batch size.
    """

    def __init__(self, calib: CalibrationSet, model: onnx.ModelProto, mean, std) -> None:
        self.name, dims, etype = _input_spec(model)
        self.fused = etype == onnx.TensorProto.UINT8
        self.batch = dims[0]
        self.size = (dims[1], dims[2]) if self.fused else (dims[2], dims[3])
        self.calib, self.mean, self.std = calib, mean, std
        self._it: Iterator[dict[str, np.ndarray]] | None = None
        self._range = (0, len(self))

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        start, end = self._range
        for i in track(range(start, min(end, len(self))), f"calibration batches {start + 1}-{min(end, len(self))}"):
            yield {self.name: self.calib.model_batch(i, self.batch, self.size, self.mean, self.std, self.fused)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve only batches ``start_index:end_index`` (ORT's chunked collection, ``CalibStridedMinMax``)."""
        self._range = (start_index, end_index)
        self._it = None

    def __len__(self) -> int:
        return self.calib.num_batches(self.batch)


def calibration_chunk(batches: int, max_chunk: int = CALIB_CHUNK) -> int:
    """Largest divisor of ``batches`` not above ``max_chunk``: batches whose activations ONNX Runtime
    holds at once before folding them into the ranges / histograms (memory bound of calibration)."""
    return max(d for d in range(1, min(batches, max_chunk) + 1) if batches % d == 0)


@dataclass
class Int8Result:
    """What ``quantize_int8`` wrote: the Q/DQ graph, the calibration record (JSON dict and file),
    the ORT ranges cache, and whether the ranges were reused."""

    path: Path
    record: dict[str, Any]
    record_path: Path
    ranges_path: Path
    reused: bool = False
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class _FromOrtQuantization(logging.Filter):
    """Drops records that ONNX Runtime's quantization code logs on the root logger (its advice about
    pre-processing and per-channel weights), and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime/quantization" not in record.pathname.replace(os.sep, "/")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence ORT quantization's own prints and root-logger advice for the duration of the call,
    without touching the root logger's level or ``sys.stdout`` (other code keeps its output)."""
    import_onnxruntime()  # MissingDependencyError (one line) when absent
    import onnxruntime.quantization.calibrate as ort_calibrate

    root = logging.getLogger()
    flt = _FromOrtQuantization()
    root.addFilter(flt)
    had_print = "print" in vars(ort_calibrate)
    ort_calibrate.print = lambda *args, **kwargs: None  # its histogram summaries; shadows the builtin there only
    try:
        yield
    finally:
        root.removeFilter(flt)
        if not had_print:
            del ort_calibrate.print


def _method_enum(method: str):
    import_onnxruntime()
    from onnxruntime.quantization import CalibrationMethod

    return {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile,
            "minmax": CalibrationMethod.MinMax}[method]


def quantize_int8(onnx_path: str | os.PathLike[str], calib_set: CalibrationSet, out: str | os.PathLike[str],
                  target: str = "tensorrt", method: str = "entropy", include_attention: bool = False,
                  mean=IMAGENET_MEAN, std=IMAGENET_STD, cache_dir: str | os.PathLike[str] | None = None,
                  percentile: float = 99.999, high_precision: str | None = None,
                  residual_add: bool | None = None) -> Int8Result:
    """FP32 ONNX -> INT8 Q/DQ ONNX calibrated on ``calib_set`` (see the module docstring).

    Args:
        onnx_path: the FP32 graph (``images`` float32 NCHW or fused uint8 NHWC input).
        calib_set: calibration images.
        out: path of the Q/DQ graph (written atomically).
        target: ``tensorrt`` (symmetric int8) or ``cpu`` (uint8 activations).
        method: ``entropy``, ``percentile`` or ``minmax``.
        include_attention: also quantize the attention MatMuls (PAM, CAM).
        mean, std: normalisation (RGB, applied to x/255) of a float-input graph.
        cache_dir: where the record and caches go (default: beside ``out``).
        high_precision: what the unquantized ops run at (default ``fp16`` for ``target="tensorrt"``, ``fp32``
            for ``cpu``): ``fp32``, or ``fp16`` (the graph is raised to
            opset 19 so that Q/DQ scales are FP16 and every DequantizeLinear outputs FP16, as TensorRT 10.3's
            strong typing infers a DQ's output type from its scale; FP32 islands as the FP16 graph's,
            ``precision.default_fp32_islands``; FP32 graph input and output).
        residual_add: Q/DQ on the skip input of each residual Add (:func:`residual_adds`) so TensorRT fuses
            the Add into the INT8 convolution ("Quantize the residual input in skip-connections", TensorRT
            developer guide, Q/DQ layer placement). Default: on for ``target="tensorrt"``.

    For ``target="cpu"`` the classifier (:func:`classifier_conv`, a 1x1 Conv of well under 1 % of the FLOPs) stays
    FP32: ONNX Runtime's CPU form quantizes each Conv's output too, and uint8 logits flip the argmax wherever
    classes are close (a CamVid-trained DANet R-50 lost 7.4 mIoU with 45 % agreement; with the classifier in
    FP32, +0.1 mIoU and 99 %: NOTES.md, issue 9). The tensorrt target never quantizes Conv outputs.

    Raises:
        ConfigError: unknown target or method.
        CalibrationError: calibration failed (e.g. an image became unreadable).
        CompatibilityError: ``target="tensorrt"`` and the graph breaks a TensorRT rule.
        MissingDependencyError: onnxruntime is not importable (``pip install 'danet-edge[export]'``).
    """
    import time

    import_onnxruntime()
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from .precision import attention_nodes
    from ..graph.trtcheck import enforce_tensorrt_compat

    if target not in TARGETS:
        raise ConfigError(f"unknown INT8 target {target!r}; choose one of {', '.join(TARGETS)}")
    if method not in CALIB_METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIB_METHODS)}")
    high_precision = high_precision or ("fp16" if target == "tensorrt" else "fp32")
    if high_precision not in HIGH_PRECISIONS:
        raise ConfigError(f"high precision must be one of {', '.join(HIGH_PRECISIONS)}, got {high_precision!r}")
    residual_add = target == "tensorrt" if residual_add is None else residual_add
    t0 = time.perf_counter()
    out = Path(out)
    model = onnx.load(str(onnx_path))
    digest = graph_sha256(model)
    cache_dir = Path(cache_dir) if cache_dir is not None else out.parent
    stem = f"calib_{digest[:16]}_{method}" + ("_att" if include_attention else "") + ("_res" if residual_add else "")
    record_path, ranges_path = cache_dir / f"{stem}.json", cache_dir / f"{stem}.ranges.json"
    record = {"format": "danet-edge-calibration/1", "graph_sha256": digest, "method": method,
              "count": len(calib_set), "available": calib_set.available, "seed": calib_set.seed,
              "root": str(calib_set.root), "images": calib_set.relative_paths(),
              "include_attention": include_attention, "residual_add": residual_add, "ranges_cache": ranges_path.name}
    if method == "percentile":
        record["percentile"] = percentile
    reused = False
    if record_path.is_file() and ranges_path.is_file():
        try:
            old = read_json(record_path)
        except (OSError, ValueError):
            old = None
        reused = isinstance(old, dict) and all(old.get(k) == record[k] for k in
                                               ("graph_sha256", "method", "seed", "images", "include_attention",
                                                "residual_add"))
    op_types = ["Conv", "MatMul"] if include_attention else ["Conv"]
    nodes_to_exclude = []
    if include_attention:  # only the attention MatMuls are MatMuls in DANet, but be explicit
        att = set(attention_nodes(model).matmuls)
        nodes_to_exclude = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in att]
    classifier = classifier_conv(model) if target == "cpu" else None
    if classifier is not None:
        nodes_to_exclude.append(classifier)
        record["fp32_layers"] = {classifier: "classifier: its output (the logits) is not quantized"}
    residual = residual_adds(model) if residual_add else {}
    if residual:  # ORT puts Q/DQ on both inputs; the main branch's pair is taken out after
        op_types.append("Add")
        nodes_to_exclude += [n.name for n in model.graph.node if n.op_type == "Add" and n.name not in residual]
    extra: dict[str, Any] = {"CalibPercentile": percentile} if method == "percentile" else {}
    reader = _Reader(calib_set, model, mean, std)
    # Collect activations a few batches at a time: all at once, 64 images at 512x1024 need > 20 GiB.
    # ORT's strided collection merges min/max and histograms chunk by chunk for every method.
    extra["CalibStridedMinMax"] = calibration_chunk(len(reader))
    if target == "tensorrt":
        extra.update(ActivationSymmetric=True, WeightSymmetric=True, QuantizeBias=False,
                     OpTypesToExcludeOutputQuantization=op_types)
        act_type = QuantType.QInt8
    else:
        act_type = QuantType.QUInt8
    with tempfile.TemporaryDirectory(prefix="danet-edge-int8-") as tmp:
        tmp_ranges = Path(tmp) / "ranges.json"
        if reused:
            shutil.copyfile(ranges_path, tmp_ranges)
        tmp_out = Path(tmp) / "int8.onnx"
        try:
            with _quiet():
                quantize_static(str(onnx_path), str(tmp_out), reader, quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=op_types, nodes_to_exclude=nodes_to_exclude,
                                per_channel=True, activation_type=act_type, weight_type=QuantType.QInt8,
                                calibrate_method=_method_enum(method), extra_options=extra,
                                calibration_cache_path=str(tmp_ranges))
        except (DataError, CalibrationError):
            raise
        except Exception as e:  # noqa: BLE001 - ORT raises bare Exceptions; say which step failed
            raise CalibrationError(f"INT8 calibration/quantization of {onnx_path} failed: {e}") from None
        qmodel = onnx.load(str(tmp_out))
        if residual:
            _drop_main_branch_qdq(qmodel, residual)
        scale_stats: dict[str, Any] = {}
        if high_precision == "fp16":
            qmodel, scale_stats = _fp16_outside_qdq(qmodel)
        enforce_tensorrt_compat(qmodel, target)
        with atomic_path(out) as dst:
            onnx.save(qmodel, str(dst))
        if not reused:
            with atomic_path(ranges_path) as dst:
                shutil.copyfile(tmp_ranges, dst)
    write_json(record_path, record)
    record = {**record, "high_precision": high_precision, "residual_adds": len(residual), **scale_stats}
    return Int8Result(out, record, record_path, ranges_path, reused, time.perf_counter() - t0)


_AFTER_CLASSIFIER = {"Resize", "Upsample", "Identity", "Cast", "ArgMax", "Softmax", "Transpose", "Reshape"}


def classifier_conv(model: onnx.ModelProto) -> str | None:
    """Name of the Conv that makes the logits: the one reached from the graph output back through
    resampling / cast / argmax-like ops only (DANet: ``/head/conv8/...``); None when there is none."""
    producer = _producer_map(model.graph)
    node = producer.get(model.graph.output[0].name)
    while node is not None and node.op_type in _AFTER_CLASSIFIER:
        node = producer.get(node.input[0])
    return node.name if node is not None and node.op_type == "Conv" else None


def _producer_map(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def _ancestors(tensor: str, producer: dict[str, onnx.NodeProto], skip: set[str], limit: int = 64) -> dict[str, int]:
    """Activations upstream of ``tensor`` with their distance in nodes (breadth first, ``limit`` deep); the
    names in ``skip`` (initializers: a graph cleaner may share one bias between two Convs) are not followed."""
    dist = {tensor: 0}
    frontier = [tensor]
    while frontier:
        nxt = []
        for t in frontier:
            node = producer.get(t)
            if node is None or dist[t] >= limit:
                continue
            for i in node.input:
                if i and i not in dist and i not in skip:
                    dist[i] = dist[t] + 1
                    nxt.append(i)
        frontier = nxt
    return dist


def residual_adds(model: onnx.ModelProto) -> dict[str, int]:
    """Residual Adds of a ResNet-style FP32 graph: ``{add name: index of its main-branch input}``.

    A residual Add has a main-branch input produced directly by a Conv (BatchNorm folded) and a skip input
    that is not; when both come from Convs (a block with a projection shortcut), the main branch is the one
    farther from their nearest common ancestor (conv1 -> conv2 -> conv3 against the single projection
    Conv), as NVIDIA ModelOpt's ONNX quantizer decides (``graph_utils.build_non_residual_input_map``).
    Adds with no Conv input, or with two equally deep Conv inputs, are not residual.
    """
    g = model.graph
    producer = _producer_map(g)
    weights = {i.name for i in g.initializer}
    out: dict[str, int] = {}
    for n in g.node:
        if n.op_type != "Add" or len(n.input) != 2:
            continue
        from_conv = [producer.get(i) is not None and producer[i].op_type == "Conv" for i in n.input]
        if from_conv == [True, False] or from_conv == [False, True]:
            if all(producer.get(i) is not None for i in n.input):  # a skip from the graph, not a constant
                out[n.name] = from_conv.index(True)
            continue
        if from_conv == [True, True]:
            a, b = (_ancestors(i, producer, weights) for i in n.input)
            common = set(a) & set(b)
            if not common:
                continue
            da, db = min(a[c] for c in common), min(b[c] for c in common)
            if da != db:
                out[n.name] = 0 if da > db else 1
    return out


def _drop_main_branch_qdq(model: onnx.ModelProto, residual: dict[str, int]) -> None:
    """Take the Q/DQ pair off each residual Add's main-branch input (it fuses as the Conv's output), so
    only the skip input stays quantized; the pair is removed when nothing else reads it."""
    g = model.graph
    producer = _producer_map(g)
    for n in g.node:
        if n.name not in residual:
            continue
        idx = residual[n.name]
        dq = producer.get(n.input[idx])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        n.input[idx] = q.input[0]
    drop_unread_qdq(g)


def drop_unread_qdq(g: onnx.GraphProto) -> None:
    """Remove QuantizeLinear / DequantizeLinear nodes whose output nothing reads (repeated: a DQ gone can
    leave its Q unread), after a pass rewired their readers."""
    while True:
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.output[0] not in used]
        if not dead:
            return
        for n in dead:
            g.node.remove(n)


def _qdq_scales(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    inits = {i.name: i for i in model.graph.initializer}
    names = {n.input[1] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    return {k: numpy_helper.to_array(inits[k]).astype(np.float64) for k in names if k in inits}


FP16_MIN_NORMAL = 2.0 ** -14  # 6.1e-5: below it FP16 values are subnormal (fewer significant bits)
FP16_MIN_POSITIVE = 2.0 ** -24  # 6.0e-8: the smallest positive FP16; anything below half of it rounds to 0


def fp16_scale(scale: np.ndarray) -> np.ndarray:
    """Q/DQ scales as FP16 values TensorRT accepts, returned as float32 (exactly representable in FP16).

    ``scale``: any shape, float32, >= 0. Scales at or above FP16's smallest normal (6.1e-5) round to the
    nearest FP16 (relative error <= 2^-11). Smaller ones (per-channel weight scales of near-dead or BN-folded
    channels: a channel whose largest weight is under 7.8e-3) go to the next FP16 at or above
    ``max(scale, 2^-24)``: rounding to nearest would make a scale under 3e-8 zero, and onnx-tensorrt's Q/DQ
    importer requires every scale > 0 (``QuantDequantLinearHelper``); rounding up never shrinks a scale, so a
    value quantized with it is never clipped. Weights quantized with the old scale must be requantized
    (:func:`_fp16_safe_scales` does).
    """
    s = np.asarray(scale, dtype=np.float32)
    floor = np.maximum(s, np.float32(FP16_MIN_POSITIVE))
    up = floor.astype(np.float16)
    up = np.where(up.astype(np.float32) < floor, np.nextafter(up, np.float16(np.inf)), up)
    return np.where(s < FP16_MIN_NORMAL, up, s.astype(np.float16)).astype(np.float32)


def _fp16_safe_scales(model: onnx.ModelProto) -> int:
    """Replace every Q/DQ scale initializer by :func:`fp16_scale` of it, in place, before the graph goes FP16;
    the INT8 weights dequantized with a raised scale are requantized against it (``q * s / s16``, rounded;
    ``|q'| <= |q|`` since ``s16 >= s``), so what a DQ gives is the weight within one step ``s16`` (half a step
    from ONNX Runtime's rounding to ``s``, half from this one).

    Returns how many scale values were rounded up (those under FP16's smallest normal).
    """
    inits = {i.name: i for i in model.graph.initializer}
    raised = 0
    new_scales: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        name = n.input[1]
        if name not in new_scales:
            s = numpy_helper.to_array(inits[name]).astype(np.float32)
            s16 = fp16_scale(s)
            changed = s < FP16_MIN_NORMAL  # rounded up (subnormal range), not to nearest: requantize against it
            new_scales[name] = (s, s16, changed)
            if np.any(changed):
                raised += int(np.sum(changed))
                inits[name].CopyFrom(numpy_helper.from_array(s16.astype(np.float32), name))
        s, s16, changed = new_scales[name]
        w = inits.get(n.input[0])
        if n.op_type != "DequantizeLinear" or w is None or w.data_type != TensorProto.INT8 or not np.any(changed):
            continue
        q = numpy_helper.to_array(w).astype(np.float64)
        ratio = np.where(changed, s.astype(np.float64) / s16.astype(np.float64), 1.0)
        if ratio.ndim == 1 and q.ndim > 1:  # per-channel along ``axis`` (default 1; ORT writes 0 for Conv weights)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1) % q.ndim
            ratio = ratio.reshape([-1 if d == axis else 1 for d in range(q.ndim)])
        requant = np.clip(np.rint(q * ratio), -128, 127).astype(np.int8)
        w.CopyFrom(numpy_helper.from_array(requant, w.name))
    return raised


def _fp16_outside_qdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """FP16 for every op outside the Q/DQ but the FP32 islands; opset 19 so Q/DQ scales are FP16.

    Scales are first made FP16-safe (:func:`fp16_scale`: none rounds to 0, which TensorRT's parser refuses).
    Returns the graph and what FP16 did to the scales: how many fell below FP16's smallest normal
    (6.1e-5: per-channel weight scales of small weights; stored as subnormals with fewer bits), how many of
    those were rounded up (their weights requantized against the stored scale) and the largest relative
    change of any scale.
    """
    from onnx import version_converter

    from .precision import default_fp32_islands, fp16_with_islands

    before = _qdq_scales(model)
    raised = _fp16_safe_scales(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 19:
        model = version_converter.convert_version(model, 19)
    producer = _producer_map(model.graph)
    quantized = {n.name for n in model.graph.node  # INT8 already (e.g. attention with include_attention)
                 if any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input[:2])}
    model = fp16_with_islands(model, [n for n in default_fp32_islands(model) if n not in quantized])
    after = _qdq_scales(model)
    values = np.concatenate([v.ravel() for v in before.values()]) if before else np.zeros(0)
    rel = max((float(np.max(np.abs(after[k] - v) / np.maximum(np.abs(v), 1e-30))) for k, v in before.items()
               if k in after), default=0.0)
    return model, {"fp16_scales_subnormal": int((np.abs(values) < FP16_MIN_NORMAL).sum()),
                   "fp16_scales_raised": raised, "fp16_scales": int(values.size),
                   "fp16_scale_max_rel_error": float(f"{rel:.3g}")}
