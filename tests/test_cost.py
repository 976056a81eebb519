"""Issue 9: the compute-by-precision cost model, against hand counts and DANet R-50's published total."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from danet_edge.graph.cost import JETSON_TARGETS, GpuTarget, format_cost, graph_cost


def _tiny(quantized: bool = False) -> onnx.ModelProto:
    """x (1,3,8,8) -> Conv 4x3x3x3 pad 1 -> Relu -> Reshape (1,4,64) -> MatMul (64,10) -> Softmax."""
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    m = numpy_helper.from_array(np.ones((64, 10), np.float32), "m")
    shape = numpy_helper.from_array(np.array([1, 4, 64], np.int64), "shape")
    inits = [w, m, shape]
    conv_in, conv_w = "x", "w"
    nodes = []
    if quantized:  # DQ(Q(x)) and DQ(w_int8): the Conv runs INT8
        inits += [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "z"),
                  numpy_helper.from_array(np.ones((4, 3, 3, 3), np.int8), "wq")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
                  helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
                  helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], name="dqw")]
        conv_in, conv_w = "xd", "wd"
    nodes += [helper.make_node("Conv", [conv_in, conv_w], ["c"], name="conv", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["r"], name="relu"),
              helper.make_node("Reshape", ["r", "shape"], ["rs"], name="reshape"),
              helper.make_node("MatMul", ["rs", "m"], ["mm"], name="matmul"),
              helper.make_node("Softmax", ["mm"], ["y"], name="softmax", axis=-1)]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_flops_and_bytes_match_a_hand_count():
    cost = graph_cost(_tiny())
    per = {n.name: (n.flops, n.bytes) for n in cost.nodes}
    # Conv: 4*8*8 outputs x 27 multiply-adds x 2; Relu 1/element; MatMul 2*40*64; Softmax 5/element
    assert per["conv"] == (2 * 256 * 27, (3 * 64 + 108 + 256) * 4)
    assert per["relu"] == (256, 2 * 256 * 4)
    assert per["reshape"] == (0, 0)
    assert per["matmul"] == (2 * 40 * 64, (256 + 640 + 40) * 4)
    assert per["softmax"] == (5 * 40, 2 * 40 * 4)
    assert cost.total_gflop == pytest.approx(19400 / 1e9)
    assert cost.by_precision["fp32"]["flop_share_pct"] == 100.0 and not cost.unknown_shapes


def test_a_conv_fed_by_dequantize_counts_as_int8_and_reads_int8():
    cost = graph_cost(_tiny(quantized=True))
    conv = next(n for n in cost.nodes if n.name == "conv")
    assert conv.precision == "int8" and conv.flops == 2 * 256 * 27
    assert conv.bytes == 3 * 64 + 108 + 256 * 4  # INT8 activation and weight, FP32 output
    assert cost.share("int8") == pytest.approx(100 * 13824 / 19400, abs=1e-3)
    assert {n.name: n.flops for n in cost.nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")} == \
        {"q": 0, "dq": 0, "dqw": 0}  # fused into the kernel


def test_latency_bound_is_the_larger_of_compute_and_memory_time():
    t = GpuTarget("toy", int8_tops=1.0, fp16_tflops=0.5, fp32_tflops=0.25, bandwidth_gbs=1.0, source="test")
    cost = graph_cost(_tiny(), {"toy": t})
    b = cost.bound_ms["toy"]
    assert b["compute_ms"] == pytest.approx(19400 / 0.25e12 * 1e3, rel=1e-3)
    essential = (3 * 64 + 108 + 640 + 40) * 4 + 3 * 8  # graph I/O and weights (float32), the Reshape's int64 shape
    assert b["memory_ms"] == pytest.approx(essential / 1e9 * 1e3, rel=1e-3)
    assert b["unfused_memory_ms"] == pytest.approx(sum(n.bytes for n in cost.nodes) / 1e9 * 1e3, rel=1e-3)
    assert b["bound_ms"] == max(b["compute_ms"], b["memory_ms"])
    assert any("toy" in line for line in format_cost(cost))
    for row in JETSON_TARGETS.values():  # every published row names its source and has dense peaks in order
        assert row.source and row.int8_tops > row.fp16_tflops > row.fp32_tflops > 0 and row.bandwidth_gbs > 0


def test_missing_shapes_are_reported_not_silently_zero():
    model = _tiny()
    del model.graph.node[2]  # the Reshape: MatMul's input shape can no longer be inferred
    model.graph.node.insert(2, helper.make_node("Reshape", ["r", "dyn"], ["rs"], name="reshape"))
    model.graph.input.append(helper.make_tensor_value_info("dyn", TensorProto.INT64, [3]))
    cost = graph_cost(model)
    assert cost.unknown_shapes == ["matmul"]
    assert any("no static shape" in line for line in format_cost(cost))


@pytest.mark.slow
def test_danet_r50_at_512x1024_is_877_gflop(tmp_path):
    """The published figure (torch's FLOP counter on DANet R-50 OS8, 512x1024: 877 GFLOP), within 2 %."""
    import onnxslim
    import torch

    from danet_edge.model.danet import build_model

    model = build_model(backbone="resnet50", num_classes=19).eval()
    model.set_attention("explicit")  # as export writes it
    torch.onnx.export(model, (torch.zeros(1, 3, 512, 1024),), str(tmp_path / "r50.onnx"), opset_version=17,
                      dynamo=False, input_names=["images"], output_names=["logits"])
    cost = graph_cost(onnxslim.slim(onnx.load(str(tmp_path / "r50.onnx"))))
    assert cost.total_gflop == pytest.approx(877, rel=0.02) and not cost.unknown_shapes
    matmul = sum(n.flops for n in cost.nodes if n.op_type == "MatMul") / 1e9
    # PAM: Q.K^T 8192^2 x 64 and S.V 8192^2 x 512; CAM: 512^2 x 8192 twice; x2 for multiply-add
    assert matmul == pytest.approx(2 * (8192**2 * 64 + 8192**2 * 512 + 2 * 512**2 * 8192) / 1e9, rel=1e-6)


def test_precision_report_carries_the_cost(tiny_checkpoint, tmp_path):
    from _runtime_helpers import export_tiny

    from danet_edge.export.fp16 import convert_fp16
    from danet_edge.graph.precision import precision_report

    fp32 = export_tiny(tiny_checkpoint, tmp_path / "m.onnx")
    fp16 = convert_fp16(fp32, tmp_path / "m16.onnx")
    r32, r16 = precision_report(onnx.load(str(fp32))), precision_report(onnx.load(str(fp16)))
    assert r32.cost["by_precision"]["fp32"]["flop_share_pct"] == 100.0
    assert r16.cost["by_precision"]["fp16"]["flop_share_pct"] > 90.0
    assert r16.cost["total_gflop"] == pytest.approx(r32.cost["total_gflop"], rel=1e-6)
    assert set(r16.cost["bound_ms"]) == set(JETSON_TARGETS)
