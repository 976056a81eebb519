"""Inference backends: one protocol, one table of backends, one way to open them.

Every backend is a context manager with a ``manifest``, a ``provider`` (what it really runs on, e.g.
``"ONNX Runtime 1.31.1 CPUExecutionProvider"``) and one method::

    predict(images: (N, h, w, 3) uint8 RGB at manifest.image_size) -> Prediction

Normalisation (``preprocess.normalize``) is the backend's job, skipped when the artifact has fused
I/O (``manifest.input_dtype == "uint8"``). Backends with a static batch pad a short batch and split a
long one (``frames.static_batches``), so any ``N >= 1`` works everywhere.

The table :data:`BACKEND_TABLE` has one row per backend: its name, the exact ``Path.suffix`` values
it opens, where its class lives (imported only when used: importing this module pulls in neither
torch, onnxruntime nor tensorrt) and the options it accepts. :func:`open_backend` picks the row,
refuses options the row does not list, and opens the model; ``checks``, ``bench`` and the pipeline
never look at suffixes or backend names. A new backend is one file plus one :func:`register_backend`
call (Ultralytics' export-formats table is the model for this).
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np

from ..core.errors import ConfigError, DataError
from ..data.frames import Placement, fit_frame, restore_labels, static_batches
from ..core.manifest import Manifest
from ..data.preprocess import normalize

__all__ = ["Prediction", "Backend", "BackendSpec", "BACKEND_TABLE", "BACKENDS", "register_backend", "backend_for",
           "backend_spec", "check_backend_opens", "open_backend", "segment_frames", "restore_labels", "Placement",
           "TorchBackend", "OnnxRuntimeBackend", "TensorRTBackend"]



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
    """What ``check``, ``bench`` and the video pipeline see of a model (see DESIGN.md): its manifest, its name and
    what it runs on (``provider``), ``predict``, and the model's own share of the last ``predict`` in ms
    (``compute_ms``; how it is measured: ``compute_timing``, None when it is not; :class:`_BaseBackend`)."""

    manifest: Manifest
    name: str
    provider: str
    compute_ms: float
    compute_timing: str | None

    def predict(self, images: np.ndarray) -> Prediction: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Backend": ...

    def __exit__(self, *exc: object) -> None: ...


class _BaseBackend:
    """Shared input checks, batching, compute timing and context-manager plumbing.

    Subclasses set ``manifest``, ``provider`` and ``static_batch`` and implement ``_forward(images)``,
    which takes exactly ``manifest.batch_size`` images when ``static_batch`` is true (else any N) and
    returns ``(labels, logits | None)``.

    **Compute time.** :meth:`predict` is the end-to-end host call (uint8 frames in, labels out). Inside it,
    a subclass times the model alone, the graph or engine without normalisation, argmax or host work,
    by running it through :meth:`_timed` (host-synchronous runtimes, or with a ``sync`` for CUDA) or
    by adding a device-timed figure to :attr:`compute_ms` (TensorRT: CUDA events), and states how in
    :attr:`compute_timing`. ``bench`` reports both; a backend that leaves ``compute_timing`` None has
    no compute figure.
    """

    name = "base"
    provider = "?"
    manifest: Manifest
    static_batch = True
    #: How :attr:`compute_ms` is measured, one line (a bench entry's ``compute_timing``); None: not measured.
    compute_timing: str | None = None
    #: The model alone during the last :meth:`predict` call, in ms (summed over the static-batch chunks).
    compute_ms: float = 0.0

    def _timed(self, fn: Callable[..., Any], *args: Any, sync: Callable[[], Any] | None = None) -> Any:
        """``fn(*args)``, its wall time (``time.perf_counter``) in ms added to :attr:`compute_ms`; ``sync``
        (e.g. ``torch.cuda.synchronize``) is called before the clock starts and before it stops."""
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        out = fn(*args)
        if sync is not None:
            sync()
        self.compute_ms += (time.perf_counter() - t0) * 1e3
        return out

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
            Prediction with ``labels (N, h, w) int64`` and ``logits (N, K, h, w) float32`` or None;
            :attr:`compute_ms` then holds the model's own share of this call (ms).

        Raises:
            DataError: wrong shape or dtype.
        """
        images = np.asarray(images)
        h, w = self.manifest.image_size
        if images.ndim != 4 or images.shape[1:] != (h, w, 3) or images.dtype != np.uint8 or len(images) == 0:
            raise DataError(f"{self.name}: expected images (N, {h}, {w}, 3) uint8 RGB, got {images.shape} "
                            f"{images.dtype} (resize frames with segment_frames)")
        b = self.manifest.batch_size
        self.compute_ms = 0.0
        if not self.static_batch or len(images) == b:
            labels, logits = self._forward(images)
            return Prediction(labels.astype(np.int64, copy=False), logits)
        labels_parts, logit_parts = [], []
        for chunk, k in static_batches(images, b):
            lab, log = self._forward(chunk)
            labels_parts.append(lab[:k])
            if log is not None:
                logit_parts.append(log[:k])
        labels = np.concatenate(labels_parts).astype(np.int64, copy=False)
        return Prediction(labels, np.concatenate(logit_parts) if logit_parts else None)


# ---------------------------------------------------------------- the table

@dataclass(frozen=True)
class BackendSpec:
    """One row of the backend table.

    Attributes:
        name: the backend's name (``--backend`` value).
        suffixes: exact ``Path.suffix`` values it opens by default.
        loader: ``"module:Class"`` imported when the backend is used, or the class itself.
        options: keyword options its constructor accepts (anything else is refused by name); ``batch``
            listed means the backend takes any batch (else the artifact's static batch is checked).
        help: one line for ``--help`` and error messages.
        also_opens: suffixes of other rows' artifacts it runs when named with ``--backend`` (the OpenVINO rows:
            ``.onnx``); :func:`check_backend_opens` refuses the rest.
    """

    name: str
    suffixes: tuple[str, ...]
    loader: str | type
    options: tuple[str, ...] = ()
    help: str = ""
    also_opens: tuple[str, ...] = ()

    def load(self) -> type:
        if not isinstance(self.loader, str):
            return self.loader
        module, _, cls = self.loader.partition(":")
        return getattr(importlib.import_module(module), cls)


BACKEND_TABLE: dict[str, BackendSpec] = {}


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Add a row (or replace the row of the same name).

    Raises:
        ConfigError: a suffix already belongs to another backend.
    """
    for other in BACKEND_TABLE.values():
        clash = set(other.suffixes) & set(spec.suffixes)
        if other.name != spec.name and clash:
            raise ConfigError(f"suffix {sorted(clash)} already opens with the {other.name} backend")
    BACKEND_TABLE[spec.name] = spec
    return spec


register_backend(BackendSpec("torch", (".pt", ".pth"), "danet_edge.runtime.torch_backend:TorchBackend",
                             ("device", "image_size", "batch", "qat_float"), "PyTorch eager FP32 (checkpoints)"))
register_backend(BackendSpec("onnxruntime", (".onnx",), "danet_edge.runtime.ort_backend:OnnxRuntimeBackend",
                             ("providers", "threads"), "ONNX Runtime (FP32, FP16, INT8 Q/DQ graphs)"))
register_backend(BackendSpec("onnxruntime-fused-attention", (),
                             "danet_edge.runtime.ort_backend:OnnxRuntimeFusedAttentionBackend", ("providers", "threads"),
                             "ONNX Runtime, PAM computed as TensorRT's fused attention kernel does (modelled)", (".onnx",)))
register_backend(BackendSpec("openvino", (), "danet_edge.runtime.openvino_backend:OpenVinoBackend",
                             ("threads", "inference_precision"),
                             "OpenVINO on the CPU (the same .onnx graphs; --backend openvino)", (".onnx",)))
register_backend(BackendSpec("openvino-bf16", (), "danet_edge.runtime.openvino_backend:OpenVinoBf16Backend",
                             ("threads",), "OpenVINO on the CPU, bf16 outside the INT8 part (AVX-512 BF16 / AMX)",
                             (".onnx",)))
register_backend(BackendSpec("tensorrt", (".engine", ".plan"), "danet_edge.runtime.trt_backend:TensorRTBackend",
                             ("cuda_backend",), "TensorRT engine (built on this device)"))


class _SuffixView(Mapping):
    """``suffix -> backend name``, read live from the table."""

    def _items(self) -> dict[str, str]:
        return {s: spec.name for spec in BACKEND_TABLE.values() for s in spec.suffixes}

    def __getitem__(self, key: str) -> str:
        return self._items()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())


#: Exact ``Path.suffix`` -> backend name (a live view of :data:`BACKEND_TABLE`).
BACKENDS: Mapping[str, str] = _SuffixView()


def backend_spec(path: str | os.PathLike[str], backend: str | None = None) -> BackendSpec:
    """The table row for ``path`` (exact suffix) or the ``backend`` override.

    Raises:
        ConfigError: unknown suffix or unknown backend name (lists the valid ones).
    """
    if backend is not None:
        if backend not in BACKEND_TABLE:
            raise ConfigError(f"unknown backend {backend!r}: choose one of {', '.join(BACKEND_TABLE)}")
        return BACKEND_TABLE[backend]
    suffix = Path(path).suffix
    if suffix not in BACKENDS:
        valid = ", ".join(f"{s} ({b})" for s, b in BACKENDS.items())
        raise ConfigError(f"{path}: unsupported model suffix {suffix or '(none)'!r}; valid: {valid}")
    return BACKEND_TABLE[BACKENDS[suffix]]


def backend_for(path: str | os.PathLike[str], backend: str | None = None) -> str:
    """The backend name for ``path`` (see :func:`backend_spec`)."""
    return backend_spec(path, backend).name


def check_backend_opens(path: str | os.PathLike[str], backend: str | None = None) -> BackendSpec:
    """The row that runs ``path`` when ``backend`` is named (None: the row of its suffix), refusing a named
    backend that cannot run that kind of artifact: a suffix that belongs to another row (``.pt`` is torch's,
    ``.onnx`` onnxruntime's, ``.engine`` tensorrt's) must be among the named row's ``suffixes`` or
    ``also_opens``. A suffix no row owns is left to the named backend (it reads the file or says why not).

    Call it before opening anything (``bench --backend``): the refusal is a usage error, one line, exit 2,
    where opening the file would fail later with the backend's own error.

    Raises:
        ConfigError: unknown suffix or backend name (:func:`backend_spec`); a backend that cannot run the file's
            kind (names the kind's own backend and what the named one opens).
    """
    spec = backend_spec(path, backend)
    suffix = Path(path).suffix
    owner = BACKENDS.get(suffix)
    if backend is None or owner is None or suffix in spec.suffixes or suffix in spec.also_opens:
        return spec
    opens = ", ".join(dict.fromkeys((*spec.suffixes, *spec.also_opens))) or "nothing by suffix"
    raise ConfigError(f"{path}: the {spec.name} backend cannot run a {suffix} file (that is the {owner} "
                      f"backend's); it runs {opens}: drop --backend {spec.name} for this file")


def open_backend(path: str | os.PathLike[str], backend: str | None = None, batch: int | None = None,
                 **options: Any) -> Backend:
    """Open the model at ``path`` with the backend its suffix names (or ``backend``).

    Args:
        batch: for checkpoints, the batch recorded in their manifest; for ONNX and engines the batch is
            fixed by the artifact and a different value is refused.
        options: what the backend's row lists (``device``, ``image_size`` for torch; ``providers``,
            ``threads`` for onnxruntime; ``cuda_backend`` for tensorrt); None values are ignored.

    Raises:
        DataError: the file does not exist. ConfigError: unknown suffix/backend, an option the backend
        does not take. Plus what each backend raises (ManifestError, EngineError, MissingDependencyError...).
    """
    path = Path(path)
    spec = backend_spec(path, backend)
    if not path.is_file():
        raise DataError(f"{path}: model file not found")
    given = {k: v for k, v in options.items() if v is not None and v != [] and v != ()}
    for key in given:
        if key not in spec.options:
            owners = [s.name for s in BACKEND_TABLE.values() if key in s.options]
            where = f"the {' / '.join(owners)} backend only" if owners else "no backend"
            raise ConfigError(f"{key} applies to {where}, not {spec.name} ({path.name})")
    cls = spec.load()
    if "batch" in spec.options:  # the backend takes any batch: recorded in its manifest
        return cls(path, batch=batch, **given)
    b = cls(path, **given)
    if batch is not None and batch != b.manifest.batch_size:
        b.close()
        raise ConfigError(f"{path}: the artifact has a static batch of {b.manifest.batch_size}, "
                          f"batch {batch} was asked for (re-export with --batch {batch})")
    return b


def __getattr__(name: str) -> Any:  # the backend classes, imported when first asked for
    for spec in BACKEND_TABLE.values():
        if isinstance(spec.loader, str) and spec.loader.endswith(f":{name}"):
            return spec.load()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------- frames of any size

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
    fitted = [fit_frame(np.asarray(f), size, letterbox) for f in frames]
    out: list[np.ndarray] = []
    done = 0
    for batch, k in static_batches([img for img, _ in fitted], max(1, backend.manifest.batch_size)):
        pred = backend.predict(batch)
        for lab, (_, pl), f in zip(pred.labels[:k], fitted[done:done + k], frames[done:done + k]):
            out.append(restore_labels(lab, pl, np.asarray(f).shape[:2]))
        done += k
    return out
