"""Artifact manifests: the sidecar JSON every artifact carries (``model.onnx`` -> ``model.onnx.json``).

Later stages read the manifest instead of asking the user again: input size, normalisation,
classes, palette, precision. Engines stay plain files (no header, so trtexec and DeepStream load
them); everything about them lives in the sidecar. ONNX graphs also carry the manifest in
``metadata_props['danet_edge_manifest']``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from .. import __version__
from .errors import ManifestError
from .utils import atomic_path, read_json
from .onnx_meta import embedded_manifest

__all__ = ["Manifest", "manifest_path", "write_manifest", "read_manifest", "manifest_json", "verify_artifact_pair",
           "PAIR_FIELDS", "PRECISIONS", "KINDS", "Kind", "Precision", "Target",
           "OutputKind"]

MANIFEST_FORMAT = "danet-edge-manifest/1"


class _Choice(str, Enum):
    """A closed set of names: compares, hashes, prints and serialises as its value (``"fp16"``), so a typo
    fails where it is read and ``--help`` can list the choices (Python 3.10's substitute for StrEnum)."""

    __str__ = str.__str__
    __format__ = str.__format__

    @classmethod
    def parse(cls, value: Any, field_name: str, source: str = "manifest") -> "_Choice":
        try:
            return cls(value)
        except ValueError:
            raise ManifestError(f"{source}: {field_name} {value!r} is not one of "
                                f"{', '.join(m.value for m in cls)}") from None


class Kind(_Choice):
    CHECKPOINT = "checkpoint"
    ONNX = "onnx"
    ENGINE = "engine"


class Precision(_Choice):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Target(_Choice):
    TENSORRT = "tensorrt"
    CPU = "cpu"


class OutputKind(_Choice):
    LOGITS = "logits"
    LABELS = "labels"


PRECISIONS = tuple(p.value for p in Precision)
KINDS = tuple(k.value for k in Kind)


@dataclass
class Manifest:
    """What an artifact is and how to feed it.

    Attributes:
        kind: ``checkpoint``, ``onnx`` or ``engine``.
        precision: ``fp32``, ``fp16`` or ``int8`` (what the artifact really holds, verified at export).
        model: ``ModelConfig.to_dict()`` of the source model.
        classes: K class names; ``palette``: K ``[r, g, b]`` colours (0..255).
        mean, std: per-channel RGB normalisation applied to ``x / 255``.
        input_name, input_shape, input_dtype: e.g. ``"images"``, ``[1, 3, 360, 480]``, ``"float32"``;
            ``input_dtype == "uint8"`` means fused I/O: ``(N, H, W, 3)`` uint8 RGB, normalised in the graph.
        output_name, output_shape, output_dtype: e.g. ``"logits"``, ``[1, 11, 360, 480]``, ``"float32"``.
        output_kind: ``"logits"`` (N, K, H, W) or ``"labels"`` (N, H, W) class indices (ArgMax in the graph).
        ignore_index: label value that metrics skip (255 or the data set's own).
        opset: ONNX opset (ONNX and engines built from it).
        target: ``"tensorrt"`` or ``"cpu"`` for INT8 graphs, else ``None``.
        calibration: for INT8: method, image count, image list, seed, cache file and graph hash.
        precision_report: node counts per precision, FP32 islands, quantized nodes.
        source_checkpoint_sha256: SHA-256 of the checkpoint it came from.
        tensorrt: for engines: TensorRT version, GPU name, compute capability, build flags.
    """

    kind: Kind
    precision: Precision
    model: dict[str, Any]
    classes: list[str]
    palette: list[list[int]]
    mean: list[float]
    std: list[float]
    input_name: str = "images"
    input_shape: list[int] = field(default_factory=list)
    input_dtype: str = "float32"
    output_name: str = "logits"
    output_shape: list[int] = field(default_factory=list)
    output_dtype: str = "float32"
    output_kind: OutputKind = OutputKind.LOGITS
    ignore_index: int = 255
    opset: int | None = None
    target: Target | None = None
    calibration: dict[str, Any] | None = None
    precision_report: dict[str, Any] | None = None
    source_checkpoint_sha256: str | None = None
    tensorrt: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    toolkit_version: str = __version__
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    format: str = MANIFEST_FORMAT

    def __post_init__(self) -> None:
        """Closed fields become enums here, wherever the manifest is made (JSON, code, ``replace``).

        Raises:
            ManifestError: a kind, precision, target or output kind outside its set.
        """
        self.kind = Kind.parse(self.kind, "kind")
        self.precision = Precision.parse(self.precision, "precision")
        self.output_kind = OutputKind.parse(self.output_kind, "output_kind")
        if self.target is not None:
            self.target = Target.parse(self.target, "target")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        """Static ``(height, width)`` of the input, read from ``input_shape`` (NCHW or fused NHWC)."""
        if len(self.input_shape) != 4:
            raise ManifestError(f"manifest input_shape {self.input_shape} is not 4-D")
        if self.input_dtype == "uint8":
            return int(self.input_shape[1]), int(self.input_shape[2])
        return int(self.input_shape[2]), int(self.input_shape[3])

    @property
    def batch_size(self) -> int:
        return int(self.input_shape[0]) if self.input_shape else 1

    def quantization(self) -> str | None:
        """How an INT8 artifact got its scales: ``"QAT"`` (learned by quantization-aware fine-tuning, ``train --qat``),
        ``"PTQ"`` (calibrated after training); None for other precisions."""
        if self.precision != "int8":
            return None
        cal = self.calibration if isinstance(self.calibration, dict) else {}
        return "QAT" if cal.get("scales") == "learned" or "qat" in cal else "PTQ"

    def attention(self) -> dict[str, Any] | None:
        """PAM's form, chunks and memory as export recorded them (``extra["attention"]``, ``extra["memory"]``),
        with ``fused`` (True / False / "unknown", from ``build``) and ``engine_memory`` (the engine's device memory
        beside the estimate, ``build``'s ``tensorrt.memory``) for an engine; None without a record."""
        att = self.extra.get("attention")
        if not isinstance(att, dict):
            return None
        rec = dict(att)
        if isinstance(self.extra.get("memory"), dict):
            rec["memory"] = self.extra["memory"]
        if self.kind == "engine":
            rec["fused"] = self.tensorrt.get("attention_fused", "unknown") if isinstance(self.tensorrt, dict) \
                else "unknown"
            if isinstance(self.tensorrt, dict) and isinstance(self.tensorrt.get("memory"), dict):
                rec["engine_memory"] = self.tensorrt["memory"]  # device memory read back beside the estimate
        return rec

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "manifest") -> "Manifest":
        """Validate and build from untrusted JSON: every field once, for type and range.

        ``model`` an object (its ``num_classes``, when present, equal to the class count); ``classes`` 1..255
        names and ``palette`` one ``[r, g, b]`` of integers 0..255 per class; ``mean`` / ``std`` three finite
        numbers, std > 0; names non-empty; dtypes from :data:`INPUT_DTYPES` / :data:`OUTPUT_DTYPES`;
        ``input_shape`` ``(N, 3, H, W)`` (``(N, H, W, 3)`` for uint8) with N in 1..:data:`MAX_BATCH` and H, W
        in 1..:data:`MAX_IMAGE_SIDE`; ``output_shape`` 4-D with K channels for logits, 3-D for labels;
        ``ignore_index`` 0..255; calibration, precision_report, tensorrt, extra objects; ``format`` this version's.

        Args:
            data: the parsed JSON. source: named at the start of every error (the sidecar's path).

        Raises:
            ManifestError: a missing field, a wrong type or a value out of range: one line naming the field.
        """
        if not isinstance(data, dict):
            raise ManifestError(f"{source}: not a JSON object")
        names = {f.name for f in fields(cls)}
        required = ("kind", "precision", "model", "classes", "palette", "mean", "std")
        for key in required:
            if key not in data:
                raise ManifestError(f"{source}: field {key!r} is missing")
        try:
            m = cls(**{k: v for k, v in data.items() if k in names})
        except ManifestError as e:
            raise ManifestError(f"{source}: {str(e).split(': ', 1)[-1]}") from None
        except TypeError as e:  # an unhashable value where a name belongs
            raise ManifestError(f"{source}: {e}") from None
        _validate(m, source)
        return m


MAX_IMAGE_SIDE = 8192  # pixels per side of a model input (PAM's N^2 map is far beyond any device long before)
MAX_BATCH = 1024
INPUT_DTYPES = ("float32", "float16", "uint8")
OUTPUT_DTYPES = ("float32", "float16", "int32", "int64")
_OPTIONAL_OBJECTS = ("calibration", "precision_report", "tensorrt")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _validate(m: "Manifest", source: str) -> None:
    """Every field's type and range, each failure one line naming the field (see :meth:`Manifest.from_dict`)."""

    def bad(msg: str) -> ManifestError:
        return ManifestError(f"{source}: {msg}")

    if not isinstance(m.format, str) or m.format != MANIFEST_FORMAT:
        raise bad(f"format {m.format!r} is not {MANIFEST_FORMAT!r} (made by another danet-edge version: re-export)")
    if not isinstance(m.model, dict):
        raise bad(f"model must be an object (the model config), got {type(m.model).__name__}")
    if not isinstance(m.classes, list) or not m.classes or not all(isinstance(c, str) for c in m.classes):
        raise bad("classes must be a non-empty list of names")
    k = len(m.classes)
    if k > 255:
        raise bad(f"{k} classes; at most 255 are supported")
    if not isinstance(m.palette, list) or len(m.palette) != k:
        n = len(m.palette) if isinstance(m.palette, list) else type(m.palette).__name__
        raise bad(f"palette must hold one [r, g, b] colour per class ({k}), got {n}")
    for i, c in enumerate(m.palette):
        if not (isinstance(c, list) and len(c) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in c)):
            raise bad(f"palette[{i}] must be [r, g, b] with integers 0..255, got {c!r}"[:300])
    for key in ("mean", "std"):
        v = getattr(m, key)
        if not isinstance(v, list) or len(v) != 3 or not all(_is_finite(x) for x in v):
            raise bad(f"{key} must be three finite numbers (R, G, B), got {v!r}"[:300])
    if any(s <= 0 for s in m.std):
        raise bad(f"std must be positive (the normalisation divides by it), got {m.std}")
    n_model = m.model.get("num_classes")
    if n_model is not None and (not _is_int(n_model) or n_model != k):
        raise bad(f"model.num_classes is {n_model!r} but classes lists {k} names")
    for key in ("input_name", "output_name"):
        if not isinstance(getattr(m, key), str) or not getattr(m, key):
            raise bad(f"{key} must be a non-empty name")
    if m.input_dtype not in INPUT_DTYPES:
        raise bad(f"input_dtype {m.input_dtype!r} is not one of {', '.join(INPUT_DTYPES)}"[:300])
    if m.output_dtype not in OUTPUT_DTYPES:
        raise bad(f"output_dtype {m.output_dtype!r} is not one of {', '.join(OUTPUT_DTYPES)}"[:300])
    for key in ("input_shape", "output_shape"):
        shape = getattr(m, key)
        if not isinstance(shape, list) or not all(_is_int(d) and d > 0 for d in shape):
            raise bad(f"{key} must be a list of positive integers, got {shape!r}"[:300])
    if m.input_shape:
        if len(m.input_shape) != 4:
            raise bad(f"input_shape must have 4 dimensions, got {m.input_shape}")
        fused = m.input_dtype == "uint8"
        channels = m.input_shape[3] if fused else m.input_shape[1]
        if channels != 3:
            layout = "(N, H, W, 3) for uint8 input" if fused else "(N, 3, H, W)"
            raise bad(f"input_shape {m.input_shape} is not {layout}")
        if not 1 <= m.input_shape[0] <= MAX_BATCH:
            raise bad(f"input_shape batch {m.input_shape[0]} is outside 1..{MAX_BATCH}")
        h, w = m.image_size
        if max(h, w) > MAX_IMAGE_SIDE:
            raise bad(f"image size {h}x{w} (input_shape) is outside 1..{MAX_IMAGE_SIDE} per side")
    if m.output_shape:
        if max(m.output_shape) > 1 << 16:
            raise bad(f"output_shape {m.output_shape} has a dimension above {1 << 16}")
        rank = 3 if m.output_kind == "labels" else 4
        if len(m.output_shape) != rank:
            raise bad(f"output_kind {str(m.output_kind)!r} needs a {rank}-D output_shape, got {m.output_shape}")
        if rank == 4 and m.output_shape[1] != k:
            raise bad(f"output_shape {m.output_shape} has {m.output_shape[1]} class channels but classes lists "
                      f"{k} names")
    if not _is_int(m.ignore_index) or not 0 <= m.ignore_index <= 255:
        raise bad(f"ignore_index must be an integer in 0..255, got {m.ignore_index!r}"[:300])
    if m.opset is not None and not (_is_int(m.opset) and 1 <= m.opset <= 100):
        raise bad(f"opset must be an integer opset version, got {m.opset!r}"[:300])
    for key in _OPTIONAL_OBJECTS:
        if getattr(m, key) is not None and not isinstance(getattr(m, key), dict):
            raise bad(f"{key} must be an object or null")
    if not isinstance(m.extra, dict):
        raise bad("extra must be an object")
    for key in ("toolkit_version", "created"):
        if not isinstance(getattr(m, key), str):
            raise bad(f"{key} must be a string")
    if m.source_checkpoint_sha256 is not None and not isinstance(m.source_checkpoint_sha256, str):
        raise bad("source_checkpoint_sha256 must be a string or null")


def manifest_path(artifact: str | os.PathLike[str]) -> Path:
    """The sidecar path of an artifact: ``model.onnx`` -> ``model.onnx.json``."""
    p = Path(artifact)
    return p.with_name(p.name + ".json")


def manifest_json(manifest: Manifest, source: str = "manifest") -> str:
    """The manifest as the JSON text every writer stores (sidecar, ONNX metadata), validated first by the same
    rules :func:`read_manifest` applies: nothing is written that ``infer`` would then refuse.

    Raises:
        ManifestError: a field of the wrong type or out of range (named, one line).
    """
    data = manifest.to_dict()
    try:
        text = json.dumps(data, indent=2, allow_nan=True) + "\n"
        Manifest.from_dict(json.loads(text), source=source)
    except (TypeError, ValueError) as e:  # a value JSON cannot hold (a tensor, a numpy array...)
        raise ManifestError(f"{source}: not JSON-serialisable ({e})") from None
    return text


def write_manifest(artifact: str | os.PathLike[str], manifest: Manifest) -> Path:
    """Validate (:func:`manifest_json`) and write the sidecar of ``artifact`` atomically; returns its path.

    Raises:
        ManifestError: the manifest breaks a rule of :func:`read_manifest` (nothing is written then).
    """
    path = manifest_path(artifact)
    text = manifest_json(manifest, source=str(path))
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


# ------------------------------------------------------------------ the artifact and its sidecar agree
PAIR_FIELDS = ("kind", "precision", "mean", "std", "classes", "input_name", "input_shape", "input_dtype",
               "output_name", "output_shape", "output_dtype", "output_kind")
"""The fields that decide how an artifact is fed and read (image size is ``input_shape``): a sidecar that
differs from the manifest embedded in its ONNX graph on one of them is refused."""


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if _is_finite(a) and _is_finite(b) and (isinstance(a, float) or isinstance(b, float)):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
    return a == b


_HASHES: dict[tuple[str, int, int, int], str] = {}


def _engine_sha256(path: Path, st: os.stat_result) -> str:
    """SHA-256 of an engine file, remembered per (path, size, mtime, inode): measured 0.06 s per 100 MiB here
    (hashlib, OpenSSL), small beside TensorRT's deserialisation of the same bytes."""
    from .utils import sha256_file

    if st.st_size < 1 << 24:  # small: hash again (a rewrite within one timestamp tick keeps mtime_ns)
        return sha256_file(path)
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def verify_artifact_pair(artifact: str | os.PathLike[str], manifest: Manifest) -> None:
    """Refuse an artifact whose sidecar belongs to another version of it.

    Writers replace a graph and its sidecar by two renames (``export._finalize``: graph, then sidecar;
    ``engine.build_engine``: sidecar, then engine), and a kill between the two leaves a new file beside an old
    sidecar: with equal shapes it would run with the old normalisation and exit 0. Renames cannot close that
    window, so every reader closes it here instead, by detection:

    * ONNX graphs carry their own manifest (:func:`embedded_manifest`): the sidecar must agree with it on
      :data:`PAIR_FIELDS`. A graph without one (made by another tool) is trusted to its sidecar.
    * engines are plain files (trtexec and DeepStream load them): ``build`` records their byte size and
      SHA-256 in ``tensorrt.engine_bytes`` / ``tensorrt.engine_sha256``; both must be there and match (a
      sidecar without them, written by hand or by a danet-edge before that record, is refused: rebuild).

    Args:
        artifact: the ``.onnx`` / ``.engine`` / ``.plan`` file (a missing file is left to its loader).
        manifest: its sidecar, as read.

    Raises:
        ManifestError: one line, e.g. ``model.onnx and model.onnx.json disagree on std (...): re-export``.
    """
    path = Path(artifact)
    side = manifest_path(path).name
    if manifest.kind == Kind.ONNX:
        inside = embedded_manifest(path)
        if inside is None:
            return
        for key in PAIR_FIELDS:
            if key in inside and not _same(inside[key], getattr(manifest, key)):
                graph_v, side_v = inside[key], getattr(manifest, key)
                raise ManifestError(f"{path} and {side} disagree on {key} (graph {str(graph_v)[:80]}, sidecar "
                                    f"{str(side_v)[:80]}): the graph was replaced without its sidecar; re-export")
    elif manifest.kind == Kind.ENGINE:
        trt = manifest.tensorrt or {}
        want_size, want_sha = trt.get("engine_bytes"), trt.get("engine_sha256")
        try:
            st = path.stat()
        except OSError:
            return
        if not (_is_int(want_size) and isinstance(want_sha, str)):
            raise ManifestError(f"{side} records no engine size and SHA-256 (tensorrt.engine_bytes / engine_sha256), "
                                f"so nothing ties it to {path.name}: rebuild the engine (danet-edge build)")
        if st.st_size != want_size:
            raise ManifestError(f"{path} and {side} disagree: the engine has {st.st_size} bytes, its sidecar "
                                f"recorded {want_size} at build: rebuild it (danet-edge build)")
        if _engine_sha256(path, st) != want_sha:
            raise ManifestError(f"{path} and {side} disagree: the engine's SHA-256 is not the one its sidecar "
                                "recorded at build: rebuild it (danet-edge build)")


def read_manifest(artifact: str | os.PathLike[str]) -> Manifest:
    """Read and validate the sidecar of ``artifact``, and check that it belongs to this very file
    (:func:`verify_artifact_pair`: the ONNX graph's embedded manifest, the engine's recorded size and hash).

    Every reader goes through here (backends, ``build``, ``bench``), so the check has one home.

    Raises:
        ManifestError: sidecar missing, not JSON (or nested too deeply), invalid (the field is named), or
            written for another version of the artifact.
    """
    path = manifest_path(artifact)
    if not path.is_file():
        raise ManifestError(f"{artifact}: manifest {path.name} not found beside it (export it with danet-edge, "
                            "or copy the .json sidecar along with the model)")
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise ManifestError(str(e)) from None
    manifest = Manifest.from_dict(data, source=str(path))
    verify_artifact_pair(artifact, manifest)
    return manifest
