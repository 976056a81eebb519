"""FP16 graph with FP32 islands: overflow safety at trained magnitudes, and an honest precision report."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from danet_edge.core.manifest import read_manifest
from danet_edge.model.checkpoint import load_model
from danet_edge.core.errors import PrecisionError
from danet_edge.export.fp32 import export_onnx
from danet_edge.graph.precision import attention_nodes, default_fp32_islands, precision_report, verify_precision
from danet_edge.export.fp16 import convert_fp16
from danet_edge.data.preprocess import preprocess


def _frames():
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (64, 96, 3), dtype=np.uint8) for _ in range(2)]


@pytest.fixture(scope="module")
def graphs(tiny_checkpoint, tmp_path_factory):
    """FP32 graph of the tiny model with CAM's input at trained magnitudes (post-ReLU ~ 40), so its energy
    (a sum over 8x12 = 96 positions of products) reaches ~150000, past FP16's 65504."""
    loaded = load_model(tiny_checkpoint)
    with torch.no_grad():
        bn = loaded.model.head.conv5c[1]
        bn.weight.fill_(0.0)
        bn.bias.fill_(40.0)
        bn.bias[::2] = 5.0
        x = torch.from_numpy(preprocess(_frames(), (64, 96)))
        feat = loaded.model.head.conv5c(loaded.model.backbone(x)[1]).flatten(2)
        assert (feat @ feat.transpose(1, 2)).max() > 65504  # the premise of the test
    out = tmp_path_factory.mktemp("fp16")
    fp32 = export_onnx(loaded, out / "model.onnx", (64, 96), frames=_frames()).path
    fp16 = convert_fp16(fp32, out / "model_fp16.onnx")
    naive = convert_fp16(fp32, out / "naive_fp16.onnx", fp32_nodes=[])
    return fp32, fp16, naive


def _run(path, frames, extra: str | None = None):
    """Outputs of the graph (and of tensor ``extra``, exposed as an extra output) on ``frames``.

    No graph optimisation: ORT's CPU provider lacks FP16 kernels for some ops and, when optimising, merges
    the Casts it inserts around them, which would run an FP16 chain in FP32 and hide an overflow.
    """
    model = onnx.load(str(path))
    if extra:
        inferred = onnx.shape_inference.infer_shapes(model)
        model.graph.output.append(next(v for v in inferred.graph.value_info if v.name == extra))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = [sess.run(None, {"images": preprocess([f], (64, 96))}) for f in frames]
    return [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))]


def test_fp16_islands_prevent_overflow_that_naive_fp16_hits(graphs):
    fp32, fp16, naive = graphs
    frames = _frames()
    energy = attention_nodes(onnx.load(str(fp32))).cam_energy[0] + "_output_0"  # torch's tensor naming
    (ref,) = _run(fp32, frames)
    got, got_energy = _run(fp16, frames, energy)
    bad, bad_energy = _run(naive, frames, energy)
    assert np.isfinite(ref).all()
    assert np.isfinite(got).all(), "FP16 graph with FP32 islands gives inf/NaN"
    assert got_energy.dtype == np.float32 and np.isfinite(got_energy).all() and got_energy.max() > 65504
    assert bad_energy.dtype == np.float16 and np.isinf(bad_energy).any(), "naive FP16 should overflow CAM energy"
    assert (got.argmax(1) == ref.argmax(1)).mean() > 0.98


def test_fp16_graph_io_and_islands(graphs):
    fp32, fp16, _ = graphs
    model = onnx.load(str(fp16))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    rep = precision_report(model)
    assert rep.precision == "fp16" and rep.by_op["Conv"] == {"fp16": 28}
    att = attention_nodes(model)
    for name in att.cam_energy + att.cam_reduce + att.cam_softmax:
        assert name in rep.fp32_islands  # CAM's energy grows with the image: always FP32
    energy = read_manifest(fp32).extra["attention"]["energy"]
    assert energy["fp32_island"] is False and 0 < energy["max_abs"] * energy["margin"] < 65504 and energy["images"] == 2
    for name in att.pam_softmax + att.pam_energy:  # measured far under FP16's range: PAM computes in FP16
        assert name not in rep.fp32_islands
    assert set(default_fp32_islands(onnx.load(str(fp32)))) == set(rep.fp32_islands)
    verify_precision(rep, "fp16")


def test_pam_energy_decides_the_island():
    """PAM's energy leaves FP32 only when measured within the margin of FP16's range, and never in a fusible form."""
    from danet_edge.graph.precision import FP16_MAX, PAM_ENERGY_MARGIN, PamEnergy, decide_pam_energy

    assert not decide_pam_energy("explicit", 427.0, 24).fp32  # the CamVid R-18 figure of the issue
    assert decide_pam_energy("chunked", FP16_MAX / PAM_ENERGY_MARGIN, 2).fp32  # at the margin: kept
    assert decide_pam_energy("explicit", None, 0).fp32  # not measured: kept
    assert not decide_pam_energy("heads", 1e6, 2).fp32 and not decide_pam_energy("attention-op", None, 0).fp32
    big = decide_pam_energy("heads", 1e6, 2)
    assert not big.fits_fp16 and PamEnergy.from_record("heads", big.record()) == big
    assert PamEnergy.from_record("explicit", {"garbage": 1}).fp32  # an unreadable record keeps the island


def test_verify_precision_fails_loudly(graphs):
    fp32, fp16, _ = graphs
    rep32 = precision_report(onnx.load(str(fp32)))
    assert rep32.precision == "fp32" and rep32.counts["fp16"] == 0 and not rep32.fp32_islands
    with pytest.raises(PrecisionError, match="no FP16 Conv"):
        verify_precision(rep32, "fp16")
    with pytest.raises(PrecisionError, match="no quantized Conv"):
        verify_precision(rep32, "int8")
    with pytest.raises(PrecisionError, match="lower-precision"):
        verify_precision(precision_report(onnx.load(str(fp16))), "fp32")
