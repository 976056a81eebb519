"""Bench: fields, positive latencies, ratios against the reference, skipped GPU variants, plot."""

from __future__ import annotations

import json
import sys

import pytest

from danet_edge.bench import BenchConfig, bench_artifacts, latency_stats
from danet_edge.errors import ConfigError

from conftest import make_tiny_checkpoint


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from danet_edge.export import ExportConfig, export_model

    root = tmp_path_factory.mktemp("bench")
    ckpt = make_tiny_checkpoint(root / "tiny.pt", num_classes=5, image_size=(64, 96))
    onnx_path = export_model(ckpt, ExportConfig(out=root / "export", fused_io=False)).artifacts[0].path
    return {"root": root, "ckpt": ckpt, "onnx": onnx_path}


def test_latency_stats():
    s = latency_stats([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["p50"] == 3.0 and s["min"] == 1.0 and s["mean"] == pytest.approx(22.0)
    assert s["p50"] <= s["p90"] <= s["p99"] <= 100.0


def test_bench_json_fields_and_ratios(artifacts, tmp_path):
    cfg = BenchConfig(reference=artifacts["ckpt"], warmup=1, runs=3, json_path=tmp_path / "b.json",
                      plot_path=tmp_path / "b.png")
    rep = bench_artifacts([artifacts["onnx"]], cfg)
    data = json.loads((tmp_path / "b.json").read_text())
    entries = {e["name"]: e for e in data["entries"]}
    ref = [e for e in data["entries"] if e["is_reference"]]
    assert len(ref) == 1 and ref[0]["speedup_vs_reference"] == 1.0 and ref[0]["backend"] == "torch"
    onnx_e = entries["model.onnx"]
    for e in (ref[0], onnx_e):
        for key in ("latency_mean_ms", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_min_ms",
                    "throughput_fps", "setup_s"):
            assert e[key] > 0, key
        assert e["latency_min_ms"] <= e["latency_p50_ms"] <= e["latency_p90_ms"] <= e["latency_p99_ms"]
        assert e["throughput_fps"] == pytest.approx(e["batch"] * 1000.0 / e["latency_mean_ms"])
        assert e["host_peak_mib"] is not None and e["host_peak_mib"] >= 0
        assert e["image_size"] == [64, 96] and e["batch"] == 1 and e["runs"] == 3
    assert onnx_e["speedup_vs_reference"] == pytest.approx(ref[0]["latency_p50_ms"] / onnx_e["latency_p50_ms"])
    assert onnx_e["agreement"] > 99.0  # same model, FP32: labels on the bench batch agree
    assert onnx_e["precision"] == "fp32" and onnx_e["backend"] == "onnxruntime"
    assert data["machine"]["cpu_count"] >= 1 and data["config"]["runs"] == 3
    # GPU-only PyTorch variants: skipped with a reason here (no GPU in tests)
    import torch

    if not torch.cuda.is_available():
        variants = [e for e in data["entries"] if e["name"].startswith("pytorch-") and not e["is_reference"]]
        assert {e["name"] for e in variants} >= {"pytorch-fp16-autocast", "pytorch-bf16-autocast",
                                                  "pytorch-fp32-explicit-pam"}
        assert all(e["skipped"] and "GPU" in e["skipped"] and e["latency_p50_ms"] is None for e in variants)
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rep.plot_path == str(tmp_path / "b.png")


def test_bench_uses_check_json_miou(artifacts, tmp_path):
    check = {"artifacts": [{"path": str(artifacts["onnx"]), "miou": 42.5}]}
    (tmp_path / "check.json").write_text(json.dumps(check))
    rep = bench_artifacts([artifacts["onnx"]], BenchConfig(warmup=0, runs=1, check_json=tmp_path / "check.json",
                                                           plot_path=tmp_path / "p.png"))
    (e,) = rep.entries
    assert e.miou == 42.5 and e.agreement is None  # no reference given: no agreement
    assert e.speedup_vs_reference == 1.0 and e.speedup_baseline == "model.onnx"  # the FP32 graph is the baseline
    assert rep.notes and "PyTorch reference not timed" in rep.notes[0]
    assert (tmp_path / "p.png").is_file()


def test_without_reference_the_fp32_artifact_is_the_baseline(artifacts, tmp_path):
    """The device runtime's bench: no --reference, speed-ups relative to the FP32 graph, a note says so."""
    import onnx

    src = artifacts["onnx"]
    other = tmp_path / "model_other.onnx"
    graph = onnx.load(str(src))
    del graph.metadata_props[:]  # no embedded manifest to disagree with the relabelled sidecar below
    onnx.save(graph, str(other))
    manifest = json.loads(src.with_name(src.name + ".json").read_text())
    manifest["precision"] = "fp16"  # stands for a reduced-precision artifact of the same size and batch
    other.with_name(other.name + ".json").write_text(json.dumps(manifest))
    rep = bench_artifacts([other, src], BenchConfig(warmup=0, runs=2, json_path=tmp_path / "b.json"))
    by = {e.name: e for e in rep.entries}
    assert not any(e.is_reference for e in rep.entries)
    assert by["model.onnx"].speedup_vs_reference == 1.0 and by["model.onnx"].speedup_baseline == "model.onnx"
    o = by["model_other.onnx"]
    assert o.speedup_baseline == "model.onnx"
    assert o.speedup_vs_reference == pytest.approx(by["model.onnx"].latency_p50_ms / o.latency_p50_ms)
    assert rep.notes == ["PyTorch reference not timed here (no --reference checkpoint): speed-up is relative to "
                         "the FP32 artifact model.onnx (same size and batch)"]
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["notes"] == rep.notes and data["machine"]["python"]
    # no FP32 artifact: no speed-up, and the note says why
    rep = bench_artifacts([other], BenchConfig(warmup=0, runs=1))
    assert rep.entries[0].speedup_vs_reference is None and "no FP32 artifact" in rep.notes[0]


def test_plot_without_matplotlib_is_a_warning(artifacts, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    rep = bench_artifacts([artifacts["onnx"]], BenchConfig(warmup=0, runs=1, plot_path=tmp_path / "p.png",
                                                           json_path=tmp_path / "b.json"))
    assert rep.plot_path is None and not (tmp_path / "p.png").exists() and (tmp_path / "b.json").is_file()
    assert any("not written: matplotlib is not installed" in w and "[" not in w for w in rep.warnings)


def test_machine_info_imports_nothing_heavy():
    import subprocess

    code = ("import sys; sys.modules['torch'] = None; from danet_edge.measure import machine_info, gpu_reset;"
            "m = machine_info(); assert m['torch_threads'] is None and m['cpu_count'] >= 1, m;"
            "assert gpu_reset() is None; print(sorted(k for k in ('onnxruntime', 'cv2') if k in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_static_batch_not_requested_is_skipped(artifacts):
    rep = bench_artifacts([artifacts["onnx"]], BenchConfig(warmup=0, runs=1, batches=(2,)))
    (e,) = rep.entries
    assert e.skipped and "static batch 1" in e.skipped and e.latency_p50_ms is None


def test_checkpoint_at_several_batches(artifacts):
    rep = bench_artifacts([artifacts["ckpt"]], BenchConfig(warmup=0, runs=2, batches=(1, 2)))
    assert [(e.batch, e.backend) for e in rep.entries] == [(1, "torch"), (2, "torch")]
    assert all(e.latency_p50_ms > 0 for e in rep.entries)


def test_bad_options():
    with pytest.raises(ConfigError):
        BenchConfig(runs=0)
    with pytest.raises(ConfigError):
        BenchConfig(batches=(0,))
    with pytest.raises(ConfigError):
        bench_artifacts([], BenchConfig())


def test_cli_bench(artifacts, tmp_path, monkeypatch):
    from danet_edge.cli import main

    monkeypatch.setattr(sys, "argv", ["danet-edge", "bench", str(artifacts["onnx"]), "--reference",
                                      str(artifacts["ckpt"]), "--warmup", "0", "--runs", "2",
                                      "--json", str(tmp_path / "b.json")])
    with pytest.raises(SystemExit) as e:
        main()
    assert (e.value.code or 0) == 0
    names = [x["name"] for x in json.loads((tmp_path / "b.json").read_text())["entries"]]
    assert "model.onnx" in names and any("reference" in n for n in names)
