"""Lazy imports of the optional heavy packages, in one place.

``import danet_edge`` (and every other module of the package at import time) never imports
tensorrt, pycuda, cuda-python or modelopt; code that needs one calls the function here when it
runs, and gets a :class:`~danet_edge.errors.MissingDependencyError` that names what to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from .errors import MissingDependencyError

__all__ = ["CUDA_PYTHON_HINT", "import_tensorrt", "import_cuda_backend", "import_cuda", "import_modelopt", "tensorrt_version"]

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
