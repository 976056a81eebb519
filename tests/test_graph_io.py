"""Fused I/O as a graph rewrite: the fused graph gives the logits graph's argmax on uint8 frames."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from _runtime_helpers import export_tiny, random_frames
from danet_edge.core.errors import ExportError
from danet_edge.export.graph_io import fuse_io, is_fused
from danet_edge.core.manifest import read_manifest
from danet_edge.data.preprocess import normalize


def test_fused_graph_equals_normalise_then_argmax(tiny_checkpoint, tmp_path):
    import onnxruntime as ort

    path = export_tiny(tiny_checkpoint, tmp_path / "model.onnx")
    m = read_manifest(path)
    logits_graph = onnx.load(str(path))
    fused = fuse_io(logits_graph, m.mean, m.std)
    onnx.checker.check_model(fused, full_check=True)
    assert is_fused(fused) and not is_fused(logits_graph)
    assert [d.dim_value for d in fused.graph.input[0].type.tensor_type.shape.dim] == [1, 64, 96, 3]
    assert fused.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    a = ort.InferenceSession(logits_graph.SerializeToString(), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(fused.SerializeToString(), providers=["CPUExecutionProvider"])
    frames = random_frames(3, 64, 96)
    agree = []
    for f in frames:
        logits = a.run(None, {"images": normalize(f[None], m.mean, m.std)})[0]
        labels = b.run(None, {"images": f[None]})[0]
        assert labels.shape == (1, 64, 96) and labels.dtype == np.int32
        agree.append(np.mean(labels == logits.argmax(1)))
    assert min(agree) > 0.999  # only the grouping of the normalisation's arithmetic differs
    with pytest.raises(ExportError, match="already has fused I/O"):
        fuse_io(fused, m.mean, m.std)
