"""What the deployment writers (``deepstream.py``, ``triton.py``) share: reading the artifact, and writing
a folder atomically.

A folder is written as a temporary folder beside it that is renamed onto it (as ``reference.write_bundle``
does), so an interrupted deploy leaves the old folder or none, never half of one. A folder danet-edge did not
write (no :data:`MARKER` in it) is never replaced: the user's files stay.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, DataError, ManifestError
from ..core.manifest import Manifest, read_manifest
from ..core.fixednames import fixed_name_problem, is_regular_file
from ..core.utils import atomic_dir
from ..core.io_contract import TensorSpec, check_io

__all__ = ["MARKER", "ARTIFACT_SUFFIXES", "load_artifact", "write_folder", "is_engine"]

#: File danet-edge leaves in every folder it deploys to (what it came from); its presence allows a rewrite.
MARKER = ".danet-edge-deploy.json"
#: Artifacts a deployment takes (exact ``Path.suffix``, the backend table's): ONNX graphs and TensorRT engines.
ARTIFACT_SUFFIXES = (".onnx", ".engine", ".plan")


def is_engine(path: Path) -> bool:
    return path.suffix in (".engine", ".plan")


def _graph_io(path: Path, m: Manifest) -> Any:
    """The ONNX graph at ``path``, refused unless it parses and its first input and output are the manifest's
    (name, dtype, static shape): the deployment configs are written from the manifest, so a mismatch would only
    surface when DeepStream or Triton loads the model."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - onnx raises several types: DecodeError, OSError, the checker's
        # ValidationError for external data that points outside the graph's folder (nothing is read then)
        why = " ".join(str(e).split())[:400]
        raise ManifestError(f"{path}: not a readable ONNX graph ({type(e).__name__}: {why})") from None
    inits = {i.name for i in model.graph.initializer}

    def spec(v: Any) -> TensorSpec:
        t = v.type.tensor_type
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        except (KeyError, ValueError, TypeError):
            dtype = f"ONNX type {t.elem_type}"
        return TensorSpec.of(v.name, [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim], dtype)

    check_io(path, m, [spec(v) for v in model.graph.input if v.name not in inits], [spec(v) for v in model.graph.output])
    return model


def load_artifact(artifact: str | os.PathLike[str]) -> tuple[Path, Manifest, Any]:
    """The artifact's path, validated manifest and, for an ``.onnx``, its graph (``onnx.ModelProto``; None for
    an engine, which only TensorRT can read).

    Raises:
        DataError: the file does not exist.
        ConfigError: not an ``.onnx`` / ``.engine`` / ``.plan`` file.
        ManifestError: its ``.json`` sidecar is missing or invalid, or has no input / output shape; a graph that
            does not parse or whose input / output differ from the manifest's.
    """
    path = Path(artifact)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix not in ARTIFACT_SUFFIXES:
        what = path.suffix or "a file without suffix"
        raise ConfigError(f"{path}: deploy takes {', '.join(ARTIFACT_SUFFIXES)} artifacts, not {what}")
    m = read_manifest(path)
    if len(m.input_shape) != 4 or not m.output_shape:
        raise ManifestError(f"{path}: the manifest has no static input / output shape "
                            f"(input {m.input_shape}, output {m.output_shape})")
    return path, m, None if is_engine(path) else _graph_io(path, m)


def write_folder(out: str | os.PathLike[str], fill: Callable[[Path], None], record: dict[str, Any]) -> Path:
    """Write folder ``out`` atomically: ``fill(tmp)`` writes into a temporary folder beside it, which then
    replaces ``out``.

    Args:
        out: the folder to write.
        fill: writes the folder's content into the path it is given.
        record: JSON written as :data:`MARKER` (what was deployed, from where).

    Raises:
        ConfigError: ``out`` is a file or a link, a non-empty folder that danet-edge did not write (no marker), or
            cannot be written (the old folder is kept).
    """
    out = Path(out)
    why = fixed_name_problem(out, folder=True)  # a link (to a folder or not) is refused, never written through
    if why is not None:
        raise ConfigError(f"{out}: {why}")
    if out.exists():
        if any(out.iterdir()) and not is_regular_file(out / MARKER):
            raise ConfigError(f"{out}: a non-empty folder that danet-edge did not write; give an empty or new folder")
    try:
        with atomic_dir(out) as tmp:
            fill(tmp)
            (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    except OSError as e:  # a full disk, a folder made read-only meanwhile: one line, the old folder kept
        raise ConfigError(f"{out}: writing failed: {e.strerror or e}") from None
    return out
