"""Lazy imports of the optional heavy packages, in one place.

``import danet_edge`` (and every other module of the package at import time) never imports
tensorrt, pycuda, cuda-python, modelopt, PyTorch, OpenCV, ONNX Runtime or matplotlib; code that needs
one calls the function here when it runs, and gets a :class:`~danet_edge.core.errors.MissingDependencyError`
(one line, exit code 4 on the command line) that names what to install.

The device runtime (``build``, ``infer``, ``check``, ``bench`` on ``.onnx`` / ``.engine``) is the base
install; the rest comes in extras (``[ort]``, ``[video]``, ``[export]``, ``[train]``, ``[plot]``, ``[all]``).
On a Jetson, PyTorch, onnxruntime-gpu, OpenCV (with GStreamer) and TensorRT come from NVIDIA / JetPack:
the hints say to keep those (a venv made with ``--system-site-packages``) rather than let pip replace them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .errors import MissingDependencyError

__all__ = ["CUDA_PYTHON_HINT", "import_tensorrt", "import_cuda_backend", "import_cuda", "import_modelopt", "tensorrt_version",
           "import_openvino", "import_cv2", "import_onnxruntime", "import_torch", "import_matplotlib",
           "missing_dependency"]

# cuda-python 13.x needs a CUDA 13 driver, newer than JetPack 6's CUDA 12.6 (cuda-python release notes).
CUDA_PYTHON_HINT = "`pip install 'cuda-python>=12,<13'` (JetPack 6, CUDA 12.x; cuda-python 13 needs CUDA 13 drivers)"

_TRT_HINT = ("tensorrt is not installed: on a Jetson it ships with JetPack 6 (TensorRT 10.3, "
             "`sudo apt install python3-libnvinfer`); on a desktop GPU host `pip install tensorrt`")


def import_tensorrt() -> ModuleType:
    """Return the ``tensorrt`` module (TensorRT 10.x or 11.x).

    Raises:
        MissingDependencyError: tensorrt is not installed, or is older than 10.0 (the named-tensor
            API, ``execute_async_v3``, is 10.x+).
    """
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as e:
        raise MissingDependencyError(f"{_TRT_HINT} ({e.__class__.__name__}: {e})") from None
    major = int(str(getattr(trt, "__version__", "0")).split(".")[0] or 0)
    if major < 10:
        raise MissingDependencyError(f"tensorrt {trt.__version__} is too old: danet-edge needs TensorRT 10.x or 11.x "
                                     "(JetPack 6 or newer)")
    return trt


def tensorrt_version() -> str | None:
    """The installed TensorRT version string, or None when tensorrt cannot be imported."""
    try:
        return str(import_tensorrt().__version__)
    except MissingDependencyError:
        return None


def import_cuda_backend(prefer: str | None = None) -> tuple[str, Any]:
    """Find a CUDA host API for device memory and streams.

    Order: pycuda (the design card's choice), then cuda-python's runtime module
    (``cuda.bindings.runtime`` in cuda-python 13.x, ``cuda.cudart`` in 12.x). ``pycuda.autoinit``
    creates a context on import and, without a usable GPU, raises ``pycuda._driver.Error`` (not an
    ImportError): that too moves on to cuda-python, whose calls then report the CUDA error.

    Args:
        prefer: ``"pycuda"`` or ``"cuda-python"`` to ask for one; None tries both.

    Returns:
        ``("pycuda", pycuda.driver)`` (with a context created by ``pycuda.autoinit``) or
        ``("cuda-python", runtime_module)``.

    Raises:
        MissingDependencyError: neither is installed (or the one asked for is not).
    """
    errors: list[str] = []
    order = ("pycuda", "cuda-python") if prefer is None else (prefer,)
    for name in order:
        if name == "pycuda":
            try:
                driver = importlib.import_module("pycuda.driver")
                importlib.import_module("pycuda.autoinit")  # creates and pushes a context on device 0
                return "pycuda", driver
            except ImportError as e:
                errors.append(f"pycuda ({e})")
            except Exception as e:  # noqa: BLE001 - pycuda._driver.Error / RuntimeError: no GPU or driver
                errors.append(f"pycuda.autoinit ({type(e).__name__}: {e})")
        elif name == "cuda-python":
            for mod in ("cuda.bindings.runtime", "cuda.cudart"):
                try:
                    return "cuda-python", importlib.import_module(mod)
                except ImportError as e:
                    errors.append(f"{mod} ({e})")
        else:
            raise MissingDependencyError(f"unknown CUDA backend {name!r}: choose 'pycuda' or 'cuda-python'")
    raise MissingDependencyError(
        f"no usable CUDA Python API: {CUDA_PYTHON_HINT} (or `pip install pycuda`, built against the local "
        "CUDA); tried " + ", ".join(errors))


import_cuda = import_cuda_backend  # the name DESIGN.md uses


def import_modelopt() -> ModuleType:
    """Return ``modelopt`` (NVIDIA TensorRT Model Optimizer).

    Raises:
        MissingDependencyError: not installed (``pip install nvidia-modelopt``; avoid its ``[onnx]``
            extra on a CPU-only machine: it pulls onnxruntime-gpu and pins onnx).
    """
    try:
        return importlib.import_module("modelopt")
    except ImportError as e:
        raise MissingDependencyError(
            f"modelopt is not installed: `pip install nvidia-modelopt` ({e})") from None


def import_openvino() -> ModuleType:
    """``openvino`` (the optional CPU runtime), or MissingDependencyError with the install line."""
    try:
        return importlib.import_module("openvino")
    except ImportError as e:
        raise MissingDependencyError("the openvino backend needs OpenVINO: pip install 'danet-edge[openvino]' "
                                     f"({e.__class__.__name__}: {e})") from None


# ------------------------------------------------------------------ the workstation's packages
# Each is optional for the device runtime. On a Jetson they come from NVIDIA (JetPack's apt OpenCV built
# with GStreamer, NVIDIA's torch and onnxruntime-gpu wheels for JetPack 6): a pip install over them would
# replace a CUDA / GStreamer build with a CPU-only one, hence "keep a venv with --system-site-packages".
_KEEP_JETPACK = "keep a venv made with --system-site-packages so it sees them, and do not pip install over them"


def _import(name: str, message: Callable[[ImportError], str]) -> ModuleType:
    """The module ``name``: from ``sys.modules`` when already imported (the hot path: frame loops call
    ``import_cv2`` per frame), else imported now; an ImportError becomes one MissingDependencyError line,
    ``message(error)``."""
    mod = sys.modules.get(name)
    if mod is not None:
        return mod
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise MissingDependencyError(message(e)) from None


def _why(e: BaseException) -> str:
    """The import error in a few words, on one line."""
    text = " ".join(str(e).split())
    return f"{e.__class__.__name__}: {text[:200]}"


def import_cv2() -> ModuleType:
    """Return ``cv2`` (OpenCV from any source: pip's opencv-python(-headless), JetPack's python3-opencv...).

    Needed to read images and videos, open cameras and GStreamer pipelines, resize frames and write the
    overlay video; not needed to load or run a graph or an engine.

    Raises:
        MissingDependencyError: cv2 cannot be imported (one line: on a Jetson use JetPack's OpenCV; elsewhere
            ``pip install 'danet-edge[video]'``; when the import failed on NumPy, says that JetPack's OpenCV
            is built for NumPy 1.x).
    """
    def message(e: ImportError) -> str:
        numpy_abi = "numpy" in str(e).lower()
        extra = ("; JetPack's OpenCV is built for NumPy 1.x: pip install 'numpy<2' in the venv" if numpy_abi else "")
        return ("OpenCV is not importable: on a Jetson use JetPack's (sudo apt install python3-opencv; "
                f"{_KEEP_JETPACK}); elsewhere pip install 'danet-edge[video]'{extra} ({_why(e)})")

    return _import("cv2", message)


def import_onnxruntime() -> ModuleType:
    """Return ``onnxruntime`` (provided by either the ``onnxruntime`` or the ``onnxruntime-gpu`` wheel).

    Needed to run ``.onnx`` graphs (``--backend onnxruntime``), to verify exports and to quantize; not
    needed for TensorRT engines.

    Raises:
        MissingDependencyError: onnxruntime cannot be imported (one line: on a Jetson install NVIDIA's
            onnxruntime-gpu wheel for JetPack 6; elsewhere ``pip install 'danet-edge[ort]'``).
    """
    return _import("onnxruntime", lambda e: (
        "ONNX Runtime is not importable (needed to run .onnx graphs; engines need only TensorRT): on a Jetson "
        f"use NVIDIA's onnxruntime-gpu wheel for JetPack 6 ({_KEEP_JETPACK}); elsewhere "
        f"pip install 'danet-edge[ort]' ({_why(e)})"))


def import_torch(purpose: str = "this command") -> ModuleType:
    """Return ``torch`` (PyTorch from any source: PyPI, or NVIDIA's wheel for JetPack).

    Args:
        purpose: what needs it, named in the message (e.g. ``"the PyTorch reference"``).

    Raises:
        MissingDependencyError: torch cannot be imported (one line: the ``[train]`` / ``[export]`` extras,
            or NVIDIA's wheel on a Jetson).
    """
    return _import("torch", lambda e: (
        f"PyTorch is not importable (needed for {purpose}; build, infer, check and bench on .onnx / .engine "
        f"do not need it): on a Jetson use NVIDIA's torch wheel for JetPack 6 ({_KEEP_JETPACK}); elsewhere "
        f"pip install 'danet-edge[train]' (train, eval) or 'danet-edge[export]' (export) ({_why(e)})"))


def import_matplotlib() -> ModuleType:
    """Return ``matplotlib`` with the non-interactive ``Agg`` backend selected (plots are written as PNG).

    Raises:
        MissingDependencyError: matplotlib cannot be imported (``pip install 'danet-edge[plot]'``, or
            ``sudo apt install python3-matplotlib`` on a Jetson).
    """
    mod = _import("matplotlib", lambda e: (
        "matplotlib is not importable (needed only for the PNG plots; leave out --plot to skip them): "
        f"pip install 'danet-edge[plot]' (on a Jetson also sudo apt install python3-matplotlib) ({_why(e)})"))
    mod.use("Agg")
    return mod


def missing_dependency(exc: ImportError) -> MissingDependencyError | None:
    """The one-line :class:`MissingDependencyError` for an ImportError of an optional package raised by a plain
    ``import`` (the PyTorch stages import torch at module level), or None when ``exc`` is about something else.

    The CLI's last resort, so that ``danet-edge train`` without PyTorch says which extra to install instead of
    printing a traceback.

    Args:
        exc: the ImportError (its ``name`` is the module that could not be imported).
    """
    name = (getattr(exc, "name", None) or "").split(".")[0]
    importer = {"torch": import_torch, "cv2": import_cv2, "onnxruntime": import_onnxruntime,
                "matplotlib": import_matplotlib}.get(name)
    if importer is not None:
        try:
            importer()
        except MissingDependencyError as e:
            return e
        return None  # importable after all: a broken installation, not a missing one; keep the traceback
    if name == "torchvision":
        return MissingDependencyError(
            "torchvision is not importable (training and export use it): on a Jetson use NVIDIA's torchvision "
            f"built for its torch ({_KEEP_JETPACK}); elsewhere pip install 'danet-edge[train]' ({_why(exc)})")
    if name == "onnxslim":
        return MissingDependencyError(f"onnxslim is not installed (export simplifies the graph with it): "
                                      f"pip install 'danet-edge[export]' ({_why(exc)})")
    return None
