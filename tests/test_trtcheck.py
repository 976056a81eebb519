"""TensorRT ONNX-parser rules: a clean DANet graph passes, planted violations are caught by node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from danet_edge.core.errors import CompatibilityError
from danet_edge.graph.trtcheck import check_tensorrt_compat, enforce_tensorrt_compat


def _model(nodes, inits=(), opset=17, in_shape=(1, 4), out_shape=(1, 4), in_type=TensorProto.FLOAT,
           out_type=TensorProto.FLOAT) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", in_type, list(in_shape))],
                              [helper.make_tensor_value_info("y", out_type, list(out_shape))], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _rules(model):
    return {(v.node, v.rule) for v in check_tensorrt_compat(model)}


def test_clean_graph_has_no_violation():
    m = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")])
    assert check_tensorrt_compat(m) == []


def _qdq(zp_value, zp_type):
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = numpy_helper.from_array(np.array(zp_value, zp_type), "zp")
    return _model([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quant"),
                   helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dequant")], [scale, zp])


def test_symmetric_int8_qdq_passes_and_nonzero_zero_point_is_caught():
    assert check_tensorrt_compat(_qdq(0, np.int8)) == []
    rules = _rules(_qdq(3, np.int8))
    assert ("quant", "Q/DQ zero point") in rules and ("dequant", "Q/DQ zero point") in rules


def test_uint8_zero_point_is_caught():
    assert ("quant", "Q/DQ zero point") in _rules(_qdq(0, np.uint8))


def test_dynamic_dim_is_caught():
    m = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], in_shape=("batch", 4), out_shape=("batch", 4))
    assert ("x", "static shapes") in _rules(m)
    with pytest.raises(CompatibilityError, match="'x'.*static shapes"):
        enforce_tensorrt_compat(m)


def test_unsupported_op_and_foreign_domain_are_caught():
    m = _model([helper.make_node("NonZero", ["x"], ["nz"], name="nonzero"),
                helper.make_node("Relu", ["x"], ["y"], name="relu")])
    assert ("nonzero", "operator support") in _rules(m)
    m2 = _model([helper.make_node("FusedGemm", ["x"], ["y"], name="contrib", domain="com.microsoft")])
    m2.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert ("contrib", "operator domain") in _rules(m2)


def test_opset_resize_and_uint8_intermediate_rules():
    assert ("<graph>", "opset range") in _rules(_model([helper.make_node("Relu", ["x"], ["y"], name="r")], opset=21))
    sizes = numpy_helper.from_array(np.array([1, 1, 4, 4], np.int64), "sizes")
    resize = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], name="up", mode="cubic")
    m = _model([resize], [sizes], in_shape=(1, 1, 2, 2), out_shape=(1, 1, 4, 4))
    assert ("up", "Resize mode") in _rules(m)
    cast = [helper.make_node("Cast", ["x"], ["c"], name="to_u8", to=TensorProto.UINT8),
            helper.make_node("Cast", ["c"], ["y"], name="back", to=TensorProto.FLOAT)]
    assert ("to_u8", "uint8 only as network I/O") in _rules(_model(cast))


def test_shape_arithmetic_is_caught():
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape")]
    rules = _rules(_model(nodes))
    assert ("shape", "static shapes") in rules and ("reshape", "static shapes") in rules


def test_cpu_target_only_reports():
    m = _qdq(3, np.uint8)
    violations = enforce_tensorrt_compat(m, target="cpu")
    assert violations and all(v.node in ("quant", "dequant") for v in violations)
    with pytest.raises(CompatibilityError, match="quant"):
        enforce_tensorrt_compat(m, target="tensorrt")


@pytest.mark.parametrize("bad", [0.0, -0.1, np.inf, np.nan])
def test_qdq_scale_must_be_finite_and_positive(bad):
    """Issue 20 defect 2: onnx-tensorrt's Q/DQ importer refuses a scale that is not > 0; the rule check names
    the node and the channel, so export refuses what the parser would."""
    w = numpy_helper.from_array(np.ones((3, 4), np.int8), "w")
    scale = numpy_helper.from_array(np.array([0.1, bad, 0.2], np.float32), "ws")
    zp = numpy_helper.from_array(np.zeros(3, np.int8), "wzp")
    m = _model([helper.make_node("DequantizeLinear", ["w", "ws", "wzp"], ["wf"], name="wdq", axis=0),
                helper.make_node("MatMul", ["x", "wt"], ["y"], name="mm"),
                helper.make_node("Transpose", ["wf"], ["wt"], name="t")], [w, scale, zp], out_shape=(1, 3))
    v = [x for x in check_tensorrt_compat(m) if x.rule == "Q/DQ scale"]
    assert len(v) == 1 and v[0].node == "wdq" and "channel 1" in v[0].detail
    with pytest.raises(CompatibilityError, match=r"'wdq'.*Q/DQ scale.*channel 1"):
        enforce_tensorrt_compat(m)
    ws = next(i for i in m.graph.initializer if i.name == "ws")
    ws.CopyFrom(numpy_helper.from_array(np.array([0.1, 0.3, 0.2], np.float32), "ws"))
    assert not [x for x in check_tensorrt_compat(m) if x.rule == "Q/DQ scale"]
