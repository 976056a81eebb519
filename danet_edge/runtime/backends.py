"""Inference backends: one protocol, one suffix table, three runners (PyTorch, ONNX Runtime, TensorRT).

Every backend is a context manager with a ``manifest`` and one method::

    predict(images: (N, h, w, 3) uint8 RGB at manifest.image_size) -> Prediction

Normalisation (``preprocess.normalize``) is the backend's job, skipped when the artifact has
fused I/O (``manifest.input_dtype == "uint8"``). Backends with a static batch pad a short batch
and split a long one, so any ``N >= 1`` works everywhere.

Choose one with :func:`open_backend` (suffix table :data:`BACKENDS`, ``backend=`` override).
Frames of any size go through :func:`segment_frames` (resize in, nearest-neighbour resize out).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError, DataError, ManifestError
from ..manifest import Manifest, read_manifest
from ..preprocess import normalize, resize_image, resize_labels

__all__ = ["Prediction", "Backend", "BACKENDS", "BACKEND_NAMES", "open_backend", "backend_for",
           "TorchBackend", "OnnxRuntimeBackend", "TensorRTBackend", "segment_frames", "fit_frames",
           "Placement", "ORT_PROVIDERS"]


@dataclass
class Prediction:
    """Result of one ``predict`` call.

    Attributes:
        labels: ``(N, h, w)`` int64 class indices.
        logits: ``(N, K, h, w)`` float32, or None when the artifact outputs labels (ArgMax in the graph).
    """

    labels: np.ndarray
    logits: np.ndarray | None = None


@runtime_checkable
class Backend(Protocol):
    """What ``checks``, ``bench`` and the video pipeline see of a model (see DESIGN.md)."""

    manifest: Manifest
    name: str

    def predict(self, images: np.ndarray) -> Prediction: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Backend": ...

    def __exit__(self, *exc: object) -> None: ...


class _BaseBackend:
    """Shared input checks, batching and context-manager plumbing.

    Subclasses set ``manifest`` and ``static_batch`` and implement ``_forward(images)``, which takes
    exactly ``manifest.batch_size`` images when ``static_batch`` is true (else any N) and returns
    ``(labels, logits | None)``.
    """

    name = "base"
    manifest: Manifest
    static_batch = True

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release sessions, engines and device memory (idempotent)."""

    def _forward(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:  # pragma: no cover
        raise NotImplementedError

    def _model_input(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC as is for fused graphs, else normalised NCHW float32."""
        if self.manifest.input_dtype == "uint8":
            return np.ascontiguousarray(images)
        return normalize(images, self.manifest.mean, self.manifest.std)

    def predict(self, images: np.ndarray) -> Prediction:
        """Segment ``images: (N, h, w, 3) uint8 RGB`` at ``manifest.image_size``.

        Returns:
            Prediction with ``labels (N, h, w) int64`` and ``logits (N, K, h, w) float32`` or None.

        Raises:
            DataError: wrong shape or dtype.
        """
        images = np.asarray(images)
        h, w = self.manifest.image_size
        if images.ndim != 4 or images.shape[1:] != (h, w, 3) or images.dtype != np.uint8 or len(images) == 0:
            raise DataError(f"{self.name}: expected images (N, {h}, {w}, 3) uint8 RGB, got {images.shape} "
                            f"{images.dtype} (resize frames with segment_frames)")
        n = len(images)
        b = self.manifest.batch_size
        if not self.static_batch or n == b:
            labels, logits = self._forward(images)
            return Prediction(labels.astype(np.int64, copy=False), logits)
        labels_parts, logit_parts = [], []
        for start in range(0, n, b):
            chunk = images[start:start + b]
            k = len(chunk)
            if k < b:  # pad the last batch by repeating its last image
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - k, axis=0)])
            lab, log = self._forward(chunk)
            labels_parts.append(lab[:k])
            if log is not None:
                logit_parts.append(log[:k])
        labels = np.concatenate(labels_parts).astype(np.int64, copy=False)
        return Prediction(labels, np.concatenate(logit_parts) if logit_parts else None)


# ---------------------------------------------------------------- PyTorch

class TorchBackend(_BaseBackend):
    """A danet-edge (or official DANet) checkpoint run in PyTorch eager mode, FP32.

    Args:
        path: ``.pt`` / ``.pth`` checkpoint, loaded with ``checkpoint.load_model`` (weights_only=True).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when available, else CPU.
        image_size: ``(h, w)`` input size; default the checkpoint's ``data.image_size`` (else 512x1024).
        batch: batch size recorded in the manifest (PyTorch itself takes any N).

    Raises:
        CheckpointError: unreadable or unsafe checkpoint. ConfigError: unknown or unavailable device.
    """

    name = "torch"
    static_batch = False

    def __init__(self, path: str | os.PathLike[str], device: str | None = None,
                 image_size: tuple[int, int] | None = None, batch: int | None = None) -> None:
        import torch

        from ..checkpoint import checkpoint_manifest, load_model

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"unknown torch device {device!r} ({e})") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU here")
        loaded = load_model(path)
        self.model = loaded.model.to(self.device).eval()
        self.manifest = checkpoint_manifest(loaded, image_size=image_size, batch=batch or 1)
        self._torch = torch

    def _forward(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        torch = self._torch
        x = torch.from_numpy(self._model_input(images)).to(self.device, non_blocking=True)
        with torch.inference_mode():
            logits = self.model(x)
            labels = logits.argmax(1)
        return labels.cpu().numpy(), logits.float().cpu().numpy()

    def close(self) -> None:
        self.model = None


# ---------------------------------------------------------------- ONNX Runtime

#: Execution providers in order of preference; short names accepted on the command line.
ORT_PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
                 "cpu": "CPUExecutionProvider"}
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32}
_MANIFEST_DTYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "uint8": "tensor(uint8)"}


def _resolve_providers(providers: Sequence[str] | None) -> list[str]:
    """User list (short or full names) checked against what this onnxruntime build has; default:
    TensorRT, CUDA, CPU, keeping only those available.

    Raises:
        ConfigError: unknown provider, or one this onnxruntime build does not have.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    if not providers:
        return [p for p in ORT_PROVIDERS.values() if p in available] or available
    every = set(ort.get_all_providers())
    out = []
    for p in providers:
        full = ORT_PROVIDERS.get(p.lower(), p)
        if full not in every:
            raise ConfigError(f"unknown execution provider {p!r}: use one of {', '.join(ORT_PROVIDERS)} "
                              f"or a full name such as {', '.join(ORT_PROVIDERS.values())}")
        if full not in available:
            raise ConfigError(f"execution provider {full} is not available in this onnxruntime build "
                              f"(available: {', '.join(available)})")
        out.append(full)
    return out


class OnnxRuntimeBackend(_BaseBackend):
    """An ONNX graph (FP32, FP16 or INT8 Q/DQ) run with ONNX Runtime.

    The sidecar manifest (``model.onnx.json``) says how to feed it; the graph's input and output
    names, shapes and element types are checked against it at open.

    Args:
        path: ``.onnx`` file with its ``.onnx.json`` manifest.
        providers: execution providers (``["cuda", "cpu"]`` or full names); default TensorRT, CUDA,
            CPU, those available.
        threads: ``intra_op_num_threads`` (0 = onnxruntime's default).

    Raises:
        ManifestError: manifest missing, invalid, or not matching the graph.
        ConfigError: unknown or unavailable provider. DataError: the file is not a readable ONNX graph.
    """

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], providers: Sequence[str] | None = None,
                 threads: int = 0) -> None:
        import onnxruntime as ort

        path = Path(path)
        self.manifest = read_manifest(path)
        self.providers = _resolve_providers(providers)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=self.providers)
        except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph / RuntimeException types
            raise DataError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:300]})") from None
        self._check_graph(path)

    def _check_graph(self, path: Path) -> None:
        m = self.manifest
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        if len(ins) != 1 or len(outs) != 1:
            raise ManifestError(f"{path}: graph has {len(ins)} inputs and {len(outs)} outputs, expected 1 and 1")
        for what, node, name, shape in (("input", ins[0], m.input_name, m.input_shape),
                                        ("output", outs[0], m.output_name, m.output_shape)):
            if node.name != name:
                raise ManifestError(f"{path}: graph {what} is named {node.name!r}, the manifest says {name!r}")
            if list(node.shape) != list(shape):
                raise ManifestError(f"{path}: graph {what} {node.name!r} has shape {node.shape}, "
                                    f"the manifest says {shape} (static shapes only)")
        want = _MANIFEST_DTYPES.get(m.input_dtype)
        if want is not None and ins[0].type != want:
            raise ManifestError(f"{path}: graph input is {ins[0].type}, the manifest says {m.input_dtype}")
        expected_rank = 3 if m.output_kind == "labels" else 4
        if len(m.output_shape) != expected_rank:
            raise ManifestError(f"{path}: output_kind {m.output_kind!r} needs a {expected_rank}-D output, "
                                f"the manifest says {m.output_shape}")
        self._in_dtype = _ORT_TYPES.get(ins[0].type, np.float32)

    def _forward(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = self._model_input(images)
        if x.dtype != self._in_dtype:
            x = x.astype(self._in_dtype)
        (out,) = self.session.run([self.manifest.output_name], {self.manifest.input_name: x})
        if self.manifest.output_kind == "labels":
            return out.astype(np.int64, copy=False), None
        logits = out.astype(np.float32, copy=False)
        return logits.argmax(1), logits

    def close(self) -> None:
        self.session = None


# ---------------------------------------------------------------- TensorRT

class TensorRTBackend(_BaseBackend):
    """A serialized TensorRT engine (``.engine`` / ``.plan``) with its ``.json`` manifest.

    Implementation in :mod:`danet_edge.runtime.trt_runner` (imported lazily: tensorrt and a CUDA
    API are needed only here).

    Raises:
        MissingDependencyError: tensorrt or a CUDA API is not installed.
        EngineError: engine built for another GPU or TensorRT version, or not deserializable.
        ManifestError: manifest missing or not matching the engine's I/O tensors.
    """

    name = "tensorrt"

    def __init__(self, path: str | os.PathLike[str], cuda_backend: str | None = None) -> None:
        from .trt_runner import TrtRunner

        self.manifest = read_manifest(path)
        self._runner = TrtRunner(Path(path), self.manifest, cuda_backend=cuda_backend)

    def _forward(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = self._runner.infer(self._model_input(images))
        if self.manifest.output_kind == "labels":
            return out.astype(np.int64, copy=False), None
        logits = out.astype(np.float32, copy=False)
        return logits.argmax(1), logits

    def close(self) -> None:
        if getattr(self, "_runner", None) is not None:
            self._runner.close()
            self._runner = None


# ---------------------------------------------------------------- suffix table

#: Exact ``Path.suffix`` -> backend name; the one table format choice reads.
BACKENDS: dict[str, str] = {".pt": "torch", ".pth": "torch", ".onnx": "onnxruntime",
                            ".engine": "tensorrt", ".plan": "tensorrt"}
BACKEND_NAMES: dict[str, type[_BaseBackend]] = {"torch": TorchBackend, "onnxruntime": OnnxRuntimeBackend,
                                                "tensorrt": TensorRTBackend}


def backend_for(path: str | os.PathLike[str], backend: str | None = None) -> str:
    """The backend name for ``path`` (exact suffix) or the ``backend`` override.

    Raises:
        ConfigError: unknown suffix or unknown backend name (lists the valid ones).
    """
    if backend is not None:
        if backend not in BACKEND_NAMES:
            raise ConfigError(f"unknown backend {backend!r}: choose one of {', '.join(BACKEND_NAMES)}")
        return backend
    suffix = Path(path).suffix
    if suffix not in BACKENDS:
        valid = ", ".join(f"{s} ({b})" for s, b in BACKENDS.items())
        raise ConfigError(f"{path}: unsupported model suffix {suffix or '(none)'!r}; valid: {valid}")
    return BACKENDS[suffix]


def open_backend(path: str | os.PathLike[str], backend: str | None = None, providers: Sequence[str] | None = None,
                 device: str | None = None, batch: int | None = None,
                 image_size: tuple[int, int] | None = None, **kwargs: Any) -> _BaseBackend:
    """Open the model at ``path`` with the backend its suffix names (or ``backend``).

    Args:
        providers: ONNX Runtime execution providers (onnxruntime only).
        device: torch device (torch only).
        batch, image_size: manifest batch and input size for checkpoints (torch only); for ONNX and
            engines they are fixed by the artifact, and a different value is refused.

    Raises:
        DataError: the file does not exist. ConfigError: unknown suffix/backend, options that do not
        apply. Plus what each backend raises (ManifestError, EngineError, MissingDependencyError...).
    """
    path = Path(path)
    name = backend_for(path, backend)
    if not path.is_file():
        raise DataError(f"{path}: model file not found")
    if providers and name != "onnxruntime":
        raise ConfigError(f"--providers applies to the onnxruntime backend only, not {name}")
    if device is not None and name != "torch":
        raise ConfigError(f"device applies to the torch backend only, not {name}")
    if name == "torch":
        return TorchBackend(path, device=device, image_size=image_size, batch=batch)
    if image_size is not None:
        raise ConfigError(f"{path}: the input size of a {name} model is fixed by the artifact; image_size "
                          "applies to checkpoints only")
    b = OnnxRuntimeBackend(path, providers=providers, **kwargs) if name == "onnxruntime" \
        else TensorRTBackend(path, **kwargs)
    if batch is not None and batch != b.manifest.batch_size:
        b.close()
        raise ConfigError(f"{path}: the artifact has a static batch of {b.manifest.batch_size}, "
                          f"batch {batch} was asked for (re-export with --batch {batch})")
    return b


# ---------------------------------------------------------------- frames of any size

@dataclass(frozen=True)
class Placement:
    """Where a frame sits inside the model input: ``top, left, height, width`` in model pixels."""

    top: int
    left: int
    height: int
    width: int


def fit_frames(frame: np.ndarray, size: tuple[int, int], letterbox: bool = False,
               pad_value: int = 114) -> tuple[np.ndarray, Placement]:
    """Bring ``frame: (H, W, 3) uint8 RGB`` to the model size ``(h, w)``.

    Stretch resize by default (as in training); with ``letterbox`` keep the aspect ratio and pad
    with grey. Returns the model image ``(h, w, 3)`` and the frame's placement inside it.
    """
    h, w = size
    if not letterbox or frame.shape[:2] == (h, w):
        return resize_image(frame, size), Placement(0, 0, h, w)
    fh, fw = frame.shape[:2]
    scale = min(h / fh, w / fw)
    nh, nw = max(1, round(fh * scale)), max(1, round(fw * scale))
    out = np.full((h, w, 3), pad_value, np.uint8)
    top, left = (h - nh) // 2, (w - nw) // 2
    out[top:top + nh, left:left + nw] = resize_image(frame, (nh, nw))
    return out, Placement(top, left, nh, nw)


def restore_labels(labels: np.ndarray, placement: Placement, frame_size: tuple[int, int]) -> np.ndarray:
    """Model-size class map ``(h, w)`` -> frame-size ``(H, W)``: crop the letterbox, nearest resize."""
    p = placement
    crop = labels[p.top:p.top + p.height, p.left:p.left + p.width]
    return resize_labels(crop, frame_size)


def segment_frames(backend: _BaseBackend, frames: Sequence[np.ndarray], letterbox: bool = False) -> list[np.ndarray]:
    """Class maps for frames of any size.

    Args:
        frames: ``(H_i, W_i, 3) uint8 RGB`` each, sizes may differ.
        letterbox: keep the aspect ratio (pad) instead of stretching.

    Returns:
        One ``(H_i, W_i)`` int64 class map per frame. Frames go through the backend in batches of
        ``manifest.batch_size`` (the last one padded).
    """
    size = backend.manifest.image_size
    b = max(1, backend.manifest.batch_size)
    out: list[np.ndarray] = []
    for start in range(0, len(frames), b):
        chunk = frames[start:start + b]
        fitted = [fit_frames(np.asarray(f), size, letterbox) for f in chunk]
        pred = backend.predict(np.stack([img for img, _ in fitted]))
        out.extend(restore_labels(lab, pl, np.asarray(f).shape[:2])
                   for lab, (_, pl), f in zip(pred.labels, fitted, chunk))
    return out
