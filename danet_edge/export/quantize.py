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
import json
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

from ..core.optional import import_onnxruntime
from ..data.calib import CalibrationSet, graph_sha256
from ..core.choices import CALIB_METHODS, DEFAULT_CALIB_METHOD, TARGETS
from ..core.errors import CalibrationError, ConfigError, DataError
from ..model.config import IMAGENET_MEAN, IMAGENET_STD
from ..core.progress import track
from ..core.fixednames import is_regular_file, read_fixed
from ..core.utils import atomic_path, sha256_file, write_json
from .ranges_cache import calibrated_tensors, ranges_cache_problem, write_ranges
from .qdq_fp16 import _fp16_outside_qdq
from ..graph.precision import producers

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
    the ORT ranges cache, whether the ranges were reused, and why a cache was refused (then recalibrated)."""

    path: Path
    record: dict[str, Any]
    record_path: Path
    ranges_path: Path
    reused: bool = False
    seconds: float = 0.0
    cache_refused: str | None = None
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


def quantize_int8(onnx_path: str | os.PathLike[str], calib_set: CalibrationSet | None, out: str | os.PathLike[str],
                  target: str = "tensorrt", method: str = DEFAULT_CALIB_METHOD, include_attention: bool = False,
                  mean=IMAGENET_MEAN, std=IMAGENET_STD, cache_dir: str | os.PathLike[str] | None = None,
                  percentile: float = 99.999, high_precision: str | None = None,
                  residual_add: bool | None = None, ranges: dict[str, tuple[float, float]] | None = None
                  ) -> Int8Result:
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
        ranges: ``{FP32 tensor: (lowest, highest)}`` to quantize with instead of calibrating (QAT's learned
            scales: ``export.qat.learned_ranges``); ``calib_set`` is then not read and no record is written (the
            returned record says ``scales: learned``). Without it the record says ``scales: calibrated``.

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

    from ..graph.precision import attention_nodes, pam_energy_in_fp32
    from ..graph.trtcheck import enforce_tensorrt_compat, required_tensorrt

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
    if ranges is not None:
        record = {"format": "danet-edge-calibration/1", "graph_sha256": digest, "scales": "learned",
                  "method": "learned (QAT)", "include_attention": include_attention, "residual_add": residual_add}
    elif calib_set is None:
        raise ConfigError("INT8 quantization needs calibration images (or learned ranges)")
    else:
        record = {"format": "danet-edge-calibration/1", "graph_sha256": digest, "scales": "calibrated",
                  "method": method, "count": len(calib_set), "available": calib_set.available, "seed": calib_set.seed,
                  "root": str(calib_set.root), "images": calib_set.relative_paths(),
                  "include_attention": include_attention, "residual_add": residual_add,
                  "ranges_cache": ranges_path.name}
    if method == "percentile" and ranges is None:
        record["percentile"] = percentile
    op_types = ["Conv", "MatMul"] if include_attention else ["Conv"]
    residual = residual_adds(model) if residual_add else {}
    if residual:  # ORT puts Q/DQ on both inputs; the main branch's pair is taken out after
        op_types.append("Add")
    reused, cache_note = False, None
    if ranges is None and is_regular_file(record_path) and (ranges_path.exists() or ranges_path.is_symlink()):
        try:
            old = json.loads(read_fixed(record_path, 16 * 2**20))
        except (OSError, ValueError, RecursionError):
            old = None
        reused = isinstance(old, dict) and all(old.get(k) == record[k] for k in
                                               ("graph_sha256", "method", "seed", "images", "include_attention",
                                                "residual_add"))
        if reused:  # the cache must fit this graph exactly, else calibration runs again (the log says why)
            cache_note = ranges_cache_problem(ranges_path, old, model, calibrated_tensors(model, op_types), method)
            reused = cache_note is None
    nodes_to_exclude = []
    if include_attention:  # only the attention MatMuls are MatMuls in DANet, but be explicit
        att = set(attention_nodes(model).matmuls)
        nodes_to_exclude = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in att]
    classifier = classifier_conv(model) if target == "cpu" else None
    if classifier is not None:
        nodes_to_exclude.append(classifier)
        record["fp32_layers"] = {classifier: "classifier: its output (the logits) is not quantized"}
    if residual:
        nodes_to_exclude += [n.name for n in model.graph.node if n.op_type == "Add" and n.name not in residual]
    extra: dict[str, Any] = {"CalibPercentile": percentile} if method == "percentile" else {}
    reader = _Reader(calib_set, model, mean, std) if ranges is None else None
    # Collect activations a few batches at a time: all at once, 64 images at 512x1024 need > 20 GiB.
    # ORT's strided collection merges min/max and histograms chunk by chunk for every method.
    if reader is not None:
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
        elif ranges is not None:
            write_ranges(tmp_ranges, ranges)
        tmp_out = Path(tmp) / "int8.onnx"
        src = Path(tmp) / "model.onnx"  # ORT writes "<input>-inferred.onnx" beside its input: here, not in --out
        try:
            os.link(onnx_path, src)
        except OSError:
            shutil.copyfile(onnx_path, src)
        try:
            with _quiet():
                quantize_static(str(src), str(tmp_out), reader, quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=op_types, nodes_to_exclude=nodes_to_exclude,
                                per_channel=True, activation_type=act_type, weight_type=QuantType.QInt8,
                                calibrate_method=_method_enum("minmax" if ranges is not None else method),
                                extra_options=extra,
                                calibration_cache_path=str(tmp_ranges))
        except (DataError, CalibrationError):
            raise
        except Exception as e:  # noqa: BLE001 - ORT raises bare Exceptions; say which step failed
            cache = f" with the ranges of {ranges_path}" if reused else ""
            raise CalibrationError(f"INT8 calibration/quantization of {onnx_path}{cache} failed: {e}") from None
        qmodel = onnx.load(str(tmp_out))
        if residual:
            _drop_main_branch_qdq(qmodel, residual)
        scale_stats: dict[str, Any] = {}
        if high_precision == "fp16":
            qmodel, scale_stats = _fp16_outside_qdq(qmodel, pam_energy_in_fp32(model))
        enforce_tensorrt_compat(qmodel, target, required_tensorrt(qmodel))
        with atomic_path(out, qmodel.ByteSize()) as dst:
            onnx.save(qmodel, str(dst))
        if ranges is None:
            problem = ranges_cache_problem(tmp_ranges, None, model)
            if problem is not None:  # ranges ORT measured itself: a model whose activations overflow float32
                raise CalibrationError(f"INT8 calibration of {onnx_path} measured unusable ranges: {problem}")
            record["ranges_sha256"] = sha256_file(tmp_ranges)
            if not reused:
                with atomic_path(ranges_path) as dst:
                    shutil.copyfile(tmp_ranges, dst)
    if ranges is None:
        write_json(record_path, record)
    record = {**record, "high_precision": high_precision, "residual_adds": len(residual), **scale_stats}
    return Int8Result(out, record, record_path, ranges_path, reused, time.perf_counter() - t0, cache_note)


_AFTER_CLASSIFIER = {"Resize", "Upsample", "Identity", "Cast", "ArgMax", "Softmax", "Transpose", "Reshape"}


def classifier_conv(model: onnx.ModelProto) -> str | None:
    """Name of the Conv that makes the logits: the one reached from the graph output back through
    resampling / cast / argmax-like ops only (DANet: ``/head/conv8/...``); None when there is none."""
    producer = producers(model.graph)
    node = producer.get(model.graph.output[0].name)
    while node is not None and node.op_type in _AFTER_CLASSIFIER:
        node = producer.get(node.input[0])
    return node.name if node is not None and node.op_type == "Conv" else None


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
    producer = producers(g)
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
    producer = producers(g)
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


