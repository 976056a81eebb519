"""Issue 9: INT8 graphs for TensorRT whose unquantized part is FP16, with Q/DQ placed where TensorRT fuses
it (Conv inputs and weights, the skip input of residual Adds), checked from the graph itself."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto

from danet_edge.data.calib import load_calibration_set
from danet_edge.model.checkpoint import load_model
from danet_edge.graph.cost import graph_cost
from danet_edge.export.fp32 import export_onnx
from danet_edge.graph.precision import attention_nodes, default_fp32_islands, precision_report
from danet_edge.export.quantize import quantize_int8, residual_adds


@pytest.fixture(scope="module")
def graphs(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8fp16")
    fp32 = export_onnx(load_model(tiny_checkpoint), out / "model.onnx", (64, 96)).path
    (out / "calib").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        cv2.imwrite(str(out / "calib" / f"{i}.png"), cv2.resize(rng.integers(0, 256, (8, 12, 3), np.uint8), (96, 64)))
    cs = load_calibration_set(out / "calib")
    new = quantize_int8(fp32, cs, out / "int8_fp16.onnx", "tensorrt", "minmax")
    old = quantize_int8(fp32, cs, out / "int8_fp32.onnx", "tensorrt", "minmax", high_precision="fp32",
                        residual_add=False)
    return {"fp32": fp32, "new": new, "old": old, "cs": cs}


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def test_residual_adds_are_the_resnet_block_adds(graphs):
    model = onnx.load(str(graphs["fp32"]))
    res = residual_adds(model)
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    block_adds = [n.name for n in adds if "/backbone/" in n.name]
    assert sorted(res) == sorted(block_adds) and len(res) == 8  # ResNet-18: 2 blocks x 4 stages
    prod = _producers(model)
    for n in adds:
        if n.name in res:  # the main branch comes straight from a Conv (conv2 of a basic block)
            main = prod[n.input[res[n.name]]]
            assert main.op_type == "Conv" and "conv2" in main.name, (n.name, main.name)
    assert not any(n.startswith("/head/") for n in res)  # attention's gamma * out + x and the branch sum are not


def test_int8_graph_quantizes_skips_and_computes_the_rest_in_fp16(graphs):
    model = onnx.load(str(graphs["new"].path))
    prod = _producers(model)
    res = residual_adds(onnx.load(str(graphs["fp32"])))
    for n in model.graph.node:
        if n.name in res:  # skip input through Q/DQ, main branch straight from its Conv (fusible)
            main, skip = n.input[res[n.name]], n.input[1 - res[n.name]]
            assert prod[main].op_type == "Conv" and prod[skip].op_type == "DequantizeLinear", n.name
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 19
    onnx.checker.check_model(model, full_check=True)  # ONNX's type rules: Q input type = scale type, and so on
    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):  # TensorRT 10.3: DQ output type = scale type
            assert inits[n.input[1]].data_type == TensorProto.FLOAT16, n.name
            assert inits[n.input[2]].data_type == TensorProto.INT8, n.name
    rep = precision_report(model)
    islands = set(default_fp32_islands(onnx.load(str(graphs["fp32"]))))
    assert set(rep.fp32_islands) == islands and rep.counts["int8"] == rep.by_op["Conv"]["int8"] > 0
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # FP32 I/O
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    cost = graph_cost(model)
    assert cost.share("fp32") < 2.0 and cost.share("int8") > 95.0
    rec = graphs["new"].record
    assert rec["high_precision"] == "fp16" and rec["residual_adds"] == 8 and rec["fp16_scales"] > 0


def test_the_fp32_form_is_unchanged(graphs):
    model = onnx.load(str(graphs["old"].path))
    rep = precision_report(model)
    assert rep.counts.get("fp16", 0) == 0 and rep.counts["int8"] > 0
    prod = _producers(model)
    projection = [n for n in model.graph.node if n.op_type == "Add" and "/backbone/" in n.name
                  and "DequantizeLinear" not in [prod[i].op_type for i in n.input]]
    # ORT shares a tensor's Q/DQ with every reader, so identity skips were already INT8 in the 0.1 form;
    # the projection shortcuts (Conv + Conv: layer2-4 block 0) were not: their Add could not fuse as INT8
    assert len(projection) == 3 and all([prod[i].op_type for i in n.input] == ["Conv", "Conv"] for n in projection)
    assert graph_cost(model).share("fp32") > graph_cost(onnx.load(str(graphs["new"].path))).share("fp32")


def test_int8_fp16_graph_agrees_with_fp32_in_onnx_runtime(graphs):
    import onnxruntime as ort

    from danet_edge.runtime.ort_backend import session_options

    frames = np.stack([graphs["cs"].model_batch(i, 1, (64, 96), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))[0]
                       for i in range(4)])
    out = {}
    for key, path, fp16 in (("fp32", graphs["fp32"], False), ("new", graphs["new"].path, True),
                            ("old", graphs["old"].path, False)):
        s = ort.InferenceSession(str(path), session_options("int8", 1, fp16), providers=["CPUExecutionProvider"])
        out[key] = np.concatenate([s.run(None, {s.get_inputs()[0].name: f[None]})[0] for f in frames])
    rel, agree = {}, {}
    for key in ("new", "old"):
        rel[key] = np.linalg.norm(out[key] - out["fp32"]) / np.linalg.norm(out["fp32"])
        agree[key] = (out[key].argmax(1) == out["fp32"].argmax(1)).mean()
    # a random-weight model calibrated on 4 noise images: both forms are rough; FP16 must not add much
    assert rel["new"] < 0.1 and rel["new"] < 1.1 * rel["old"] and agree["new"] > agree["old"] - 0.02, (rel, agree)
    assert np.isfinite(out["new"]).all()


def test_include_attention_keeps_quantized_attention_out_of_the_fp32_islands(graphs, tmp_path):
    res = quantize_int8(graphs["fp32"], graphs["cs"], tmp_path / "att.onnx", "tensorrt", "minmax",
                        include_attention=True)
    model = onnx.load(str(res.path))
    rep = precision_report(model)
    assert set(rep.attention_quantized) == set(attention_nodes(model).matmuls)
    assert not set(rep.attention_quantized) & set(rep.fp32_islands)


# ---------------------------------------------------------------- sensitivity and the accuracy budget

def _evaluator(graphs, n=4):
    from danet_edge.core.manifest import read_manifest
    from danet_edge.export.sensitivity import Evaluator

    frames = list(graphs["cs"].frames())[:n]
    return Evaluator(onnx.load(str(graphs["fp32"])), read_manifest(graphs["fp32"]), frames, threads=1)


def test_keeping_every_layer_in_high_precision_gives_back_the_fp32_graph(graphs):
    from danet_edge.export.sensitivity import keep_high_precision, quantized_layers

    int8, fp32 = onnx.load(str(graphs["new"].path)), onnx.load(str(graphs["fp32"]))
    names = quantized_layers(int8)
    assert len(names) == precision_report(int8).by_op["Conv"]["int8"]
    full = keep_high_precision(int8, fp32, names)
    onnx.checker.check_model(full, full_check=True)
    assert quantized_layers(full) == [] and not any(n.op_type in ("QuantizeLinear", "DequantizeLinear")
                                                    for n in full.graph.node)
    ev = _evaluator(graphs)
    all_fp16, all_int8 = ev.evaluate(full), ev.evaluate(int8)
    assert all_fp16["agreement"] > 99.5 and all_fp16["rel_l2"] < 0.01 < all_int8["rel_l2"]


def _dq_edges(model):
    """(DequantizeLinear output, reader name) for every reader of a DQ."""
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {(i, n.name) for n in model.graph.node for i in n.input if i in dq}


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_keeping_one_layer_leaves_every_other_quantization_point_alone(graphs, tmp_path, target):
    """Leave-one-out means one layer: the cpu graph also quantizes Conv outputs and Add inputs (ONNX Runtime's
    fusable form), and those stay; only the kept layer's own inputs leave INT8 (and, in the TensorRT graph, the
    skip Q/DQ of an Add fed straight by the kept layer, which no longer fuses). Found on the CamVid R-50 cpu
    graph, where every single layer 'gained' 9.4 points because all Add and Relu Q/DQ were dropped with it."""
    from danet_edge.export.sensitivity import keep_high_precision, quantized_layers

    path = graphs["new"].path if target == "tensorrt" else \
        quantize_int8(graphs["fp32"], graphs["cs"], tmp_path / "int8_cpu.onnx", "cpu", "minmax").path
    int8, fp32 = onnx.load(str(path)), onnx.load(str(graphs["fp32"]))
    before = _dq_edges(int8)
    for name in quantized_layers(int8):
        kept = keep_high_precision(int8, fp32, [name])
        fed = {n.name for n in kept.graph.node if n.op_type == "Add" and
               any(o in n.input for m in kept.graph.node if m.name == name for o in m.output)}
        others = {(i, r) for i, r in before if r != name and r not in fed}
        assert others <= _dq_edges(kept), (name, sorted(others - _dq_edges(kept))[:3])
        assert name not in quantized_layers(kept)


def test_an_agreement_budget_ranks_by_agreement_even_with_labels(graphs):
    """With labels the ranking's own order is by mIoU gain; a minimum-agreement budget must still keep layers by
    agreement gain per GFLOP (on 16 CamVid images every R-50 layer had a negative mIoU gain, and the budget kept
    the largest layer first)."""
    from danet_edge.export.sensitivity import LayerSensitivity, SensitivityReport, quantized_layers
    from danet_edge.export.budget import fit_budget

    int8, fp32 = onnx.load(str(graphs["new"].path)), onnx.load(str(graphs["fp32"]))
    ev = _evaluator(graphs, n=2)
    names = quantized_layers(int8)
    layers = [LayerSensitivity(n, "Conv", 1.0, 0.0, 0.0, miou_gain=-1.0) for n in names]
    layers[3].agreement_gain, layers[7].agreement_gain = 0.2, 0.5
    ranking = SensitivityReport({"agreement": 90.0, "rel_l2": 0.1, "miou": 10.0}, layers, 2, 0.0)
    res = fit_budget(int8, fp32, ev, min_agreement=100.5, ranking=ranking)  # never met: tries every candidate
    assert [h["layer"] for h in res.history[1:]] == [names[7], names[3]] and not res.met
    # a layer is kept only when it brings the agreement closer to the budget, given those kept before it
    best = res.history[0]["agreement"]
    for h in res.history[1:]:
        assert h["accepted"] == (h["agreement"] > best)
        best = max(best, h["agreement"]) if h["accepted"] else best
    assert res.kept == [h["layer"] for h in res.history[1:] if h["accepted"]]


@pytest.mark.slow
def test_budget_keeps_the_most_sensitive_layers_until_it_holds(graphs, tmp_path):
    from danet_edge.export.budget import fit_budget
    from danet_edge.export.sensitivity import keep_high_precision, rank_layers, write_ranking

    int8, fp32 = onnx.load(str(graphs["new"].path)), onnx.load(str(graphs["fp32"]))
    ev = _evaluator(graphs)
    base = ev.evaluate(int8)
    ranking = rank_layers(int8, fp32, ev)
    gains = [x.gain for x in ranking.layers]
    assert gains == sorted(gains, reverse=True) and ranking.base["agreement"] == pytest.approx(base["agreement"])
    # a target the budget can reach: what keeping its first choice (best agreement gain per GFLOP) alone gives.
    # (It used to be halfway from the all-INT8 agreement to 100 %; on this random-weight R-18 with torch 2.14.1
    # the greedy choice stopped at 96.74 % for a 97.34 % target, no single further layer helping: a budget is
    # not always reachable, and fit_budget says so rather than keeping every layer.)
    first = max((x for x in ranking.layers if x.agreement_gain > 0), key=lambda x: x.agreement_gain / max(x.gflop, 1e-6))
    target = ev.evaluate(keep_high_precision(int8, fp32, [first.name]))["agreement"]
    assert target > base["agreement"]
    res = fit_budget(int8, fp32, ev, min_agreement=target)
    assert res.kept[:1] == [first.name]
    assert res.met and res.final["agreement"] >= target and res.kept
    assert res.kept[0] in [x.name for x in ranking.layers if x.gain > 0 or x.rel_l2_gain > 0]
    assert 0 < res.int8_share_pct < graph_cost(int8).share("int8")
    assert res.record()["kept_high_precision"] == res.kept
    assert res.kept == [h["layer"] for h in res.history[1:] if h["accepted"]]
    easy = fit_budget(int8, fp32, ev, min_agreement=base["agreement"] - 1)
    assert easy.met and easy.kept == [] and easy.ranking is None  # nothing to keep, nothing ranked
    write_ranking(ranking, tmp_path / "s.md", tmp_path / "s.png")
    assert ranking.layers[0].name in (tmp_path / "s.md").read_text() and (tmp_path / "s.png").stat().st_size > 0


@pytest.mark.slow
def test_export_applies_the_budget_and_records_it(tiny_checkpoint, tmp_path, graphs):
    import json

    from danet_edge.export.config import ExportConfig
    from danet_edge.core.errors import ConfigError
    from danet_edge.export.export import export_model

    with pytest.raises(ConfigError, match="needs labelled images"):
        ExportConfig(int8=True, max_miou_drop=0.3)
    with pytest.raises(ConfigError, match="applies to INT8"):
        ExportConfig(min_agreement=99.0)
    cfg = ExportConfig(int8=True, calib=graphs["cs"].root, calib_method="minmax", out=tmp_path, min_agreement=99.9,
                       budget_images=2)
    res = export_model(tiny_checkpoint, cfg)
    (art,) = [a for a in res.artifacts if a.manifest.precision == "int8"]
    budget = json.loads((tmp_path / "model_int8_trt.onnx.json").read_text())["extra"]["budget"]
    assert budget["budget"]["min_agreement"] == 99.9 and budget["kept_high_precision"] == art.manifest.extra["budget"][
        "kept_high_precision"]
    if budget["kept_high_precision"]:  # the ranking is written when layers had to be ranked
        assert (tmp_path / "model_int8_trt.sensitivity.md").is_file()
        kept = set(budget["kept_high_precision"])
        assert not kept & set(precision_report(onnx.load(str(art.path))).quantized)


def test_a_bias_shared_by_two_convs_does_not_hide_a_projection_shortcut():
    """onnxslim shares identical initializers (DANet R-50's conv3 and downsample biases): the main branch
    must still be found from the activations, not from the shared constant (found on R-50 512x1024)."""
    from onnx import helper, numpy_helper

    w = lambda name, c_in: numpy_helper.from_array(np.ones((4, c_in, 1, 1), np.float32), name)  # noqa: E731
    inits = [w("w1", 4), w("w3", 4), w("wd", 4), numpy_helper.from_array(np.zeros(4, np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w3", "b"], ["c3"], name="conv3"),
             helper.make_node("Conv", ["x", "wd", "b"], ["d"], name="downsample"),
             helper.make_node("Add", ["d", "c3"], ["y"], name="add")]
    g = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    assert residual_adds(helper.make_model(g)) == {"add": 1}  # conv3 (input 1) is the main branch


def test_a_wrong_budget_data_set_is_refused_before_anything_is_written(tiny_checkpoint, tmp_path, graphs):
    from danet_edge.export.config import ExportConfig
    from danet_edge.core.errors import ConfigError
    from danet_edge.export.export import export_model

    cfg = ExportConfig(int8=True, calib=graphs["cs"].root, out=tmp_path / "out", max_miou_drop=0.3,
                       dataset="synthetic", budget_images=2)  # 8 classes; the checkpoint has 5
    with pytest.raises(ConfigError, match="has 8 classes, the model 5"):
        export_model(tiny_checkpoint, cfg)
    assert not (tmp_path / "out").exists()


def test_cpu_target_keeps_the_classifier_and_its_logits_out_of_int8(graphs, tmp_path):
    """ONNX Runtime's CPU form quantizes Conv outputs: uint8 logits flipped the argmax of a CamVid-trained R-50
    on more than half its pixels (NOTES.md, issue 9). The classifier Conv stays FP32, input and output."""
    from danet_edge.graph.precision import precision_report
    from danet_edge.export.quantize import classifier_conv

    fp32 = onnx.load(str(graphs["fp32"]))
    name = classifier_conv(fp32)
    assert name is not None and "conv8" in name  # DANet's fused classifier
    res = quantize_int8(graphs["fp32"], graphs["cs"], tmp_path / "cpu.onnx", "cpu", "minmax")
    model = onnx.load(str(res.path))
    conv = next(n for n in model.graph.node if n.name == name)
    producers = _producers(model)
    assert all(getattr(producers.get(i), "op_type", None) != "DequantizeLinear" for i in conv.input)
    assert not [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == conv.output[0]]
    assert name not in precision_report(model).quantized and len(precision_report(model).quantized) > 10
    assert res.record["fp32_layers"] == {name: "classifier: its output (the logits) is not quantized"}
    # the tensorrt target keeps its classifier input quantized (the budget decides), its output never is
    trt = onnx.load(str(graphs["new"].path))
    trt_conv = next(n for n in trt.graph.node if n.name == name)
    assert not [n for n in trt.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == trt_conv.output[0]]


def test_tiny_weight_channels_keep_positive_fp16_scales(graphs, tmp_path):
    """Issue 20 defect 2: FP16 Q/DQ scales under 3e-8 rounded to 0 (TensorRT's parser refuses scale 0) and
    those under 6.1e-5 lost bits as subnormals. A channel of zeros, one of magnitude 1e-7 and one of 3e-5 now
    give scales > 0, a graph the TensorRT rules accept, and dequantized weights within one stored step."""
    from danet_edge.export.qdq_fp16 import FP16_MIN_NORMAL, fp16_scale
    from danet_edge.graph.trtcheck import check_tensorrt_compat

    model = onnx.load(str(graphs["fp32"]))
    inits = {i.name: i for i in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and "layer4" in n.name)
    w = onnx.numpy_helper.to_array(inits[conv.input[1]]).copy()
    rng = np.random.default_rng(1)
    w[0] = 0.0
    w[1] = 1e-7 * rng.choice([-1.0, 1.0], w[1].shape) * rng.uniform(0.2, 1.0, w[1].shape)
    w[2] = 3e-5 * rng.uniform(-1.0, 1.0, w[2].shape)
    inits[conv.input[1]].CopyFrom(onnx.numpy_helper.from_array(w.astype(np.float32), conv.input[1]))
    src = tmp_path / "tiny.onnx"
    onnx.save(model, str(src))
    res = quantize_int8(src, graphs["cs"], tmp_path / "tiny_int8.onnx", "tensorrt", "minmax")
    q = onnx.load(str(res.path))
    qi = {i.name: i for i in q.graph.initializer}
    scales = [onnx.numpy_helper.to_array(qi[n.input[1]]) for n in q.graph.node
              if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[1] in qi]
    assert scales and all(s.dtype == np.float16 and np.all(s > 0) for s in scales)
    assert check_tensorrt_compat(q) == [] and res.record["fp16_scales_raised"] >= 2
    # the DQ of this conv's weight, dequantized
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in
              {i for c in q.graph.node if c.op_type == "Conv" and c.name == conv.name for i in c.input})
    qw = onnx.numpy_helper.to_array(qi[dq.input[0]]).astype(np.float64)
    s16 = onnx.numpy_helper.to_array(qi[dq.input[1]]).astype(np.float64)
    deq = qw * s16.reshape(-1, 1, 1, 1)
    assert np.all(deq[0] == 0)
    for c in (1, 2):
        # ONNX Runtime rounded to its FP32 scale, the requantization to the FP16 one: within one stored step
        assert s16[c] < FP16_MIN_NORMAL and np.max(np.abs(deq[c] - w[c])) <= s16[c] * (1 + 1e-6), c
        assert np.max(np.abs(deq[c])) > 0  # the channel is not flattened to zero
    # the rounding rule itself: never 0, never below the scale, exact in FP16
    s = np.array([0, 1e-12, 2.9e-8, 7.9e-10, 3e-6, 1e-3], np.float32)
    r = fp16_scale(s)
    assert np.all(r > 0) and np.all(r[:5] >= s[:5]) and np.array_equal(r, r.astype(np.float16).astype(np.float32))
