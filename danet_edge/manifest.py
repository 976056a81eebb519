"""Artifact manifests: the sidecar JSON every artifact carries (``model.onnx`` -> ``model.onnx.json``).

Later stages read the manifest instead of asking the user again: input size, normalisation,
classes, palette, precision. Engines stay plain files (no header, so trtexec and DeepStream load
them); everything about them lives in the sidecar. ONNX graphs also carry the manifest in
``metadata_props['danet_edge_manifest']``.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ManifestError
from .utils import read_json, write_json

__all__ = ["Manifest", "manifest_path", "write_manifest", "read_manifest", "PRECISIONS", "KINDS", "Kind", "Precision",
           "Target", "OutputKind"]

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "manifest") -> "Manifest":
        """Validate and build from untrusted JSON.

        Raises:
            ManifestError: missing fields, wrong types or values out of range.
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
        if not isinstance(m.classes, list) or not m.classes or not all(isinstance(c, str) for c in m.classes):
            raise ManifestError(f"{source}: classes must be a non-empty list of names")
        if len(m.classes) > 255:
            raise ManifestError(f"{source}: {len(m.classes)} classes; at most 255 are supported")
        if (not isinstance(m.palette, list) or len(m.palette) != len(m.classes) or not all(
                isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
                for c in m.palette)):
            raise ManifestError(f"{source}: palette must hold one [r, g, b] (0..255) per class")
        for key in ("mean", "std"):
            v = getattr(m, key)
            if not isinstance(v, list) or len(v) != 3 or not all(isinstance(x, (int, float)) for x in v):
                raise ManifestError(f"{source}: {key} must be three numbers")
        if any(s <= 0 for s in m.std):
            raise ManifestError(f"{source}: std must be positive")
        if not isinstance(m.model, dict):
            raise ManifestError(f"{source}: model must be an object")
        for key in ("input_shape", "output_shape"):
            shape = getattr(m, key)
            if not isinstance(shape, list) or not all(isinstance(d, int) and 0 < d <= 1 << 16 for d in shape):
                raise ManifestError(f"{source}: {key} must be a list of positive integers")
        if m.input_shape and len(m.input_shape) != 4:
            raise ManifestError(f"{source}: input_shape must have 4 dimensions")
        if not isinstance(m.ignore_index, int) or not 0 <= m.ignore_index <= 255:
            raise ManifestError(f"{source}: ignore_index must be an integer in 0..255")
        return m


def manifest_path(artifact: str | os.PathLike[str]) -> Path:
    """The sidecar path of an artifact: ``model.onnx`` -> ``model.onnx.json``."""
    p = Path(artifact)
    return p.with_name(p.name + ".json")


def write_manifest(artifact: str | os.PathLike[str], manifest: Manifest) -> Path:
    """Write the sidecar atomically; returns its path."""
    return write_json(manifest_path(artifact), manifest.to_dict())


def read_manifest(artifact: str | os.PathLike[str]) -> Manifest:
    """Read and validate the sidecar of ``artifact``.

    Raises:
        ManifestError: sidecar missing, not JSON, or invalid.
    """
    path = manifest_path(artifact)
    if not path.is_file():
        raise ManifestError(f"{artifact}: manifest {path.name} not found beside it (export it with danet-edge, "
                            "or copy the .json sidecar along with the model)")
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise ManifestError(str(e)) from None
    return Manifest.from_dict(data, source=str(path))
