"""OpenVINO backend: the same ONNX graphs (FP32, FP16, INT8 Q/DQ) on Intel OpenVINO's CPU plugin
(row ``openvino`` of the table; ``--backend openvino``; ``pip install 'danet-edge[openvino]'``).

OpenVINO reads the ONNX file directly and runs Q/DQ graphs with its low-precision transformations
(INT8 kernels where the CPU has VNNI / AMX); on a 2-core AVX-512 VNNI machine it ran DANet R-50 faster
than ONNX Runtime (NOTES.md, issue 9). The graph's precision is read from the graph, as for ONNX Runtime.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..core.optional import import_openvino
from ..core.errors import ConfigError, DataError
from ..core.manifest import read_manifest
from .ort_backend import OnnxRuntimeBackend
from ..core.io_contract import TensorSpec, check_io

__all__ = ["OpenVinoBackend", "OpenVinoBf16Backend"]


class OpenVinoBackend(OnnxRuntimeBackend):
    """An ONNX graph compiled by OpenVINO for the CPU.

    Args:
        path: ``.onnx`` file with its ``.onnx.json`` manifest.
        threads: CPU inference threads (0: OpenVINO's default, all cores).
        inference_precision: ``f32`` (default: what the graph says is what runs) or ``bf16``. OpenVINO's own
            default on CPUs with AVX-512 BF16 / AMX is bf16, which runs an "FP32" graph in bf16: DANet R-50
            256x512 on this project's CPU took 541 ms so against 1073 ms in f32 (NOTES.md, issue 9). Opt in
            here, and the provider string says it.

    Raises:
        MissingDependencyError: openvino is not installed. DataError: OpenVINO cannot read or compile it.
        ManifestError: the graph's input or output differs from the manifest.
    """

    name = "openvino"
    compute_timing = "perf_counter around the compiled model's call alone (host tensors; no normalisation, no argmax)"

    def __init__(self, path: str | os.PathLike[str], threads: int = 0,
                 inference_precision: str = "f32") -> None:  # noqa: D107 - see class
        if inference_precision not in ("f32", "bf16"):
            raise ConfigError(f"inference precision must be f32 or bf16, got {inference_precision!r}")
        ov = import_openvino()
        path = Path(path)
        self.manifest = read_manifest(path)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": inference_precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            core = ov.Core()
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses of its own
            raise DataError(f"{path}: OpenVINO cannot compile it ({str(e).splitlines()[0][:300]})") from None
        self.provider = f"OpenVINO {ov.__version__.split('-')[0]} CPU ({inference_precision} inference precision)"
        self.session = None
        self._check_ports(path)

    def _check_ports(self, path: Path) -> None:
        m = self.manifest
        ins, outs = self.compiled.inputs, self.compiled.outputs
        check_io(path, m, [_spec(p) for p in ins], [_spec(p) for p in outs])
        self._in_dtype = np.uint8 if m.input_dtype == "uint8" else np.float32

    def _run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.compiled(x)[0])

    def close(self) -> None:
        self.compiled = None


class OpenVinoBf16Backend(OpenVinoBackend):
    """:class:`OpenVinoBackend` with bf16 inference precision outside the INT8 part (``--backend openvino-bf16``):
    the fastest honest CPU route measured here for an INT8 graph (NOTES.md, issue 9); its accuracy is what
    ``check --backend openvino-bf16`` reports, not the f32 graph's. Needs AVX-512 BF16 or AMX; elsewhere
    OpenVINO falls back to f32 and the provider string says what it compiled for.

    Raises:
        as :class:`OpenVinoBackend`.
    """

    name = "openvino-bf16"

    def __init__(self, path: str | os.PathLike[str], threads: int = 0) -> None:  # noqa: D107 - see class
        super().__init__(path, threads, inference_precision="bf16")
        try:
            got = str(self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
        except Exception:  # noqa: BLE001 - older OpenVINO: keep the asked precision in the string
            return
        self.provider = self.provider.replace("bf16 inference precision", f"{got} inference precision")


def _spec(port: Any) -> TensorSpec:
    """An OpenVINO port as the I/O contract reads it (dtype not compared: OpenVINO may run another precision)."""
    return TensorSpec.of(port.get_any_name(), list(port.get_shape()))
