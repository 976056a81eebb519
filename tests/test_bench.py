"""Bench: fields, positive latencies, ratios against the reference, skipped GPU variants, plot."""

from __future__ import annotations

import json
import sys
import time

import pytest

from danet_edge.bench.config import BenchConfig
from danet_edge.bench.run import bench_artifacts, latency_stats
from danet_edge.core.errors import ConfigError

from conftest import make_tiny_checkpoint

FAST = dict(warmup_s=0.0, duration_s=0.0)  # by count only: these tests check fields, not timing


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from danet_edge.export.export import ExportConfig, export_model

    root = tmp_path_factory.mktemp("bench")
    ckpt = make_tiny_checkpoint(root / "tiny.pt", num_classes=5, image_size=(64, 96))
    onnx_path = export_model(ckpt, ExportConfig(out=root / "export", fused_io=False)).artifacts[0].path
    return {"root": root, "ckpt": ckpt, "onnx": onnx_path}


def test_latency_stats():
    s = latency_stats([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["p50"] == 3.0 and s["min"] == 1.0 and s["mean"] == pytest.approx(22.0)
    assert s["p50"] <= s["p90"] <= s["p99"] <= 100.0


def test_bench_json_fields_and_ratios(artifacts, tmp_path):
    cfg = BenchConfig(**FAST, reference=artifacts["ckpt"], warmup=1, runs=3, json_path=tmp_path / "b.json",
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
    rep = bench_artifacts([artifacts["onnx"]], BenchConfig(**FAST, warmup=0, runs=1, check_json=tmp_path / "check.json",
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
    rep = bench_artifacts([other, src], BenchConfig(**FAST, warmup=0, runs=2, json_path=tmp_path / "b.json"))
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
    rep = bench_artifacts([other], BenchConfig(**FAST, warmup=0, runs=1))
    assert rep.entries[0].speedup_vs_reference is None and "no FP32 artifact" in rep.notes[0]


def test_plot_without_matplotlib_is_a_warning(artifacts, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    rep = bench_artifacts([artifacts["onnx"]], BenchConfig(**FAST, warmup=0, runs=1, plot_path=tmp_path / "p.png",
                                                           json_path=tmp_path / "b.json"))
    assert rep.plot_path is None and not (tmp_path / "p.png").exists() and (tmp_path / "b.json").is_file()
    assert any("not written: matplotlib is not installed" in w and "[" not in w for w in rep.warnings)


def test_machine_info_imports_nothing_heavy():
    import subprocess

    code = ("import sys; sys.modules['torch'] = None; from danet_edge.bench.measure import machine_info, gpu_reset;"
            "m = machine_info(); assert m['torch_threads'] is None and m['cpu_count'] >= 1, m;"
            "assert gpu_reset() is None; print(sorted(k for k in ('onnxruntime', 'cv2') if k in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_static_batch_not_requested_is_skipped(artifacts):
    rep = bench_artifacts([artifacts["onnx"]], BenchConfig(**FAST, warmup=0, runs=1, batches=(2,)))
    (e,) = rep.entries
    assert e.skipped and "static batch 1" in e.skipped and e.latency_p50_ms is None


def test_checkpoint_at_several_batches(artifacts):
    rep = bench_artifacts([artifacts["ckpt"]], BenchConfig(**FAST, warmup=0, runs=2, batches=(1, 2)))
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
                                      "--warmup-s", "0", "--duration", "0",
                                      "--json", str(tmp_path / "b.json")])
    with pytest.raises(SystemExit) as e:
        main()
    assert (e.value.code or 0) == 0
    data = json.loads((tmp_path / "b.json").read_text())
    names = [x["name"] for x in data["entries"]]
    assert "model.onnx" in names and any("reference" in n for n in names)
    ref = next(x for x in data["entries"] if x["is_reference"])  # PyTorch: the forward alone, timed inside predict
    assert ref["compute_timing"].startswith("perf_counter around model(x)") and ref["runs"] == 2
    assert 0 < ref["compute_p50_ms"] <= ref["latency_p50_ms"]
    from danet_edge.bench.jetson import read_board

    if not read_board()["jetson"]:  # this machine, as it is
        assert data["machine"]["jetson"]["board"] == "not a Jetson" and ref["fps_per_w"] == "not a Jetson"


def test_cli_bench_help_gives_the_time_options_in_seconds():
    from typer.testing import CliRunner

    from danet_edge.cli import app

    out = " ".join(CliRunner().invoke(app, ["bench", "--help"], terminal_width=200).output.split())
    assert "--warmup-s" in out and "--duration" in out and "in seconds (trtexec --warmUp" in out
    assert "Timed window, at least, in seconds (trtexec --duration)" in out


# ---------------------------------------------------------------- issue 13: duration, compute split, Jetson power

def test_time_runs_goes_by_count_and_by_duration(monkeypatch):
    """trtexec's rule: warm-up until both --warmup runs and --warmup-s are done, timing until both --runs
    and --duration are done; a cap on the runs; the step's compute time kept per run."""
    from danet_edge.bench import measure

    def slow():
        time.sleep(0.01)
        return 4.0

    t = measure.time_runs(slow, warmup=1, warmup_s=0.15, runs=2, duration_s=0.4)
    assert t.warmup_s >= 0.15 and t.warmup_runs >= 2  # 1 run is far short of 0.15 s: time decides
    assert t.timed_s >= 0.4 and len(t.e2e_ms) >= 2
    assert abs(sum(t.e2e_ms) / 1e3 - t.timed_s) < 0.05  # the window is the runs, nothing else
    assert len(t.e2e_ms) <= 0.4 / 0.01 + 2  # no more than the window holds
    assert all(ms >= 10.0 for ms in t.e2e_ms) and t.compute_ms == [4.0] * len(t.e2e_ms)
    assert t.power == "not a Jetson" and not t.capped
    t = measure.time_runs(lambda: None, warmup=3, warmup_s=0.0, runs=7, duration_s=0.0)
    assert (t.warmup_runs, len(t.e2e_ms), t.compute_ms) == (3, 7, [])  # count decides, no compute figure
    monkeypatch.setattr(measure, "MAX_TIMED_RUNS", 50)
    t0 = time.perf_counter()
    t = measure.time_runs(lambda: None, warmup=0, warmup_s=0.0, runs=5, duration_s=30.0)
    assert len(t.e2e_ms) == 50 and t.capped and time.perf_counter() - t0 < 5


def test_bench_by_duration_on_the_tiny_graph(artifacts):
    rep = bench_artifacts([artifacts["onnx"]], BenchConfig(warmup=1, runs=1, warmup_s=0.2, duration_s=0.5,
                                                           jetson_root=artifacts["root"] / "no-jetson"))
    (e,) = rep.entries
    assert e.timed_s >= 0.5 and e.runs > 1 and e.warmup_runs >= 2  # the tiny graph runs in a few ms
    assert rep.config["duration_s"] == 0.5 and rep.config["warmup_s"] == 0.2


def test_bench_json_off_a_jetson_has_the_timing_split(artifacts, tmp_path):
    """Issue 13's check: a bench JSON on a machine that is not a Jetson says so in every Jetson field and
    still carries end-to-end and compute latency."""
    rep = bench_artifacts([artifacts["onnx"]], BenchConfig(**FAST, warmup=1, runs=5, json_path=tmp_path / "b.json",
                                                           jetson_root=tmp_path / "not-a-jetson"))
    data = json.loads((tmp_path / "b.json").read_text())
    jet = data["machine"]["jetson"]
    assert jet["jetson"] is False
    for key in ("board", "l4t", "jetpack", "nvpmodel", "jetson_clocks", "clocks"):
        assert jet[key] == "not a Jetson", key
    (e,) = data["entries"]
    for key in ("power_source", "power_samples", "power_rails_w", "power_total_w", "energy_per_frame_mj", "fps_per_w"):
        assert e[key] == "not a Jetson", key
    assert e["compute_timing"].startswith("perf_counter around InferenceSession.run")
    assert e["timing"].startswith("end-to-end") and e["runs"] == 5 and e["warmup_runs"] == 1
    # the session run is inside predict(), run by run: compute can never exceed end-to-end
    assert 0 < e["compute_p50_ms"] <= e["latency_p50_ms"] and 0 < e["compute_p99_ms"] <= e["latency_p99_ms"]
    assert 0 < e["compute_mean_ms"] <= e["latency_mean_ms"]
    assert rep.entries[0].compute_p50_ms == e["compute_p50_ms"]


def test_bench_on_a_fake_jetson_reports_power(artifacts, tmp_path, capsys):
    """The fake AGX Orin sysfs tree of test_jetson.py (made-up constant rails: 3.8 + 1.9 + 3.5 + 0.8 W)."""
    from test_jetson import agx_orin_tree

    from danet_edge.cli.render import print_bench_table

    root = agx_orin_tree(tmp_path / "orin")
    rep = bench_artifacts([artifacts["onnx"]], BenchConfig(warmup=0, runs=3, warmup_s=0.0, duration_s=0.3,
                                                           jetson_root=root, json_path=tmp_path / "b.json"))
    jet = rep.machine["jetson"]
    assert jet["jetson"] is True and jet["board"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert (jet["l4t"], jet["jetpack"], jet["jetson_clocks"]) == ("36.4.0", "6.1", True)
    assert jet["clocks"]["gpu"]["cur_mhz"] == 1300.5 and jet["clocks"]["emc"]["cur_mhz"] == 3199.0
    assert rep.machine["gpu"] == jet["board"]
    (e,) = rep.entries
    assert e.power_source == "sysfs" and e.power_samples >= 2
    assert e.power_rails_w == pytest.approx({"VDD_GPU_SOC": 3.8, "VDD_CPU_CV": 1.9, "VIN_SYS_5V0": 3.5,
                                             "VDDQ_VDD2_1V8AO": 0.8})
    assert e.power_total_w == pytest.approx(10.0) and e.power_total_source.startswith("sum of")  # AGX: no input rail
    fps = e.runs * e.batch / e.timed_s
    assert e.timed_s >= 0.3 and e.energy_per_frame_mj == pytest.approx(e.power_total_w * 1000 / fps)
    assert e.fps_per_w == pytest.approx(fps / e.power_total_w)
    assert e.fps_per_w * e.energy_per_frame_mj == pytest.approx(1000.0)  # frames per J x mJ per frame
    assert json.loads((tmp_path / "b.json").read_text())["entries"][0]["power_rails_w"]["VDD_CPU_CV"] == \
        pytest.approx(1.9)
    print_bench_table(rep)
    out = capsys.readouterr().out
    assert "FPS/W" in out and "mJ/frame" in out and "jetson_clocks on" in out and "AGX Orin" in out
    assert f"{e.fps_per_w:.2f}" in out


# ---------------------------------------------------------------- issue 24: --backend, from the backend table

@pytest.mark.parametrize("backend, provider", [("onnxruntime", "ONNX Runtime"), ("openvino", "OpenVINO")])
def test_cli_bench_backend_runs_every_artifact_there_beside_eager(artifacts, tmp_path, capsys, backend, provider):
    """``bench --backend NAME``: the artifact opens through that row of the backend table, its row says so in the
    table, the JSON (``backend``, ``provider``, ``name``) and the plot; the eager reference is timed in the same run
    and the speed-up is the backend's over it."""
    if backend == "openvino":
        pytest.importorskip("openvino")
    from _runtime_helpers import run_cli

    js, png = tmp_path / "b.json", tmp_path / "b.png"
    code, out, err = run_cli(["bench", artifacts["onnx"], "--reference", artifacts["ckpt"], "--backend", backend,
                              "--threads", "1", "--warmup", "0", "--runs", "2", "--warmup-s", "0", "--duration", "0",
                              "--json", js, "--plot", png], capsys)
    assert code in (0, None), err
    data = json.loads(js.read_text())
    assert data["config"]["backend"] == backend and data["config"]["threads"] == 1
    ref = [e for e in data["entries"] if e["is_reference"]]
    art = [e for e in data["entries"] if not e["is_reference"] and e["path"] == str(artifacts["onnx"])]
    assert len(ref) == 1 and ref[0]["backend"] == "torch" and ref[0]["provider"].startswith("PyTorch")
    (e,) = art
    assert e["backend"] == backend and e["provider"].startswith(provider) and e["name"] == f"model.onnx on {backend}"
    assert e["runs"] == 2 and e["latency_p50_ms"] > 0
    assert e["speedup_vs_reference"] == pytest.approx(ref[0]["latency_p50_ms"] / e["latency_p50_ms"])
    assert e["speedup_baseline"] == ref[0]["name"] and e["agreement"] > 99.0  # FP32 graph vs eager
    assert f"model.onnx on {backend}" in " ".join(out.split())  # the table's row
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rows_named_by_backend_only_when_one_is_named(artifacts, tmp_path):
    """No --backend: rows by file name and by suffix, as before; the plot names a --backend row with it."""
    pytest.importorskip("matplotlib")
    from danet_edge.bench.plot import bench_figure

    rep = bench_artifacts([artifacts["onnx"]], BenchConfig(**FAST, warmup=0, runs=1))
    assert [(e.name, e.backend) for e in rep.entries] == [("model.onnx", "onnxruntime")]
    assert rep.config["backend"] is None
    rep = bench_artifacts([artifacts["onnx"]], BenchConfig(**FAST, warmup=0, runs=1, backend="onnxruntime"))
    assert [(e.name, e.backend) for e in rep.entries] == [("model.onnx on onnxruntime", "onnxruntime")]
    fig = bench_figure(rep)
    import matplotlib.pyplot as plt

    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    plt.close(fig)
    assert labels == ["model.onnx on onnxruntime (batch 1)"]


@pytest.mark.parametrize("artifact, backend, kind", [("engine", "openvino", ".engine"),
                                                     ("engine", "openvino-bf16", ".engine"), ("onnx", "torch", ".onnx"),
                                                     ("ckpt", "openvino", ".pt"), ("onnx", "tensorrt", ".onnx")])
def test_cli_bench_backend_that_cannot_run_the_artifact_is_one_error_line(artifacts, tmp_path, capsys, monkeypatch,
                                                                          artifact, backend, kind):
    """A backend that cannot run the artifact's kind (``check_backend_opens``, the backend table's rule) is a usage
    error: one ``error:`` line, exit 2, before anything is opened or timed."""
    from _runtime_helpers import run_cli

    from danet_edge.bench import run

    path = artifacts[artifact] if artifact != "engine" else tmp_path / "model_int8_trt.engine"
    if artifact == "engine":
        path.write_bytes(b"not an engine")  # never read: refused by its suffix
    monkeypatch.setattr(run, "open_backend", lambda *a, **k: pytest.fail("opened"))
    js = tmp_path / "b.json"
    code, out, err = run_cli(["bench", path, "--reference", artifacts["ckpt"], "--backend", backend,
                              "--runs", "1", "--json", js], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and f"the {backend} backend cannot run a {kind} file" in err[0], err
    assert not js.exists() and "reference" not in out


def test_bench_backend_config_refuses_what_is_no_row_of_the_table():
    from danet_edge.runtime.backends import BACKEND_TABLE

    for name in BACKEND_TABLE:
        assert BenchConfig(backend=name).backend == name
    with pytest.raises(ConfigError, match="--backend must be one of torch, onnxruntime"):
        BenchConfig(backend="ort")


def test_backend_rule_by_kind():
    """``check_backend_opens``: a named backend runs its own suffixes and those it lists (OpenVINO: .onnx); a
    suffix of another row is refused; a suffix no row owns is left to the backend; None is by suffix."""
    from danet_edge.runtime.backends import check_backend_opens

    assert check_backend_opens("m.onnx", "openvino-bf16").name == "openvino-bf16"
    assert check_backend_opens("m.onnx", "onnxruntime").name == "onnxruntime"
    assert check_backend_opens("m.pth", "torch").name == "torch"
    assert check_backend_opens("m.plan", None).name == "tensorrt"
    assert check_backend_opens("m.bin", "onnxruntime").name == "onnxruntime"
    for path, backend in (("m.engine", "onnxruntime"), ("m.plan", "openvino"), ("m.onnx", "torch"),
                          ("m.pt", "tensorrt")):
        with pytest.raises(ConfigError, match=f"the {backend} backend cannot run"):
            check_backend_opens(path, backend)


def test_cli_bench_options_come_from_the_config():
    """Every option of ``bench`` that stands for a BenchConfig field shows that field's default and help (the
    seams test compares defaults only where they are not None: --backend's is)."""
    import typer.main

    from danet_edge.cli import app
    from danet_edge.runtime.backends import BACKEND_TABLE

    params = {p.name: p for p in typer.main.get_command(app).commands["bench"].params}
    field_of = {"batch": "batches"}
    checked = 0
    for name, p in params.items():
        field = field_of.get(name, name)
        if field not in BenchConfig.__dataclass_fields__:
            continue
        assert p.help == BenchConfig.help(field), name
        if field != "batches":  # repeatable: [] stands for None
            assert p.default == BenchConfig.default(field), name
        checked += 1
    assert checked >= 12, checked
    assert params["backend"].opts == ["--backend"] and params["backend"].default is None
    from typer.testing import CliRunner

    out = " ".join(CliRunner().invoke(app, ["bench", "--help"], terminal_width=200).output.split())
    assert f"--backend <{'|'.join(BACKEND_TABLE)}>" in out  # the choices are the table's rows
