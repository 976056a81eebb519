"""INT8 calibration and explicit Q/DQ graphs (ONNX Runtime quantization tools).

``calib/`` holds real images (or a ``calib.txt`` list of them); ``load_calibration_set`` reads and
checks every one, ``quantize_int8`` calibrates on them through exactly
``danet_edge.preprocess`` and writes a Q/DQ graph with ``onnxruntime.quantization.quantize_static``
(QuantFormat.QDQ, per-channel weights, per-tensor activations):

* ``target="tensorrt"``: symmetric int8 activations and weights (every zero point 0, INT8), Q/DQ on
  the inputs of Conv only (and of the attention MatMuls with ``include_attention``), float bias;
  the form TensorRT's explicit quantization takes (onnx-tensorrt operators.md: zero point 0, INT8).
* ``target="cpu"``: uint8 activations, int8 per-channel weights: what ONNX Runtime's CPU kernels
  run fast (REFERENCE.md section 3: 0.15 s vs 0.49 s for DANet R-50 at 256x512).

Calibration is reproducible and reused: a JSON record names the images (paths), their count, the
method, the seed and the SHA-256 of the graph (``graph_sha256``: the graph proto, metadata excluded);
the tensor ranges (ORT's calibration cache) and the record are named after that hash, and a later run
with the same graph, images, method and seed reuses the ranges instead of calibrating again.

No TensorRT calibration cache is written here: the Q/DQ graph carries its scales, and TensorRT 10's
implicit calibration (``danet-edge build --int8-calib``) writes and keys its own cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx

from .choices import CALIB_METHODS, TARGETS
from .errors import CalibrationError, ConfigError, DataError
from .frames import IMAGE_SUFFIXES, read_image
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess, resize_image
from .progress import track
from .utils import atomic_path, read_json, write_json

__all__ = ["IMAGE_SUFFIXES", "LIST_FILE", "CALIB_METHODS", "CalibrationSet", "load_calibration_set",
           "graph_sha256", "Int8Result", "quantize_int8", "fill_calib_dir"]

LIST_FILE = "calib.txt"
CALIB_CHUNK = 4  # calibration batches held in memory at once

_MAX_IMAGES = 10_000


def _read_rgb(path: Path) -> np.ndarray:
    """``data.read_image`` (``(H, W, 3) uint8 RGB``), its failure told as a calibration error."""
    try:
        return read_image(path)
    except DataError:
        raise CalibrationError(f"calibration image {path} cannot be read (missing, empty or not an image)") from None


@dataclass
class CalibrationSet:
    """Calibration images, checked readable.

    Attributes:
        root: the calibration folder.
        paths: image files used, in order (the record lists them).
        seed: seed of the sample drawn when the folder holds more than ``count`` images.
        available: number of images the folder offered.
    """

    root: Path
    paths: list[Path]
    seed: int = 0
    available: int = 0

    def __len__(self) -> int:
        return len(self.paths)

    def frames(self) -> Iterator[np.ndarray]:
        """Each image as ``(H, W, 3) uint8 RGB`` (decoded again on every pass)."""
        for p in self.paths:
            yield _read_rgb(p)

    def num_batches(self, batch: int) -> int:
        """Batches of ``batch`` images that cover the set (the last one completed, see :meth:`model_batch`)."""
        return -(-len(self.paths) // batch)

    def model_batch(self, index: int, batch: int, size: tuple[int, int], mean: Any, std: Any,
                    fused: bool = False) -> np.ndarray:
        """Batch ``index`` as the graph's input: ``(batch, 3, h, w)`` float32 through
        ``preprocess.preprocess``, or ``(batch, h, w, 3)`` uint8 for fused I/O. The last batch is
        completed with images from the start of the set, so no image is dropped. The one rule for both
        ONNX Runtime's calibration reader and TensorRT's calibrator.

        Raises:
            CalibrationError: an image cannot be read (named).
        """
        frames = [_read_rgb(self.paths[(index * batch + k) % len(self.paths)]) for k in range(batch)]
        if fused:
            return np.stack([resize_image(f, size) for f in frames])
        return preprocess(frames, size, mean, std)

    def relative_paths(self) -> list[str]:
        out = []
        for p in self.paths:
            try:
                out.append(p.resolve().relative_to(self.root.resolve()).as_posix())
            except ValueError:
                out.append(str(p))
        return out


def load_calibration_set(directory: str | os.PathLike[str], count: int | None = None, seed: int = 0) -> CalibrationSet:
    """Read a calibration folder: ``calib.txt`` (one image path a line, relative to the folder, ``#``
    comments) when present, else every image file under it (sorted). Draws ``count`` of them with
    ``seed`` when more are offered, and decodes every chosen image once to check it.

    Raises:
        CalibrationError: missing folder, no image, a listed file missing or unreadable (named).
    """
    root = Path(directory)
    if not root.is_dir():
        raise CalibrationError(f"calibration folder {root} does not exist (fill it with `danet-edge calib fill` "
                               "or copy representative images into it)")
    if count is not None and count < 1:
        raise ConfigError(f"--calib-size must be at least 1, got {count}")
    list_file = root / LIST_FILE
    if list_file.is_file():
        paths = []
        for n, line in enumerate(list_file.read_text(errors="replace").splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            p = Path(line.split()[0])
            p = p if p.is_absolute() else root / p
            if not p.is_file():
                raise CalibrationError(f"{list_file}:{n}: calibration image {p} does not exist")
            paths.append(p)
    else:
        paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CalibrationError(f"calibration folder {root} holds no image ({', '.join(IMAGE_SUFFIXES)}) "
                               f"and no {LIST_FILE}")
    available = len(paths)
    if len(paths) > _MAX_IMAGES and (count is None or count > _MAX_IMAGES):
        count = _MAX_IMAGES
    if count is not None and count < len(paths):
        paths = sorted(random.Random(seed).sample(paths, count))
    for p in paths:
        _read_rgb(p)
    return CalibrationSet(root, paths, seed, available)


def graph_sha256(model: onnx.ModelProto) -> str:
    """SHA-256 of the graph (nodes, weights, I/O), metadata excluded: same weights, same hash."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


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
    from onnxruntime.quantization import CalibrationMethod

    return {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile,
            "minmax": CalibrationMethod.MinMax}[method]


def quantize_int8(onnx_path: str | os.PathLike[str], calib_set: CalibrationSet, out: str | os.PathLike[str],
                  target: str = "tensorrt", method: str = "entropy", include_attention: bool = False,
                  mean=IMAGENET_MEAN, std=IMAGENET_STD, cache_dir: str | os.PathLike[str] | None = None,
                  percentile: float = 99.999) -> Int8Result:
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

    Raises:
        ConfigError: unknown target or method.
        CalibrationError: calibration failed (e.g. an image became unreadable).
        CompatibilityError: ``target="tensorrt"`` and the graph breaks a TensorRT rule.
    """
    import time

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from .precision import attention_nodes
    from .trtcheck import enforce_tensorrt_compat

    if target not in TARGETS:
        raise ConfigError(f"unknown INT8 target {target!r}; choose one of {', '.join(TARGETS)}")
    if method not in CALIB_METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIB_METHODS)}")
    t0 = time.perf_counter()
    out = Path(out)
    model = onnx.load(str(onnx_path))
    digest = graph_sha256(model)
    cache_dir = Path(cache_dir) if cache_dir is not None else out.parent
    stem = f"calib_{digest[:16]}_{method}" + ("_att" if include_attention else "")
    record_path, ranges_path = cache_dir / f"{stem}.json", cache_dir / f"{stem}.ranges.json"
    record = {"format": "danet-edge-calibration/1", "graph_sha256": digest, "method": method,
              "count": len(calib_set), "available": calib_set.available, "seed": calib_set.seed,
              "root": str(calib_set.root), "images": calib_set.relative_paths(),
              "include_attention": include_attention, "ranges_cache": ranges_path.name}
    if method == "percentile":
        record["percentile"] = percentile
    reused = False
    if record_path.is_file() and ranges_path.is_file():
        try:
            old = read_json(record_path)
        except (OSError, ValueError):
            old = None
        reused = isinstance(old, dict) and all(old.get(k) == record[k] for k in
                                               ("graph_sha256", "method", "seed", "images", "include_attention"))
    op_types = ["Conv", "MatMul"] if include_attention else ["Conv"]
    nodes_to_exclude = []
    if include_attention:  # only the attention MatMuls are MatMuls in DANet, but be explicit
        att = set(attention_nodes(model).matmuls)
        nodes_to_exclude = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in att]
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
        enforce_tensorrt_compat(qmodel, target)
        with atomic_path(out) as dst:
            shutil.copyfile(tmp_out, dst)
        if not reused:
            with atomic_path(ranges_path) as dst:
                shutil.copyfile(tmp_ranges, dst)
    write_json(record_path, record)
    return Int8Result(out, record, record_path, ranges_path, reused, time.perf_counter() - t0)


def fill_calib_dir(dataset: str, data: str | os.PathLike[str] | None, count: int, out: str | os.PathLike[str],
                   split: str = "train", seed: int = 0) -> Path:
    """Fill ``out`` with ``count`` representative images of a data set and a ``calib.txt`` list.

    Class-balanced where labels exist: greedily picks, one at a time, the image whose classes are
    rarest (pixel share over the split) and least covered by the images already picked, so rare classes
    are calibrated on. Images are copied (the folder is self-contained); ``calib.json`` records the
    data set, split, seed and the classes covered.

    Raises:
        ConfigError: count < 1, unknown data set; CalibrationError: ``out`` already holds a list.
        DataError: missing or unreadable data set.
    """
    from .data import build_dataset

    if count < 1:
        raise ConfigError(f"--count must be at least 1, got {count}")
    out = Path(out)
    if (out / LIST_FILE).exists():
        raise CalibrationError(f"{out / LIST_FILE} already exists; remove it or choose another --out")
    ds = build_dataset(dataset, data, split)
    if len(ds) == 0:
        raise DataError(f"data set {dataset!r} split {split!r} is empty")
    k, ign = ds.info.num_classes, ds.info.ignore_index
    hist = np.zeros((len(ds), k), np.int64)
    for i in range(len(ds)):
        _, mask = ds[i]
        valid = mask[(mask != ign) & (mask >= 0) & (mask < k)]
        hist[i] = np.bincount(valid.ravel(), minlength=k)[:k]
    share = hist.sum(0) / max(1, hist.sum())
    rarity = np.where(share > 0, 1.0 / np.maximum(share, 1e-6), 0.0)
    order = list(range(len(ds)))
    random.Random(seed).shuffle(order)
    covered = np.zeros(k)
    chosen: list[int] = []
    left = set(order)
    for _ in range(min(count, len(ds))):
        best = max((i for i in order if i in left),
                   key=lambda i: float(((hist[i] > 0) * rarity / (1.0 + covered)).sum()))
        chosen.append(best)
        left.discard(best)
        covered += hist[best] > 0
    names = []
    (out / "images").mkdir(parents=True, exist_ok=True)
    for n, i in enumerate(chosen):
        src = ds.image_path(i)
        if src is not None:
            name = f"images/{n:05d}_{Path(src).name}"
            with atomic_path(out / name) as tmp:
                shutil.copyfile(src, tmp)
        else:
            name = f"images/{n:05d}.png"
            image, _ = ds[i]
            with atomic_path(out / name) as tmp:
                if not cv2.imwrite(str(tmp) + ".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
                    raise DataError(f"cannot write {out / name}")
                os.replace(str(tmp) + ".png", tmp)
        names.append(name)
    write_json(out / "calib.json", {"dataset": dataset, "root": str(data) if data else None, "split": split,
                                    "seed": seed, "count": len(names), "images": names,
                                    "classes_covered": [ds.info.classes[c] for c in range(k) if covered[c] > 0],
                                    "classes_missing": [ds.info.classes[c] for c in range(k) if covered[c] == 0]})
    with atomic_path(out / LIST_FILE) as tmp:
        tmp.write_text("# calibration images, one a line, relative to this folder\n" + "\n".join(names) + "\n")
    return out
