"""Issue 30 (items 6-8): the boards ``--jetson`` knows, TensorRT's 2^31-element tensor rule, the parser's rules for
ONNX ``Attention``, and export's comparison of what its verification needs with the memory this machine has."""

from __future__ import annotations

import math

import onnx
import pytest
from onnx import TensorProto, helper

from _runtime_helpers import run_cli
from danet_edge.core.errors import CompatibilityError, ConfigError
from danet_edge.core.manifest import Manifest, read_manifest
from danet_edge.export.config import ExportConfig
from danet_edge.graph.boards import BOARD_MEMORY_GIB, BOARDS, board_budget_mib, board_of
from danet_edge.graph.cost import JETSON_TARGETS, graph_cost
from danet_edge.graph.trtcheck import MAX_TENSOR_ELEMENTS, check_tensorrt_compat, enforce_tensorrt_compat
from danet_edge.model.forms import map_shape
from danet_edge.trt.plan import EngineConfig, plan_build

NEW = ("agx-thor-128gb", "orin-nx-8gb", "agx-orin-32gb", "orin-nano-4gb")


# ------------------------------------------------------------------------------------------------ boards

def test_new_boards_carry_their_data_sheet_facts():
    for key in NEW:
        b = BOARDS[key]
        assert b.source and b.memory_gib > 0 and b.bandwidth_gbs > 0 and b.tensorrt, key
        ExportConfig(jetson=key)  # a --jetson choice
    thor = BOARDS["agx-thor-128gb"]
    assert (thor.memory_gib, thor.bandwidth_gbs, thor.dla_cores, thor.family) == (128.0, 273.0, 0, "Thor")
    assert ("7.0", "10.13") in thor.tensorrt and ("7.2.2+", "11.4.1") in thor.tensorrt
    assert BOARDS["orin-nx-8gb"].dla_cores == 1 and BOARDS["orin-nx-16gb"].dla_cores == 2
    assert BOARDS["agx-orin-32gb"].dla_cores == 2 and BOARDS["orin-nano-4gb"].dla_cores == 0
    assert BOARDS["orin-nano-4gb"].bandwidth_gbs == 34.0 and BOARDS["agx-orin-32gb"].bandwidth_gbs == 204.8
    # one home: the memory table and the cost rows' bandwidth are read from the records
    assert BOARD_MEMORY_GIB == {k: b.memory_gib for k, b in BOARDS.items()}
    assert all(JETSON_TARGETS[k].bandwidth_gbs == BOARDS[k].bandwidth_gbs for k in JETSON_TARGETS)
    assert board_budget_mib("agx-thor-128gb") == 128 * 1024 - 2048
    # TensorRT 11 on a Jetson: JetPack 7.2.2+ on AGX Orin and Thor only; the other Orins stay on JetPack 6's 10.3
    assert [k for k, b in BOARDS.items() if any(t.startswith("11.") for _, t in b.tensorrt)] == \
        ["agx-orin-32gb", "agx-orin-64gb", "agx-thor-128gb"]
    with pytest.raises(ConfigError, match="--jetson"):
        ExportConfig(jetson="agx-thor")


def test_thor_has_memory_but_no_latency_floor():
    """No data-sheet INT8 / FP16 / FP32 peak for Thor: no row, and the cost model and the CLI cope."""
    assert "agx-thor-128gb" not in JETSON_TARGETS
    assert {"orin-nx-8gb", "agx-orin-32gb", "orin-nano-4gb"} <= set(JETSON_TARGETS)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17)])
    assert set(graph_cost(m).bound_ms) == set(JETSON_TARGETS)
    from danet_edge.graph.memory import memory_estimate

    est = memory_estimate(m)
    assert est.boards["agx-thor-128gb"]["fits"] and est.boards["agx-thor-128gb"]["memory_mib"] == 128 * 1024
    assert est.record("agx-thor-128gb")["board"] == "agx-thor-128gb" and "board" not in est.record()


# ------------------------------------------------------------------------------------------------ 2^31 rule

def _map_graph(shape: list[int]) -> onnx.ModelProto:
    """Q (.., L, 8) x K^T (.., 8, L) -> energy -> Softmax: PAM's map of ``shape`` (shape inference only; nothing is
    allocated)."""
    *lead, n, m = shape
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [*lead, n, 8])
    k = helper.make_tensor_value_info("kt", TensorProto.FLOAT, [*lead, 8, m])
    y = helper.make_tensor_value_info("attn", TensorProto.FLOAT, shape)
    g = helper.make_graph([helper.make_node("MatMul", ["q", "kt"], ["energy"], name="pam_energy"),
                           helper.make_node("Softmax", ["energy"], ["attn"], name="pam_softmax", axis=-1)],
                          "g", [q, k], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_tensor_of_2_pow_31_elements_is_refused_naming_it_its_shape_and_the_chunked_form():
    heads = [1, 8, 32768, 32768]  # the heads form at 1024x2048
    v = [x for x in check_tensorrt_compat(_map_graph(heads)) if x.rule == "tensor size"]
    assert {x.node for x in v} == {"energy", "attn"}
    assert all(str(heads) in x.detail and "8,589,934,592" in x.detail and "--attention chunked" in x.detail
               for x in v)
    with pytest.raises(CompatibilityError, match=r"'energy'.*tensor size.*\[1, 8, 32768, 32768\]"):
        enforce_tensorrt_compat(_map_graph(heads))
    # the explicit form at batch 2 is exactly 2^31: refused; at batch 1 (2^30) and just under 2^31: taken
    assert any(x.rule == "tensor size" for x in check_tensorrt_compat(_map_graph([2, 32768, 32768])))
    assert check_tensorrt_compat(_map_graph([1, 32768, 32768])) == []
    assert math.prod([1, 46340, 46340]) <= MAX_TENSOR_ELEMENTS
    assert check_tensorrt_compat(_map_graph([1, 46340, 46340])) == []
    # cpu target: reported, not raised
    assert enforce_tensorrt_compat(_map_graph(heads), target="cpu")


def test_auto_never_picks_a_form_tensorrt_refuses(tiny_checkpoint):
    """Where the memory would take the paper's form but its map reaches 2^31 (batch 2 at 1024x2048), auto chunks."""
    from danet_edge.export.attention import chunks_needed
    from danet_edge.export.fp32 import trace_onnx
    from danet_edge.graph.memory import memory_estimate
    from danet_edge.model.checkpoint import load_model

    est = memory_estimate(trace_onnx(load_model(tiny_checkpoint), (64, 96), 1, 17, "explicit"))
    assert chunks_needed(est, 1, 32768, 1e9) == 1  # 2^30: the explicit form
    k = chunks_needed(est, 2, 32768, 1e9)
    assert k is not None and k >= 4 and math.prod(map_shape("chunked", 2, 32768, k)) <= MAX_TENSOR_ELEMENTS


def test_export_of_the_heads_form_at_1024x2048_is_refused_before_tracing(tiny_checkpoint, tmp_path, monkeypatch,
                                                                         capsys):
    from danet_edge.export import export as export_mod

    def no_trace(*_a, **_k):
        raise AssertionError("traced a graph TensorRT refuses")

    monkeypatch.setattr(export_mod, "choose_attention", no_trace)
    cfg = ExportConfig(imgsz=(1024, 2048), attention="heads", jetson="agx-orin-64gb", reference_images=0,
                       out=tmp_path / "h")
    with pytest.raises(ConfigError, match=r"heads form at 1024x2048.*\[1, 8, 32768, 32768\].*2\^31.*"
                                          r"--attention chunked \(16 query chunks.*--imgsz 720 1448 or smaller"):
        export_mod.export_model(tiny_checkpoint, cfg)
    assert not (tmp_path / "h" / "model.onnx").exists()
    with pytest.raises(ConfigError, match=r"explicit form at 1024x2048 \(batch 2\).*2,147,483,648"):
        export_mod.export_model(tiny_checkpoint, ExportConfig(imgsz=(1024, 2048), batch=2, attention="explicit",
                                                              jetson="agx-thor-128gb", reference_images=0,
                                                              out=tmp_path / "e"))
    code, _, err = run_cli(["export", tiny_checkpoint, "--imgsz", "1024", "2048", "--attention", "heads", "--jetson",
                            "agx-orin-64gb", "--reference-images", "0", "-o", tmp_path / "c"], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and "--attention chunked" in err[0]


# ------------------------------------------------------------------------------------------------ Attention rules

def _attention_graph(q_shape=(1, 8, 16, 4), attrs=None, inputs=("q", "k", "v"), outputs=("y",)):
    n = list(q_shape)
    vi = [helper.make_tensor_value_info(t, TensorProto.FLOAT, n) for t in ("q", "k", "v")]
    extra_in = [helper.make_tensor_value_info(t, TensorProto.FLOAT, n) for t in inputs[3:] if t]
    outs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in outputs if t]
    node = helper.make_node("Attention", list(inputs), list(outputs), name="att", **(attrs or {}))
    if len(n) == 3:
        node.attribute.extend([helper.make_attribute("q_num_heads", 2), helper.make_attribute("kv_num_heads", 2)])
    g = helper.make_graph([node], "g", vi + extra_in, outs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)])


def _att_rules(model):
    return {v.rule for v in check_tensorrt_compat(model, (10, 14)) if v.node == "att"}


def test_attention_parser_rules():
    assert _att_rules(_attention_graph(attrs={"scale": 1.0})) == set()  # the attention-op form's node
    assert _att_rules(_attention_graph()) == set()
    for attr, value in (("softcap", 30.0), ("softmax_precision", TensorProto.FLOAT), ("qk_matmul_output_mode", 1)):
        v = [x for x in check_tensorrt_compat(_attention_graph(attrs={attr: value}), (10, 14)) if x.node == "att"]
        assert any(x.rule == "Attention attributes" and attr in x.detail for x in v), attr
    kv = _attention_graph(inputs=("q", "k", "v", "", "pk", "pv"), outputs=("y", "present_k", "present_v"))
    assert {"Attention past/present KV", "Attention outputs"} <= _att_rules(kv)
    assert "Attention outputs" in _att_rules(_attention_graph(outputs=("y", "", "", "qk")))
    assert "Attention 4-D inputs" in _att_rules(_attention_graph(q_shape=(1, 16, 8)))
    # before 10.14 the node is refused as an operator, its attributes are not judged
    assert {v.rule for v in check_tensorrt_compat(_attention_graph(attrs={"softcap": 1.0}))
            if v.node == "att"} == {"operator support"}


# ------------------------------------------------------------------------------------------------ DLA by board

def _manifest(board: str | None, precision: str = "fp16") -> Manifest:
    extra = {"memory": {"board": board}} if board else {}
    return Manifest(kind="onnx", precision=precision, model={}, classes=["a", "b"], palette=[[0, 0, 0], [1, 1, 1]],
                    mean=[0.5] * 3, std=[0.5] * 3, input_shape=[1, 3, 64, 96], output_shape=[1, 2, 64, 96],
                    extra=extra)


def test_dla_core_is_refused_for_a_graph_exported_for_a_board_without_it():
    """Thor (no DLA in its family) is refused; a core the --jetson module lacks is a warning (a larger module has it)."""
    thor = plan_build("m.onnx", EngineConfig(dla_core=0), "11.4.1", manifest=_manifest("agx-thor-128gb"))
    assert len(thor.refusals) == 1 and "Jetson AGX Thor" in thor.refusals[0] and "no DLA" in thor.refusals[0]
    assert "--jetson agx-thor-128gb" in thor.refusals[0]
    assert not plan_build("m.onnx", EngineConfig(), "11.4.1", manifest=_manifest("agx-thor-128gb")).refusals
    nx8 = plan_build("m.onnx", EngineConfig(dla_core=1), "10.3.0", manifest=_manifest("orin-nx-8gb"))
    # --jetson is the smallest board the graph must fit: an Orin NX 16GB or AGX Orin has core 1, so a warning
    assert not nx8.refusals and any("1 DLA core 0" in w and "only on a module with that core" in w for w in nx8.warnings)
    assert not plan_build("m.onnx", EngineConfig(dla_core=0), "10.3.0", manifest=_manifest("orin-nx-8gb")).refusals
    agx = plan_build("m.onnx", EngineConfig(dla_core=1), "11.4.1", manifest=_manifest("agx-orin-32gb"))
    assert not agx.refusals and not agx.warnings
    nano = plan_build("m.onnx", EngineConfig(dla_core=0), "10.3.0", manifest=_manifest("orin-nano-8gb"))
    assert not nano.refusals and any("no DLA" in w and "AGX Orin" in w for w in nano.warnings)
    nx16 = plan_build("m.onnx", EngineConfig(dla_core=0), "11.4.1", manifest=_manifest("orin-nx-16gb"))
    assert not nx16.refusals and any("no TensorRT 11" in w for w in nx16.warnings)
    assert not plan_build("m.onnx", EngineConfig(dla_core=0), "10.3.0", manifest=_manifest(None)).refusals
    assert board_of({"memory": {"board": "no-such-board"}}) is None


# ------------------------------------------------------------------------------------------------ end to end

def test_thor_end_to_end_records_the_board_and_build_refuses_dla(tiny_checkpoint, tmp_path, capsys):
    from danet_edge.export.export import export_model

    res = export_model(tiny_checkpoint, ExportConfig(jetson="agx-thor-128gb", fp16=True, reference_images=0,
                                                     out=tmp_path / "t"))
    assert res.attention["budget_mib"] == pytest.approx(128 * 1024 - 2048 - 1024)
    for a in res.artifacts:  # the FP32 graph and the FP16 graph derived from it
        mem = read_manifest(a.path).extra["memory"]
        assert mem["board"] == "agx-thor-128gb" and mem["fits"]["agx-thor-128gb"] and mem["positions"] == 96
    graph = res.artifacts[-1].path
    code, _, err = run_cli(["build", graph, "--dla-core", "0"], capsys)
    assert code == 2 and len(err) == 1 and "no DLA" in err[0] and "Jetson AGX Thor" in err[0], err
    code, out, _ = run_cli(["cost", graph], capsys)
    assert code == 0 and "agx-thor-128gb" in out


# ------------------------------------------------------------------------------------------------ host memory

def test_verification_compares_its_need_with_the_memory_available(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from danet_edge.export import limits
    from danet_edge.export.export import export_model

    monkeypatch.setattr(limits, "available_mib", lambda: 1.0)  # as if this machine had 1 MiB free
    with pytest.raises(ConfigError, match=r"verifying the explicit graph at 64x96 \(batch 1\) in ONNX Runtime needs "
                                          r"about \d+ MiB here.*has 1 MiB available: a smaller --imgsz"):
        export_model(tiny_checkpoint, ExportConfig(attention="explicit", reference_images=0, out=tmp_path / "v"))
    assert not (tmp_path / "v" / "model.onnx").exists()  # refused before ONNX Runtime ran anything
    code, _, err = run_cli(["export", tiny_checkpoint, "--reference-images", "0", "-o", tmp_path / "w"], capsys)
    errors = [line for line in err if line.startswith("error:")]
    assert code == 2 and errors == err[-1:] and "MiB available" in errors[0] and "Traceback" not in "".join(err)
    monkeypatch.setattr(limits, "available_mib", lambda: 1e9)
    res = export_model(tiny_checkpoint, ExportConfig(attention="explicit", reference_images=0, out=tmp_path / "v"))
    m = read_manifest(res.artifacts[0].path)
    # the chunked form of the same weights needs less than the explicit graph: what the refusal offers
    chunked = limits.chunked_need_mib(m.extra["memory"], 1)
    assert chunked is not None and 0 < chunked <= m.extra["memory"]["total_mib"]
    # the reference bundle: PyTorch runs here too, checked before it starts
    from danet_edge.export.reference import make_bundle

    monkeypatch.setattr(limits, "available_mib", lambda: 1.0)
    with pytest.raises(ConfigError, match=r"reference bundle \(PyTorch FP32 at 64x96, batch 1\).*--reference-images 0"):
        make_bundle(tiny_checkpoint, m, [], None, 255, "synthetic", tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_a_graph_too_large_to_verify_here_is_offered_the_chunked_form():
    """The explicit form at 1024x1024 (a 1 GiB map): its chunked form (4 slices of 256 MiB) needs less; the refusal
    gives both figures and that form; with enough memory nothing is refused."""
    from types import SimpleNamespace

    from danet_edge.export import limits
    from danet_edge.graph.memory import AttentionForm, MemoryEstimate

    est = MemoryEstimate(40.0, 2200.0, 2240.0, AttentionForm("explicit", positions=16384, map_mib=1024.0),
                         other_mib=300.0, beside_map_mib=150.0)
    plan = SimpleNamespace(cfg=SimpleNamespace(batch=1), size=(1024, 1024))
    assert limits.chunked_need_mib(est.record(), 1) == pytest.approx(40 + 150 + 256)
    limits_available = limits.available_mib
    try:
        limits.available_mib = lambda: 1000.0
        with pytest.raises(ConfigError, match=r"needs about 2240 MiB here .* has 1000 MiB available: export "
                                              r"--attention chunked \(the same weights, PAM in query slices: about 446 MiB"):
            limits.check_verification_memory(plan, est)
        limits.available_mib = lambda: 3000.0
        limits.check_verification_memory(plan, est)
    finally:
        limits.available_mib = limits_available
    assert limits.chunked_need_mib({"weights_mib": 1.0}, 1) is None  # a record from before: nothing to judge


def test_jetpack_7_releases_are_named_from_l4t():
    from danet_edge.bench.jetson import parse_nv_tegra_release

    assert parse_nv_tegra_release("# R38 (release), REVISION: 2.1, GCID: 1, BOARD: generic")["jetpack"] == "7.0"
    assert parse_nv_tegra_release("# R38 (release), REVISION: 4.0, GCID: 1, BOARD: generic")["jetpack"] == "7.1"
