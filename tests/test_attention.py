"""PAM's forms (explicit, chunked, heads): exact rewrites, found by the graph helpers in every form, chosen by the
memory model, refused when nothing fits, shown by cost / check / bench."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from _runtime_helpers import make_tiny_checkpoint, run_cli
from danet_edge.core.errors import ConfigError
from danet_edge.core.manifest import read_manifest
from danet_edge.export.attention import chunks_needed
from danet_edge.export.export import ExportConfig, export_model
from danet_edge.export.fp32 import ort_session, run_graph, trace_onnx
from danet_edge.graph.memory import attention_form, memory_estimate
from danet_edge.graph.precision import attention_nodes, default_fp32_islands
from danet_edge.model.attention import pam_chunked, pam_explicit, pam_heads
from danet_edge.model.checkpoint import load_model
from danet_edge.model.config import ModelConfig
from danet_edge.model.danet import build_model
from danet_edge.model.forms import attention_flops, chunk_bounds, reference_chunks
from danet_edge.trt.inspector import LayerInfo, attention_fused


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def test_chunk_bounds_cover_every_position_once():
    for length, k in ((10, 3), (96, 7), (5, 9), (8192, 64)):
        b = chunk_bounds(length, k)
        assert b[0][0] == 0 and b[-1][1] == length and all(x[1] == y[0] for x, y in zip(b, b[1:]))
        assert max(s - a for a, s in b) - min(s - a for a, s in b) <= 1 and len(b) == min(k, length)
    assert reference_chunks(1, 8192) == 1  # 256 MiB: the whole map at 512x1024
    assert reference_chunks(1, 32768) == 16  # 4 GiB at 1024x2048: sixteen 256 MiB slices


def test_forms_are_exact_on_random_tensors():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 300, 16), torch.randn(2, 16, 300), torch.randn(2, 128, 300)
    ref = pam_explicit(q, k, v)
    assert _rel(pam_chunked(q, k, v, 7), ref) < 1e-6 and _rel(pam_heads(q, k, v), ref) < 1e-6
    with pytest.raises(ValueError, match="multiple"):
        pam_heads(q, k, torch.randn(2, 120, 300))


@pytest.mark.parametrize("backbone, size", [("resnet18", (64, 96)), ("resnet50", (64, 128))])
def test_model_forms_give_the_same_class_maps(backbone, size):
    """Every form of the whole model against the paper's: relative L2 <= 1e-5 and equal class maps (random
    weights, non-zero attention gammas so PAM matters)."""
    torch.manual_seed(1)
    model = build_model(ModelConfig(backbone=backbone, num_classes=11)).eval()
    model.head.sa.gamma.data.fill_(0.7)
    x = torch.randn(2, 3, *size)
    out = {}
    for impl, chunks in (("explicit", None), ("chunked", 3), ("chunked", None), ("heads", None), ("sdpa", None)):
        model.set_attention(impl, chunks)
        with torch.no_grad():
            out[(impl, chunks)] = model(x).numpy()
    ref = out[("explicit", None)]
    for key, o in out.items():
        assert _rel(o, ref) < 1e-5, key
        assert (o.argmax(1) == ref.argmax(1)).mean() >= 0.99999, key
    with pytest.raises(ConfigError, match="attention must be one of"):
        model.set_attention("flash")
    with pytest.raises(ConfigError, match="chunks"):
        model.set_attention("chunked", 0)


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    """The FP32 graph of one tiny DANet in each form (64x96: L = 96 positions)."""
    root = tmp_path_factory.mktemp("forms")
    loaded = load_model(make_tiny_checkpoint(root / "t.pt"))
    return {f: trace_onnx(loaded, (64, 96), 1, 17, f, 3 if f == "chunked" else None)
            for f in ("explicit", "chunked", "heads")}


def test_graph_helpers_find_the_attention_in_every_form(forms):
    for form, g in forms.items():
        att = attention_nodes(g)
        n = 3 if form == "chunked" else 1
        assert len(att.pam_softmax) == len(att.pam_energy) == len(att.pam_out) == n, form
        assert len(att.cam_softmax) == 1
        islands = set(default_fp32_islands(g))
        assert set(att.cam_energy + att.cam_reduce + att.cam_softmax) <= islands, form  # CAM: always FP32
        if form == "heads":  # fusible: TensorRT's fused attention needs both MatMuls in FP16, no island between
            assert not set(att.pam_energy + att.pam_softmax) & islands
        else:  # no measured energy in a bare traced graph: the explicit and chunked forms keep it in FP32
            assert set(att.pam_energy + att.pam_softmax) <= islands, form
        a = attention_form(g)
        assert (a.form, a.chunks, a.heads, a.positions) == (form, n, 8 if form == "heads" else 1, 96)
        # the FLOPs read from the graph are the formula's (d = 16, C = 128 for ResNet-18)
        assert a.gflop == pytest.approx(attention_flops(form, 1, 96, 16, 128) / 1e9, abs=1e-3)
    explicit, chunked = attention_form(forms["explicit"]), attention_form(forms["chunked"])
    assert chunked.map_mib == pytest.approx(explicit.map_mib / 3, rel=0.02)
    scale = [n for n in forms["heads"].graph.node if n.name.startswith("pam_scale_mul")]
    assert len(scale) == 1  # the scale (1) where TensorRT's attention pattern has it: on Q, before the first MatMul
    energy = next(n for n in forms["heads"].graph.node if n.name == attention_nodes(forms["heads"]).pam_energy[0])
    assert energy.input[0] == scale[0].output[0]


def _node_lines(g: onnx.ModelProto) -> list[tuple]:
    """Each node's op, attributes and constant inputs (names differ between traces)."""
    consts = {i.name: onnx.numpy_helper.to_array(i).tolist() for i in g.graph.initializer if i.dims in ([], [1], [2],
                                                                                                       [3], [4])}
    return [(n.op_type, tuple((a.name, str(onnx.helper.get_attribute_value(a))) for a in n.attribute),
             tuple(str(consts.get(i, "x")) for i in n.input)) for n in g.graph.node]


@pytest.mark.parametrize("opset", [11, 13, 17, 20])
def test_export_writes_the_form_without_holding_its_map(tiny_checkpoint, monkeypatch, opset):
    """The explicit and heads forms traced through ``pam_for_export`` (values computed chunked) give the graph
    that tracing the forms eagerly gives, node for node, and the same outputs; the trace holds no whole map."""
    import danet_edge.model.danet as danet

    loaded = load_model(tiny_checkpoint)
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 96)).astype(np.float32)
    seen = []
    real = danet.pam_for_export

    def spy(q, k, v, form):
        seen.append(form)
        return real(q, k, v, form)

    for form in ("explicit", "heads"):
        monkeypatch.setattr(danet, "pam_for_export", spy)
        new = trace_onnx(loaded, (64, 96), 1, opset, form)
        monkeypatch.setattr(danet, "pam_for_export", lambda q, k, v, f: (pam_explicit if f == "explicit" else
                                                                         pam_heads)(q, k, v))
        old = trace_onnx(loaded, (64, 96), 1, opset, form)
        assert _node_lines(new) == _node_lines(old), (form, opset)
        a, b = (ort_session(g).run(None, {"images": x})[0] for g in (new, old))
        assert _rel(a, b) < 1e-6, form
    assert seen == ["explicit", "heads"]


def test_pam_for_export_computes_the_form_in_chunks(monkeypatch):
    import danet_edge.model.attention as attention

    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(1, 4096, 4, generator=g), torch.randn(1, 4, 4096, generator=g), torch.randn(1, 32, 4096,
                                                                                                       generator=g)
    sizes = []
    real_bmm = torch.bmm
    monkeypatch.setattr(attention.torch, "bmm", lambda a, b: sizes.append(a.shape[1] * b.shape[2]) or real_bmm(a, b))
    monkeypatch.setattr(attention, "reference_chunks", lambda n, length: 4)
    out = attention.pam_for_export(q, k, v, "explicit")
    assert sizes and max(sizes) <= 4096 * 4096 / 4  # one quarter of the (L, L) map at a time, never all of it
    assert _rel(out.numpy(), pam_explicit(q, k, v).numpy()) < 1e-5
    with pytest.raises(ValueError, match="explicit or heads"):
        attention.pam_for_export(q, k, v, "chunked")


def test_attention_op_form_is_one_onnx_attention_node(tiny_checkpoint, forms):
    """The attention-op form: the heads form as one ONNX Attention node (opset 23, scale 1), exact in ONNX
    Runtime; found by the graph helpers; refused by the rule check for TensorRT 10.3, accepted for 10.14."""
    from danet_edge.graph.trtcheck import check_tensorrt_compat, required_tensorrt

    g = trace_onnx(load_model(tiny_checkpoint), (64, 96), 1, 17, "attention-op")
    (op,) = [n for n in g.graph.node if n.op_type == "Attention"]
    assert onnx.helper.get_attribute_value(op.attribute[0]) == 1.0 and op.attribute[0].name == "scale"
    assert g.opset_import[0].version == 23 and g.ir_version == 11
    onnx.checker.check_model(g, full_check=True)
    att = attention_nodes(g)
    assert att.pam_op == [op.name] and not att.pam_softmax and len(att.cam_softmax) == 1
    assert op.name not in default_fp32_islands(g)  # fusible: the FP16 graph feeds it FP16 Q, K and V
    a = attention_form(g)
    assert (a.form, a.chunks, a.heads, a.positions) == ("attention-op", 1, 8, 96)
    assert a.gflop == pytest.approx(attention_flops("attention-op", 1, 96, 16, 128) / 1e9, abs=1e-3)
    assert a.map_mib == pytest.approx(attention_form(forms["heads"]).map_mib, rel=0.01)  # unfused: the 8 maps
    assert memory_estimate(g).activations_mib >= a.map_mib
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 96)).astype(np.float32)
    got, ref = (ort_session(m).run(None, {"images": x})[0] for m in (g, forms["explicit"]))
    assert _rel(got, ref) < 1e-5 and (got.argmax(1) == ref.argmax(1)).all()
    rules = {v.rule for v in check_tensorrt_compat(g)}
    assert rules == {"opset range", "operator support"}
    assert required_tensorrt(g) == (10, 14) and check_tensorrt_compat(g, (10, 14)) == []
    assert required_tensorrt(forms["heads"]) == (10, 3)


def test_build_plan_refuses_attention_op_before_tensorrt_10_14(tiny_checkpoint, tmp_path):
    from danet_edge.trt.plan import EngineConfig, plan_build

    res = export_model(tiny_checkpoint, ExportConfig(attention="attention-op", fp16=True, reference_images=0,
                                                     out=tmp_path))
    for a in res.artifacts:
        m = read_manifest(a.path)
        assert m.opset == 23 and m.attention()["form"] == "attention-op"
        assert m.extra["attention"]["min_tensorrt"] == "10.14"
        assert any("10.14" in r for r in plan_build(a.path, EngineConfig(), "10.3.0", None, m).refusals)
        assert plan_build(a.path, EngineConfig(), "11.4.0", None, m).refusals == []
    fp16 = next(a for a in res.artifacts if a.manifest.precision == "fp16")
    assert fp16.verification["label_agreement_vs_fp32"] > 0.999
    with pytest.raises(ConfigError, match="attention-op has none"):
        ExportConfig(attention="attention-op", int8=True, include_attention=True).validate()


def test_forms_run_the_same_in_onnx_runtime(forms, tmp_path):
    from danet_edge.core.manifest import Manifest

    x = np.random.default_rng(0).standard_normal((1, 3, 64, 96)).astype(np.float32)
    out = {f: ort_session(g).run(None, {"images": x})[0] for f, g in forms.items()}
    for f, o in out.items():
        assert _rel(o, out["explicit"]) < 1e-5 and (o.argmax(1) == out["explicit"].argmax(1)).all(), f
    assert Manifest  # imported for the type only


def test_memory_model_counts_the_maps_of_each_form(forms):
    est = {f: memory_estimate(g) for f, g in forms.items()}
    # the same graph outside the attention: the same base in every form
    assert est["explicit"].other_mib == pytest.approx(est["chunked"].other_mib, abs=0.05)
    assert est["explicit"].weights_mib == est["chunked"].weights_mib == est["heads"].weights_mib
    # the activation peak holds at least one whole map (the Softmax writes over the energy)
    assert est["explicit"].activations_mib >= est["explicit"].attention.map_mib
    assert est["heads"].attention.map_mib == pytest.approx(8 * est["explicit"].attention.map_mib, rel=0.01)
    for e in est.values():
        assert set(e.boards) >= {"orin-nano-8gb", "orin-nx-16gb", "agx-orin-64gb"} and all(
            r["fits"] for r in e.boards.values())


BIG = (256, 384)  # L = 1536 positions: a 9 MiB map, the peak of a tiny DANet at this size


def test_fewest_chunks_that_fit(tiny_checkpoint):
    est = memory_estimate(trace_onnx(load_model(tiny_checkpoint), BIG, 1, 17, "explicit"))
    positions = (BIG[0] // 8) * (BIG[1] // 8)
    full = est.attention.map_mib
    assert est.beside_map_mib + full > est.other_mib  # at this size the attention is the peak
    at = est.weights_mib + est.beside_map_mib
    assert est.total_mib <= at + full + 0.01  # the model's figure for one chunk bounds the graph's own
    assert chunks_needed(est, 1, positions, est.total_mib + 0.01) == 1
    # 2 chunks would fit; auto takes at least 4 (2 cost 8.5 % more time on a CPU, 4 no more than the paper's form)
    assert chunks_needed(est, 1, positions, max(at + full / 2, est.weights_mib + est.other_mib) + 0.01) == 4
    assert chunks_needed(est, 1, positions, est.weights_mib + est.other_mib - 0.01) is None


def test_a_probe_at_half_size_predicts_the_full_graph(tiny_checkpoint):
    """Where one map is above 256 MiB, auto decides from the explicit graph at half the height and width, scaled
    by the pixel ratio: the need it predicts for 1, 2 and 4 chunks is the full-size graph's within 10 %."""
    from danet_edge.export.attention import _need_mib, _probe_size

    assert _probe_size((1024, 2048), 1, 8) == (512, 1024) and _probe_size((512, 1024), 1, 8) == (512, 1024)
    assert _probe_size((2048, 4096), 1, 8) == (512, 1024) and _probe_size((1024, 2048), 1, 16) == (1024, 2048)
    loaded = load_model(tiny_checkpoint)
    full = memory_estimate(trace_onnx(loaded, BIG, 1, 17, "explicit"))
    half = memory_estimate(trace_onnx(loaded, (BIG[0] // 2, BIG[1] // 2), 1, 17, "explicit"))
    positions = (BIG[0] // 8) * (BIG[1] // 8)
    for k in (1, 2, 4):
        assert _need_mib(half, 4.0, 1, positions, k) == pytest.approx(_need_mib(full, 1.0, 1, positions, k), rel=0.1)
    budget = _need_mib(full, 1.0, 1, positions, 2) + 0.01
    assert chunks_needed(half, 1, positions, budget, 4.0) == 4


def test_export_auto_chunks_to_fit_the_limit_and_records_it(tiny_checkpoint, tmp_path):
    loaded = load_model(tiny_checkpoint)
    est = memory_estimate(trace_onnx(loaded, BIG, 1, 17, "explicit"))
    limit = est.weights_mib + max(est.other_mib, est.beside_map_mib + est.attention.map_mib / 2) + 0.05  # 2 chunks fit
    assert est.total_mib > limit
    logs: list[str] = []
    res = export_model(tiny_checkpoint, ExportConfig(imgsz=BIG, memory_limit_mib=limit, fp16=True, reference_images=0,
                                                      out=tmp_path / "a"), log=logs.append)
    rec = res.attention
    assert rec["form"] == "chunked" and rec["chunks"] >= 2 and rec["total_mib"] <= limit
    for a in res.artifacts:  # every graph carries its form, its memory and is the chunked graph
        m = read_manifest(a.path)
        assert m.extra["attention"]["form"] == "chunked" and m.extra["memory"]["total_mib"] > 0
        assert len(attention_nodes(onnx.load(str(a.path))).pam_softmax) == rec["chunks"]
    assert any(line.startswith("PAM: chunked") for line in logs)
    # the default (an Orin Nano's memory): the paper's form at this size
    res = export_model(tiny_checkpoint, ExportConfig(reference_images=0, out=tmp_path / "b"))
    assert res.attention["form"] == "explicit" and res.attention["chunks"] == 1


def test_export_refuses_what_cannot_fit(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(ConfigError, match="Largest size that fits"):
        export_model(tiny_checkpoint, ExportConfig(memory_limit_mib=30.0, out=tmp_path / "x"))
    loaded = load_model(tiny_checkpoint)
    need = memory_estimate(trace_onnx(loaded, BIG, 1, 17, "explicit")).total_mib
    with pytest.raises(ConfigError, match="explicit form .* above --memory-limit-mib"):
        export_model(tiny_checkpoint, ExportConfig(imgsz=BIG, attention="explicit", memory_limit_mib=need - 0.5,
                                                   out=tmp_path / "y"))
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").iterdir())
    with pytest.raises(ConfigError, match="--attention-chunks applies"):
        ExportConfig(attention_chunks=4)
    code, _, err = run_cli(["export", str(tiny_checkpoint), "--memory-limit-mib", "30", "-o", str(tmp_path / "z")],
                           capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and "fits" in err[0]


def test_cost_and_check_show_the_form(tmp_path, capsys):
    ckpt = make_tiny_checkpoint(tmp_path / "k8.pt", num_classes=8)  # the synthetic data set's classes
    res = export_model(ckpt, ExportConfig(attention="chunked", attention_chunks=2, fused_io=False,
                                                      reference_images=0, out=tmp_path / "c"))
    graph = res.artifacts[0].path
    code, out, _ = run_cli(["cost", str(graph), "--json", str(tmp_path / "cost.json")], capsys)
    assert code == 0 and "PAM chunked, 2 query chunks" in " ".join(out.split())
    mem = json.loads((tmp_path / "cost.json").read_text())["graphs"][str(graph)]["memory"]
    assert mem["attention"]["form"] == "chunked" and mem["boards"]["orin-nano-8gb"]["fits"] is True
    from danet_edge.check.run import check_artifacts
    from danet_edge.data.datasets import build_dataset

    rep = check_artifacts([graph], ckpt, build_dataset("synthetic", None, "val", 2, size=(64, 96)))
    assert rep.artifacts[0].attention["form"] == "chunked" and rep.artifacts[0].attention["chunks"] == 2


def test_attention_fused_reads_only_what_the_inspector_says():
    """attention_fused decides from the inspector: True on the published fused record (NVIDIA/TensorRT issue 4397,
    10.10: ``_gemm_mha_v2_myl0_17``, kgen, tactic ``_gemm_mha_v2_0x...``, MatMul and Softmax in its metadata), False
    when the attention's nodes land in separate layers (an unfused Myelin softmax, ``kgen __myl_...``), else
    unknown."""
    def layer(name, nodes, tactic="", kind="x"):
        return LayerInfo(name, kind, "fp16", (), tactic, tuple(nodes))

    pam = [("/head/sa/MatMul", "/head/sa/Softmax", "/head/sa/MatMul_1")]
    fused = [layer("_gemm_mha_v2_myl0_17", ["/head/sa/MatMul", "/head/sa/Softmax", "/head/sa/MatMul_1"],
                   "_gemm_mha_v2_0x957a2fe283f77dcf35c142c1390a3e6a", "kgen")]
    assert attention_fused(fused, pam) is True
    unfused = [layer("/head/sa/MatMul_myl0_5", ["/head/sa/MatMul"], "sm87_xmma_gemm_f16f16_f16f16_f16_nn_n", "gemm"),
               layer("__myl_ExpSumDiv_myl0_6", ["/head/sa/Softmax"], "__myl_ExpSumDiv_0x3c1f", "kgen"),
               layer("/head/sa/MatMul_1_myl0_7", ["/head/sa/MatMul_1"], "sm87_xmma_gemm_f16f16_f16f16_f16_nn_n", "gemm")]
    assert attention_fused(unfused, pam) is False  # the map is written between layers: not fused, decidably
    # two chunks, one fused and one not: the engine holds a map
    two = [pam[0], ("/head/sa/MatMul_2", "/head/sa/Softmax_1", "/head/sa/MatMul_3")]
    assert attention_fused(fused + [layer("a", ["/head/sa/MatMul_2"]), layer("b", ["/head/sa/Softmax_1", "/head/sa/MatMul_3"])],
                           two) is False
    myelin = [layer("{ForeignNode[...]}", ["/head/sa/MatMul", "/head/sa/Softmax", "/head/sa/MatMul_1"], "", "Myelin")]
    assert attention_fused(myelin, pam) == "unknown"  # one region naming no kernel
    assert attention_fused([layer("a", ["b"])], pam) == "unknown" and attention_fused(fused, []) == "unknown"
    assert attention_fused(unfused[:2], pam) == "unknown"  # a node no layer names
    # an ONNX Attention node's own name is not a kernel: a layer named after it says nothing by that name
    op = [("pam_attention_0",)]
    assert attention_fused([layer("pam_attention_0", ["pam_attention_0"], "", "PointWiseV2")], op) == "unknown"
    assert attention_fused([layer("_gemm_mha_v2_myl0_3", ["pam_attention_0"], "_gemm_mha_v2_0x1", "kgen")], op) is True
    assert attention_fused([layer("x", ["pam_attention_0"]), layer("y", ["pam_attention_0"])], op) is False


def test_training_memory_counts_the_form_that_runs():
    from danet_edge.train.memory import activation_memory

    cfg = ModelConfig(backbone="resnet18")
    explicit, att = activation_memory((512, 512), 1, cfg, "explicit")
    chunked, _ = activation_memory((512, 512), 1, cfg, "chunked")
    heads, att8 = activation_memory((512, 512), 1, cfg, "heads")
    sdpa, none = activation_memory((512, 512), 1, cfg, "sdpa")
    assert explicit == chunked and att8 == 8 * att and none == 0 and sdpa < explicit < heads


@pytest.mark.slow
@pytest.mark.parametrize("script", ["attention_gpu.py", "train_gpu.py"])
def test_prepared_gpu_scripts_run_tiny_on_a_cpu(script):
    """The GPU scripts (run when a GPU is lent) work here, tiny: the forms agree, the torchrun DDP-of-one
    training path trains and evaluates."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "benchmarks" / script), "--tiny"], cwd=root, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    if script == "attention_gpu.py":
        rows = [ln.split() for ln in r.stdout.splitlines() if ln.strip().startswith("64x128")]
        assert {row[2] for row in rows} == {"explicit", "sdpa", "chunked", "heads"}
        assert all(float(row[-2]) < 1e-5 and float(row[-1]) == 100.0 for row in rows)
    else:
        assert "eval mIoU" in r.stdout and "torchrun (1 process, DDP" in r.stdout


def test_int8_include_attention_quantizes_every_chunk(tiny_checkpoint, tmp_path):
    """The INT8 recipe finds the attention in the chunked form: with --include-attention every chunk's two
    MatMuls (and CAM's two) take Q/DQ; without it, none does."""
    from danet_edge.data.calib import fill_calib_dir

    calib = fill_calib_dir("synthetic", None, 4, tmp_path / "calib")
    for include, want in ((True, 3 * 2 + 2), (False, 0)):
        res = export_model(tiny_checkpoint, ExportConfig(attention="chunked", attention_chunks=3, int8=True,
                                                          include_attention=include, calib=calib, calib_size=4,
                                                          fused_io=False, reference_images=0,
                                                          out=tmp_path / f"i{int(include)}"))
        int8 = next(a for a in res.artifacts if a.manifest.precision == "int8")
        assert len(int8.report["attention_quantized"]) == want


def test_cpu_runtimes_flush_denormals(tiny_checkpoint):
    """PAM's softmax over many keys leaves denormal floats that x86 multiplies many times slower: ONNX Runtime's
    sessions and PyTorch after ``load_model`` flush them to zero (1e-40 is denormal in FP32)."""
    from onnx import TensorProto, helper

    from danet_edge.export.fp32 import ort_session

    loaded = load_model(tiny_checkpoint)
    assert (torch.tensor([1e-30]) * torch.tensor([1e-10])).item() == 0.0
    trace_onnx(loaded, (64, 96), 1, 17, "explicit")  # onnxslim's ONNX Runtime sessions clear it: trace sets it back
    assert (torch.tensor([1e-30]) * torch.tensor([1e-10])).item() == 0.0
    g = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    y = ort_session(m).run(None, {"x": np.array([1e-40, 1.0], np.float32)})[0]
    assert y.tolist() == [0.0, 2.0]


def test_fused_kernel_numerics_keep_the_energy_in_fp32(tiny_checkpoint, tmp_path):
    """The heads FP16 graph has no FP32 Cast between Q/K and the second MatMul (fusible as written); its
    fused-kernel form computes Q K^T and the softmax in FP32, rounds P to FP16 and accumulates P V in FP32, and
    runs like the graph; the explicit form is left as it is; the backend row runs it and says so."""
    from danet_edge.export.export import ExportConfig, export_model
    from danet_edge.graph.fused_attention import FUSED_NUMERICS, fused_attention_numerics, fusible_attentions
    from danet_edge.runtime.backends import open_backend

    res = export_model(tiny_checkpoint, ExportConfig(attention="heads", fp16=True, fused_io=False, reference_images=0,
                                                     out=tmp_path / "h"))
    fp16 = next(a for a in res.artifacts if a.manifest.precision == "fp16")
    g = onnx.load(str(fp16.path))
    att = attention_nodes(g)
    prod = {o: n for n in g.graph.node for o in n.output}
    by_name = {n.name: n for n in g.graph.node}
    for name in (att.pam_energy[0], att.pam_out[0]):  # no Cast to FP32 feeds either attention MatMul
        assert all(prod[i].op_type != "Cast" for i in by_name[name].input if i in prod)
    assert by_name[att.pam_softmax[0]].input[0] == by_name[att.pam_energy[0]].output[0]
    assert fusible_attentions(g) == [(att.pam_energy[0], att.pam_softmax[0], att.pam_out[0])]
    ver = fp16.verification
    assert ver["attention_numerics"] == FUSED_NUMERICS and "unfused_label_agreement_vs_fp32" in ver
    fused = fused_attention_numerics(g)
    onnx.checker.check_model(fused, full_check=True)
    types = {v.name: v.type.tensor_type.elem_type
             for v in onnx.shape_inference.infer_shapes(fused).graph.value_info}
    energy = next(n for n in fused.graph.node if n.op_type == "MatMul" and n.name.endswith("_energy"))
    assert types[energy.output[0]] == onnx.TensorProto.FLOAT  # Q K^T in FP32
    p_low = next(n for n in fused.graph.node if n.name.endswith("_p_low"))
    assert types[p_low.output[0]] == onnx.TensorProto.FLOAT16  # P rounded to the graph's type
    assert not any(n.name in (att.pam_energy + att.pam_softmax + att.pam_out) for n in fused.graph.node)
    explicit = export_model(tiny_checkpoint, ExportConfig(attention="explicit", fp16=True, fused_io=False,
                                                          reference_images=0, out=tmp_path / "e"))
    e16 = next(a for a in explicit.artifacts if a.manifest.precision == "fp16")
    assert not fusible_attentions(onnx.load(str(e16.path))) and "attention_numerics" not in e16.verification
    chunked = export_model(tiny_checkpoint, ExportConfig(attention="chunked", attention_chunks=3, fp16=True,
                                                         fused_io=False, reference_images=0, out=tmp_path / "c"))
    c16 = next(a for a in chunked.artifacts if a.manifest.precision == "fp16")
    assert not fusible_attentions(onnx.load(str(c16.path)))  # V's head size is C: TensorRT materialises its map
    assert "attention_numerics" not in c16.verification
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    with open_backend(fp16.path, backend="onnxruntime-fused-attention") as b, open_backend(fp16.path) as plain:
        assert FUSED_NUMERICS in b.provider
        assert (b.predict(frames).labels == plain.predict(frames).labels).mean() > 0.99
