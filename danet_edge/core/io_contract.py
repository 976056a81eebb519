"""The one check that a graph or engine is what its manifest says at its edges.

Every runtime that loads an artifact (ONNX Runtime, OpenVINO, TensorRT's runner), the engine builder (the
parsed network) and deploy (the ONNX graph before a DeepStream / Triton config is written from the manifest)
describe the artifact's inputs and outputs as :class:`TensorSpec` rows and call :func:`check_io`: exactly one
input and one output, with the manifest's name, static shape and dtype. Polygraphy's runners do the same
with ``get_input_metadata()`` checked once in ``BaseRunner.infer``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ManifestError
from .manifest import Manifest

__all__ = ["TensorSpec", "check_io", "ORT_DTYPES"]

#: ONNX Runtime's type strings -> numpy dtype names (what a manifest writes).
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
              "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(int8)": "int8", "tensor(bool)": "bool"}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as a runtime reports it.

    Attributes:
        name: tensor name.
        shape: dimensions, ``-1`` (or any non-int) where the runtime reports none (dynamic).
        dtype: numpy dtype name (``float32``, ``uint8``, ``int32``...), or None where the runtime does not say.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str | None = None

    @classmethod
    def of(cls, name: str, shape: Sequence[object], dtype: str | None = None) -> TensorSpec:
        """Normalise a runtime's shape (ints, strings for symbolic dims, None) to ints, -1 for unknown."""
        return cls(str(name), tuple(int(d) if isinstance(d, int) and not isinstance(d, bool) else -1 for d in shape),
                   dtype)

    def __str__(self) -> str:
        return f"{self.name!r} ({self.dtype or '?'} {list(self.shape)})"


def check_io(path: str | os.PathLike[str], manifest: Manifest, inputs: Sequence[TensorSpec],
             outputs: Sequence[TensorSpec], kind: str = "graph") -> None:
    """Refuse an artifact whose edges are not its manifest's.

    Args:
        path: the artifact (named in the message).
        manifest: its manifest (``input_name``/``shape``/``dtype``, ``output_name``/``shape``/``dtype``).
        inputs, outputs: what the runtime reports; a ``dtype`` of None is not compared.
        kind: what the artifact is called in the message (``graph``, ``engine``, ``network``).

    Raises:
        ManifestError: not exactly one input and one output, or a name, static shape or dtype that differs,
            e.g. "model.onnx: the graph's input 'x' (float32 [1, 3, 64, 96]) is not its manifest's 'images'
            (float32 [1, 3, 64, 96]): re-export (static shapes only)".
    """
    if len(inputs) != 1 or len(outputs) != 1:
        raise ManifestError(f"{path}: the {kind} has {len(inputs)} inputs and {len(outputs)} outputs, expected 1 and 1")
    for which, got in (("input", inputs[0]), ("output", outputs[0])):
        want = TensorSpec.of(getattr(manifest, f"{which}_name"), getattr(manifest, f"{which}_shape"),
                             getattr(manifest, f"{which}_dtype"))
        same = got.name == want.name and got.shape == want.shape and (got.dtype is None or got.dtype == want.dtype)
        if not same:
            raise ManifestError(f"{path}: the {kind}'s {which} {got} is not its manifest's {want}: re-export "
                                "(static shapes only)")
