"""Triton Inference Server: a model repository entry for an exported graph or engine.

Layout (Triton "Model Repository", https://github.com/triton-inference-server/server/blob/main/docs/user_guide/model_repository.md)::

    <repo>/<name>/config.pbtxt
    <repo>/<name>/1/model.onnx        platform "onnxruntime_onnx"   (or model.plan, "tensorrt_plan")
    <repo>/<name>/1/model.onnx.json   the artifact's manifest (classes, palette, normalisation)

The configuration follows Triton's model-config schema (``model_config.proto``; "Model Configuration",
https://github.com/triton-inference-server/server/blob/main/docs/user_guide/model_configuration.md): the graphs
have a static batch, so ``max_batch_size: 0`` and every ``dims`` includes the batch dimension; data types are
Triton's names (``TYPE_UINT8``, ``TYPE_FP32``, ``TYPE_INT32``...). Triton takes the fused-I/O graph as it is
(``(N, H, W, 3)`` uint8 in, ``(N, H, W)`` int32 class map out), unlike DeepStream's nvinfer (``deepstream.py``).

A TensorRT engine runs only under the TensorRT version and GPU it was built with: build it with the TensorRT
of the Triton release that serves it (Triton's release notes name it).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..core.config import Config, check_range, option
from .common import is_engine, load_artifact, write_folder
from ..core.errors import ConfigError, ManifestError
from ..core.manifest import Manifest, manifest_path

__all__ = ["TritonConfig", "write_model_repository", "model_config_text", "TRITON_DTYPES", "PLATFORMS",
           "TRITON_DOC_URL"]

TRITON_DOC_URL = ("https://github.com/triton-inference-server/server/blob/main/docs/user_guide/"
                  "model_configuration.md")
#: Manifest dtype -> Triton ``DataType`` name (model_config.proto).
TRITON_DTYPES = {"uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                 "float16": "TYPE_FP16", "float32": "TYPE_FP32", "bool": "TYPE_BOOL"}
#: Artifact kind -> (platform, default model file name in the version folder).
PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "engine": ("tensorrt_plan", "model.plan")}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass
class TritonConfig(Config):
    """Options of the Triton repository entry.

    Attributes:
        name: the model's name in the repository (its folder); None: the artifact's stem.
        version: the version folder (a positive integer).
    """

    name: str | None = option(None, "Triton model name (default: the artifact's stem).")
    version: int = option(1, "Triton model version folder.")

    def validate(self) -> None:
        if self.name is not None and (not isinstance(self.name, str) or not _NAME.fullmatch(self.name)):
            raise ConfigError(f"--name must be letters, digits, '_', '.' or '-' (not starting with '.' or '-'), "
                              f"at most 128 characters, got {self.name!r}")
        check_range("--model-version", self.version, 1, 2**31 - 1)


def _dtype(m: Manifest, which: str) -> str:
    dtype = getattr(m, f"{which}_dtype")
    if dtype not in TRITON_DTYPES:
        raise ManifestError(f"manifest {which}_dtype {dtype!r} has no Triton data type")
    return TRITON_DTYPES[dtype]


def model_config_text(m: Manifest, name: str, platform: str) -> str:
    """``config.pbtxt`` (protobuf text format) for the artifact ``m`` describes."""
    def tensor(which: str) -> str:
        dims = ", ".join(str(int(d)) for d in getattr(m, f"{which}_shape"))
        return (f"  {{\n    name: \"{getattr(m, f'{which}_name')}\"\n    data_type: {_dtype(m, which)}\n"
                f"    dims: [ {dims} ]\n  }}")

    what = ("fused I/O: uint8 RGB (N, H, W, 3) in, int32 class map (N, H, W) out" if m.input_dtype == "uint8"
            else f"float32 NCHW normalised input (x/255 - {list(m.mean)}) / {list(m.std)}, {m.output_kind} out")
    return (f"# written by danet-edge: {m.precision} {m.kind}, {m.num_classes} classes; {what}\n"
            f"name: \"{name}\"\n"
            f"platform: \"{platform}\"\n"
            "max_batch_size: 0  # static batch: dims below include it\n"
            f"input [\n{tensor('input')}\n]\n"
            f"output [\n{tensor('output')}\n]\n")


def write_model_repository(artifact: str | os.PathLike[str], repo_dir: str | os.PathLike[str],
                           cfg: TritonConfig | None = None) -> Path:
    """Add (or replace) ``repo_dir/<name>/`` for ``artifact``: ``config.pbtxt``, ``<version>/model.onnx`` or
    ``model.plan`` and the manifest beside it. The model folder is written atomically; the rest of the
    repository is left alone.

    Returns:
        The model folder.

    Raises:
        DataError, ManifestError: a missing artifact, a bad manifest (a dtype Triton has no name for), or a graph
            that does not parse or does not match its manifest.
        ConfigError: a bad name or version, or a model folder danet-edge did not write.
    """
    cfg = cfg or TritonConfig()
    cfg.validate()
    path, m, _ = load_artifact(artifact)
    name = cfg.name or path.stem
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{path.name}: '{name}' cannot be a Triton model name: give --name")
    platform, filename = PLATFORMS["engine" if is_engine(path) else "onnx"]
    text = model_config_text(m, name, platform)
    repo = Path(repo_dir)
    if repo.exists() and not repo.is_dir():
        raise ConfigError(f"{repo}: is a file, not a model repository folder")

    def fill(tmp: Path) -> None:
        (tmp / "config.pbtxt").write_text(text)
        version = tmp / str(cfg.version)
        version.mkdir()
        shutil.copyfile(path, version / filename)
        shutil.copyfile(manifest_path(path), manifest_path(version / filename))

    return write_folder(repo / name, fill, {"kind": "triton", "artifact": str(path.resolve()),
                                            "platform": platform, "version": cfg.version})
