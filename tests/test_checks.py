"""Accuracy check: thresholds fire on broken artifacts, the reference agrees with itself, precision
is read from the graph, and the reference mIoU equals ``evaluate``'s."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from danet_edge.check.thresholds import DEFAULT_THRESHOLDS, Thresholds, load_thresholds, parse_threshold_overrides
from danet_edge.check.config import CheckConfig
from danet_edge.check.run import check_artifacts
from danet_edge.core.errors import CheckFailed, ConfigError
from danet_edge.core.manifest import read_manifest, write_manifest

from conftest import make_sensitive_checkpoint

SIZE = (64, 96)  # multiple of the output stride: evaluate() needs no padding at this size


def sensitive_checkpoint(path: Path) -> Path:
    """An 8-class (the synthetic classes) checkpoint whose labels follow the image."""
    return make_sensitive_checkpoint(path, num_classes=8, image_size=SIZE)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny 8-class checkpoint and its FP32 ONNX export."""
    from danet_edge.export.export import ExportConfig, export_model

    root = tmp_path_factory.mktemp("checks")
    ckpt = sensitive_checkpoint(root / "tiny.pt")
    res = export_model(ckpt, ExportConfig(out=root / "export", fused_io=False))
    return {"root": root, "ckpt": ckpt, "onnx": res.artifacts[0].path}


def _dataset(n: int = 4, size=SIZE):
    from danet_edge.data.datasets import build_dataset

    return build_dataset("synthetic", split="val", limit=n, size=size)


def _perturbed_copy(src: Path, dst: Path, scale: float = 3.0) -> Path:
    """Copy an ONNX graph + manifest with the final (classifier) conv's weights perturbed."""
    model = onnx.load(str(src))
    last_conv = [n for n in model.graph.node if n.op_type == "Conv"][-1]
    inits = {i.name: i for i in model.graph.initializer}
    w = inits[last_conv.input[1]]
    arr = numpy_helper.to_array(w)
    rng = np.random.default_rng(0)
    w.CopyFrom(numpy_helper.from_array((arr + scale * arr.std() * rng.standard_normal(arr.shape)).astype(arr.dtype),
                                       w.name))
    onnx.save(model, str(dst))
    write_manifest(dst, read_manifest(src))
    return dst


def test_reference_against_itself_is_exact(setup):
    rep = check_artifacts([setup["ckpt"]], setup["ckpt"], _dataset(), CheckConfig())
    a = rep.artifacts[0]
    assert rep.passed and a.passed
    assert a.agreement == 100.0
    assert a.max_abs_error == 0.0 and a.rel_l2_error == 0.0 and a.cosine_similarity == pytest.approx(1.0)
    assert a.miou_delta == 0.0 and a.nonfinite == 0
    assert a.precision == "fp32" and a.kind == "checkpoint" and a.frames == 4


def test_reference_miou_equals_evaluate(setup):
    from danet_edge.train.evaluate import evaluate

    ds = _dataset(6)
    rep = check_artifacts([setup["ckpt"]], setup["ckpt"], ds, CheckConfig())
    ev = evaluate(setup["ckpt"], ds)
    assert rep.artifacts[0].reference_miou == pytest.approx(100.0 * ev.miou, abs=1e-9)
    assert rep.artifacts[0].reference_pixel_accuracy == pytest.approx(100.0 * ev.pixel_accuracy, abs=1e-9)


def test_good_onnx_passes_broken_onnx_fails_with_reports(setup, tmp_path):
    broken = _perturbed_copy(setup["onnx"], tmp_path / "broken.onnx")
    cfg = CheckConfig(json_path=tmp_path / "check.json", report_dir=tmp_path / "report")
    rep = check_artifacts([setup["onnx"], broken], setup["ckpt"], _dataset(), cfg)
    good, bad = rep.artifacts
    assert good.passed, good.failures
    assert good.agreement >= 99.9 and good.rel_l2_error < 1e-4 and good.precision == "fp32"
    assert not bad.passed and not rep.passed
    assert bad.agreement < 99.9 and any("agreement" in f for f in bad.failures)
    assert bad.rel_l2_error > 0.1
    # every report written although one artifact failed
    data = json.loads((tmp_path / "check.json").read_text())
    assert data["passed"] is False and [a["passed"] for a in data["artifacts"]] == [True, False]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "FAILED" in md and "broken.onnx" in md
    # the compute-by-precision cost of each graph, in the JSON and the report (issue 9)
    cost = data["artifacts"][0]["precision_detail"]["cost"]
    assert cost["by_precision"]["fp32"]["flop_share_pct"] == 100.0 and "agx-orin-64gb" in cost["bound_ms"]
    assert md.count("estimated lower bound on agx-orin-64gb") == 2
    for a in rep.artifacts:
        assert a.picture and Path(a.picture).is_file() and Path(a.picture).stat().st_size > 0
    with pytest.raises(CheckFailed, match="broken.onnx"):
        rep.raise_for_failure()


def _run_cli(monkeypatch, *args: str) -> int:
    from danet_edge.cli import main

    monkeypatch.setattr(sys, "argv", ["danet-edge", *args])
    with pytest.raises(SystemExit) as e:
        main()
    return int(e.value.code or 0)


def test_cli_exit_code_follows_the_check(setup, tmp_path, monkeypatch, capsys):
    broken = _perturbed_copy(setup["onnx"], tmp_path / "broken.onnx")
    common = ["--reference", str(setup["ckpt"]), "--dataset", "synthetic", "--limit", "2"]
    assert _run_cli(monkeypatch, "check", str(setup["onnx"]), *common, "--json", str(tmp_path / "ok.json")) == 0
    assert json.loads((tmp_path / "ok.json").read_text())["passed"] is True
    code = _run_cli(monkeypatch, "check", str(setup["onnx"]), str(broken), *common, "--json", str(tmp_path / "bad.json"))
    assert code == 1
    assert "broken.onnx" in capsys.readouterr().err
    assert (tmp_path / "bad.json").is_file()  # written before the non-zero exit
    # a loose threshold lets the broken graph through: thresholds are really what decides
    assert _run_cli(monkeypatch, "check", str(broken), *common, "--min-agreement", "0",
                    "--max-miou-drop", "100") == 0


def test_cli_backend_option_runs_the_artifact_there_and_records_it(setup, tmp_path, monkeypatch):
    """``check --backend openvino`` runs the graph on OpenVINO (the provider in the JSON says so) with the same
    labels as ONNX Runtime on an FP32 graph; the default stays by suffix (ONNX Runtime)."""
    pytest.importorskip("openvino")
    common = [str(setup["onnx"]), "--reference", str(setup["ckpt"]), "--dataset", "synthetic", "--limit", "2"]
    assert _run_cli(monkeypatch, "check", *common, "--json", str(tmp_path / "ort.json")) == 0
    assert _run_cli(monkeypatch, "check", *common, "--backend", "openvino", "--json", str(tmp_path / "ov.json")) == 0
    ort, ov = (json.loads((tmp_path / f).read_text())["artifacts"][0] for f in ("ort.json", "ov.json"))
    assert ort["provider"].startswith("ONNX Runtime") and ov["provider"].startswith("OpenVINO")
    assert ov["agreement"] > 99.0 and abs(ov["miou"] - ort["miou"]) < 1.0


def test_precision_is_read_from_the_graph_not_the_name(setup, tmp_path):
    fake = tmp_path / "model_fp16.onnx"
    graph = onnx.load(str(setup["onnx"]))
    del graph.metadata_props[:]  # a graph from another tool: only its sidecar describes it (with the embedded
    onnx.save(graph, str(fake))  # manifest, read_manifest refuses the pair outright: tests/test_bad_input.py)
    m = read_manifest(setup["onnx"])
    m.precision = "fp16"
    write_manifest(fake, m)
    rep = check_artifacts([fake], setup["ckpt"], _dataset(2), CheckConfig())
    a = rep.artifacts[0]
    assert a.precision == "fp32" and a.manifest_precision == "fp16"
    assert not a.passed
    assert any("manifest claims fp16" in f and "fp32" in f for f in a.failures)
    # accuracy itself is fine: only the precision lie fails it
    assert a.agreement >= 99.9


def test_threshold_parsing():
    th = parse_threshold_overrides(["fp16=99.0", "98.5"], ["int8=1.5"])
    assert th["fp16"].min_agreement == 98.5  # later value for all precisions overrides
    th = parse_threshold_overrides(["fp16=99.0"], ["int8=1.5"])
    assert th["fp16"] == Thresholds(99.0, DEFAULT_THRESHOLDS["fp16"].max_miou_drop)
    assert th["int8"] == Thresholds(DEFAULT_THRESHOLDS["int8"].min_agreement, 1.5)
    assert "fp32" not in th  # not named: its artifacts keep their recipe's limits
    with pytest.raises(ConfigError):
        parse_threshold_overrides(["bf8=99"])
    with pytest.raises(ConfigError):
        parse_threshold_overrides(["fp16=high"])
    with pytest.raises(ConfigError):
        CheckConfig(thresholds={"fp64": Thresholds(1, 1)})


def test_thresholds_file(tmp_path):
    p = tmp_path / "th.json"
    p.write_text(json.dumps({"int8": {"min_agreement": 97}}))
    th = load_thresholds(p)
    assert th["int8"] == Thresholds(97.0, DEFAULT_THRESHOLDS["int8"].max_miou_drop)
    p.write_text(json.dumps({"int8": {"agreement": 97}}))
    with pytest.raises(ConfigError):
        load_thresholds(p)


def test_cli_refuses_file_and_options_together(setup, tmp_path, monkeypatch, capsys):
    p = tmp_path / "th.json"
    p.write_text("{}")
    code = _run_cli(monkeypatch, "check", str(setup["onnx"]), "--reference", str(setup["ckpt"]), "--limit", "1",
                    "--thresholds", str(p), "--min-agreement", "90")
    assert code == 2 and "not both" in capsys.readouterr().err


@pytest.mark.slow
def test_int8_calibrated_on_noise_fails(setup, tmp_path):
    """A graph calibrated on noise images gets activation ranges unlike real scenes' and misses the
    INT8 thresholds; the same export calibrated on real scenes does better."""
    import cv2

    from danet_edge.data.calib import fill_calib_dir
    from danet_edge.export.export import ExportConfig, export_model

    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        img = (rng.standard_normal((*SIZE, 3)) * 10 + 20).clip(0, 255).astype(np.uint8)  # dark noise
        cv2.imwrite(str(noise / f"n{i}.png"), img)
    real = fill_calib_dir("synthetic", None, 8, tmp_path / "real")
    outs = {}
    for name, calib in (("noise", noise), ("real", real)):
        res = export_model(setup["ckpt"], ExportConfig(int8=True, target="cpu", calib=calib, calib_method="minmax", fused_io=False,
                                                       out=tmp_path / name))
        outs[name] = res.artifacts[-1].path
    rep = check_artifacts([outs["real"], outs["noise"]], setup["ckpt"], _dataset(4), CheckConfig())
    real_r, noise_r = rep.artifacts
    assert real_r.precision == noise_r.precision == "int8"
    print(f"agreement real {real_r.agreement:.2f} %, noise {noise_r.agreement:.2f} %")
    assert not noise_r.passed
    assert noise_r.agreement < real_r.agreement


def test_check_follows_the_infer_path(setup):
    """Images of another size than the artifact: mIoU equals segment_frames' labels (what infer
    writes) scored at the image size."""
    from danet_edge.core.metrics import ConfusionMatrix
    from danet_edge.runtime.backends import open_backend, segment_frames

    ds = _dataset(3, size=(80, 112))
    rep = check_artifacts([setup["onnx"]], setup["ckpt"], ds, CheckConfig())
    cm = ConfusionMatrix(8, ds.info.ignore_index)
    with open_backend(setup["onnx"]) as b:
        frames = [ds[i] for i in range(3)]
        for lab, (_, mask) in zip(segment_frames(b, [f for f, _ in frames]), frames):
            assert lab.shape == mask.shape
            cm.update(lab, mask)
    assert rep.artifacts[0].miou == pytest.approx(100.0 * cm.miou(), abs=1e-9)
    assert rep.artifacts[0].image_size == list(SIZE)
