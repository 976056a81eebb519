"""FP32 / fused-I/O ONNX export: static shapes, PyTorch agreement, manifests, CLI errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from danet_edge.model.checkpoint import load_model
from danet_edge.core.compare import relative_l2
from danet_edge.core.errors import ConfigError
from danet_edge.export.export import ExportConfig, export_model
from danet_edge.core.manifest import read_manifest
from danet_edge.graph.precision import attention_nodes
from danet_edge.data.preprocess import preprocess


def _frames(n=2, size=(64, 96), seed=1):
    rng = np.random.default_rng(seed)
    return [cv2.resize(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8), (size[1], size[0])) for _ in range(n)]


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    plain = export_model(tiny_checkpoint, ExportConfig(out=out / "plain", fused_io=False))
    fused = export_model(tiny_checkpoint, ExportConfig(out=out / "fused", fused_io=True))
    return plain.artifacts[0].path, fused.artifacts[0].path


def test_static_shapes_and_names(exported):
    path, _ = exported
    model = onnx.load(str(path))
    text = str(model.graph)
    assert "dim_param" not in text
    assert not [n for n in model.graph.node if n.op_type in ("Shape", "Dropout")]
    assert [i.name for i in model.graph.input] == ["images"] and [o.name for o in model.graph.output] == ["logits"]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 96]
    inferred = onnx.shape_inference.infer_shapes(model)
    for v in inferred.graph.value_info:
        assert all(d.HasField("dim_value") for d in v.type.tensor_type.shape.dim), v.name


def test_pam_exports_as_matmul_softmax_matmul(exported):
    att = attention_nodes(onnx.load(str(exported[0])))
    assert len(att.pam_energy) == len(att.pam_softmax) == len(att.pam_out) == 1
    assert len(att.cam_energy) == 1 and len(att.cam_reduce) == 2


def test_onnx_matches_pytorch(exported, tiny_checkpoint):
    loaded = load_model(tiny_checkpoint)
    x = preprocess(_frames(), (64, 96))
    sess = ort.InferenceSession(str(exported[0]), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {"images": x[i:i + 1]})[0] for i in range(len(x))])
    with torch.no_grad():
        ref = loaded.model(torch.from_numpy(x)).numpy()
    assert relative_l2(got, ref) < 1e-4


def test_manifest_beside_and_inside(exported, tiny_checkpoint):
    path, fused = exported
    m = read_manifest(path)
    assert m.precision == "fp32" and m.kind == "onnx" and m.opset == 17
    assert m.input_shape == [1, 3, 64, 96] and m.output_shape == [1, 5, 64, 96]
    assert m.source_checkpoint_sha256 == load_model(tiny_checkpoint).sha256
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    inside = json.loads(meta["danet_edge_manifest"])
    assert inside["classes"] == m.classes and inside["mean"] == m.mean
    f = read_manifest(fused)
    assert f.input_dtype == "uint8" and f.output_kind == "labels" and f.input_shape == [1, 64, 96, 3]


def test_fused_io_labels_equal_argmax_of_plain(exported):
    plain, fused = exported
    frames = _frames(3, seed=7)
    s_plain = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"])
    s_fused = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"])
    assert s_fused.get_outputs()[0].name == "labels" and s_fused.get_inputs()[0].type == "tensor(uint8)"
    for f in frames:
        logits = s_plain.run(None, {"images": preprocess([f], (64, 96))})[0]
        labels = s_fused.run(None, {"images": f[None]})[0]
        assert labels.dtype == np.int32 and labels.shape == (1, 64, 96)
        assert (labels == logits.argmax(1)).mean() > 0.999


def test_memory_limit_is_a_limit(tiny_checkpoint, tmp_path):
    """A graph above --memory-limit-mib is refused, before anything is written (the limit was a warning)."""
    with pytest.raises(ConfigError, match="memory-limit-mib"):
        export_model(tiny_checkpoint, ExportConfig(out=tmp_path / "x", memory_limit_mib=1.0))
    assert not (tmp_path / "x" / "model.onnx").exists()


def _cli(args, capsys):
    """(exit code, stderr lines) of ``danet-edge ARGS`` run in-process."""
    from _runtime_helpers import run_cli

    code, _, err = run_cli(args, capsys)
    return code, err


@pytest.mark.parametrize("case", ["missing", "size", "empty_calib", "bad_image"])
def test_cli_bad_input_one_line_no_file(case, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["export", str(tiny_checkpoint), "--out", str(out)]
    calib = tmp_path / "calib"
    calib.mkdir()
    if case == "missing":
        args[1] = str(tmp_path / "nope.pt")
    elif case == "size":
        args += ["--imgsz", "64", "90"]
    elif case == "empty_calib":
        args += ["--int8", "--calib", str(calib)]
    else:
        cv2.imwrite(str(calib / "good.png"), np.zeros((8, 8, 3), np.uint8))
        (calib / "broken.jpg").write_bytes(b"not an image")
        args += ["--int8", "--calib", str(calib)]
    code, err = _cli(args, capsys)
    assert code != 0
    assert len(err) == 1 and err[0].startswith("error: ")
    expect = {"missing": "nope.pt", "size": "divisible", "empty_calib": "no image", "bad_image": "broken.jpg"}[case]
    assert expect in err[0]
    assert not out.exists() or not any(out.iterdir())


def test_conflicting_options_refused(tiny_checkpoint, tmp_path):
    from danet_edge.core.errors import ConfigError

    with pytest.raises(ConfigError, match="INT8 only"):
        export_model(tiny_checkpoint, ExportConfig(out=tmp_path, calib_method="minmax"))
    with pytest.raises(ConfigError, match="opset"):
        export_model(tiny_checkpoint, ExportConfig(out=tmp_path, opset=21))
    assert not any(Path(tmp_path).iterdir())


# ------------------------------------------- issue 32: a value the user gave is never silently replaced
def test_opset_with_attention_op_is_refused_not_rewritten(tiny_checkpoint, tmp_path, capsys):
    """Case 7: ``--attention attention-op --opset 17`` wrote opset 23 without a word. The form picks the opset only
    when ``--opset`` is not given."""
    ExportConfig(attention="attention-op")  # no --opset: the form's 23
    with pytest.raises(ConfigError, match=r"^--opset 17: --attention attention-op writes opset 23"):
        ExportConfig(attention="attention-op", opset=17)
    code, err = _cli(["-q", "export", str(tiny_checkpoint), "--attention", "attention-op", "--opset", "17",
                      "-o", str(tmp_path / "e")], capsys)
    assert code == 2 and len(err) == 1 and "drop --opset" in err[0], err
    assert not (tmp_path / "e").exists()


def _graph_attention(path: Path) -> tuple[str, int]:
    """PAM's form and chunk count read from the graph itself (``graph.memory.attention_form``)."""
    from danet_edge.graph.memory import attention_form

    a = attention_form(onnx.load(str(path)))
    return a.form, a.chunks


def test_chunks_beyond_the_positions_are_refused(tiny_checkpoint, tmp_path):
    """Case 8: 64 chunks at 32x32 (16 positions) wrote a graph of 16 slices whose manifest said 64."""
    with pytest.raises(ConfigError, match=r"--attention-chunks 64: at 32x32 the attention map has 16 positions "
                                          r"\(query rows\), so at most 16 chunks"):
        export_model(tiny_checkpoint, ExportConfig(imgsz=(32, 32), attention="chunked", attention_chunks=64,
                                                   out=tmp_path / "e"))
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("chunks,form,count", [(None, "chunked", 4), (1, "explicit", 1)],
                         ids=["form_named_without_count", "one_chunk"])
def test_the_manifest_describes_the_graph_beside_it(tiny_checkpoint, tmp_path, chunks, form, count):
    """Case 10: ``--attention chunked`` without a count wrote "1 query chunks", the paper's form under another
    name. Now the form named gets auto's chunks (at least 4), a count of 1 is written and reported as the explicit
    form it is, and the manifest's form and count are the graph's, read back from the graph."""
    lines: list[str] = []
    res = export_model(tiny_checkpoint, ExportConfig(attention="chunked", attention_chunks=chunks, out=tmp_path,
                                                     fused_io=False, reference_images=0), log=lines.append)
    rec = read_manifest(res.artifacts[0].path).extra["attention"]
    assert (rec["form"], rec["chunks"]) == (form, count) == _graph_attention(res.artifacts[0].path)
    pam = next(line for line in lines if line.startswith("PAM: "))
    assert pam.startswith(f"PAM: {form}" + (f", {count} query chunks;" if form == "chunked" else " (--attention "
                                                                                                 "chunked with 1"))


def test_options_that_nothing_would_read_are_refused():
    """A value the user gave is never silently dropped: ``--fp16-tolerance`` without an FP16 graph, ``--dataset``
    when neither a budget nor a reference bundle reads it."""
    with pytest.raises(ConfigError, match="--fp16-tolerance is the FP16 graph's limit"):
        ExportConfig(int8=True, fp16_tolerance=0.1)
    ExportConfig(fp16=True, fp16_tolerance=0.1)
    with pytest.raises(ConfigError, match="nothing reads it: drop --dataset"):
        ExportConfig(dataset="synthetic", reference_images=0)
    ExportConfig(dataset="synthetic", reference_images=0, int8=True, min_agreement=90)
