"""danet-edge's TensorRT builder through the real bindings and the stand-in, on 10.3 and 11.x."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import LIB, MAJOR, TRT
from danet_edge.trt.build import EngineConfig, build_engine, plan_build
from danet_edge.core.errors import CalibrationError, ConfigError, EngineError, ManifestError, MissingDependencyError
from danet_edge.core.manifest import read_manifest
from danet_edge.runtime.backends import open_backend
from trt_standin.hostmem import GPU


def _copy(src: Path, dst_dir: Path) -> Path:
    """The graph and its manifest in a fresh folder (builds write caches beside the graph)."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    for p in (src, src.with_name(src.name + ".json")):
        shutil.copy(p, dst_dir / p.name)
    return dst_dir / src.name


def _labels(path: Path, frames: np.ndarray) -> np.ndarray:
    with open_backend(path) as b:
        return np.concatenate([b.predict(frames[i:i + 1]).labels for i in range(len(frames))])


@pytest.mark.parametrize("which", ["fp32", "fp16", "int8"])
def test_strongly_typed_build_runs_like_the_onnx(exported, tmp_path, which):
    src = _copy(getattr(exported, which), tmp_path)
    logs: list[str] = []
    eng = build_engine(src, None, EngineConfig(), log=logs.append)
    m = read_manifest(eng)
    t = m.tensorrt
    assert eng.suffix == ".engine" and m.kind == "engine" and t["version"] == TRT.__version__
    assert t["flags"] == ["STRONGLY_TYPED"] and t["compute_capability"] == "8.7"
    # what read_manifest checks on every load (a kill between the two renames leaves another engine here)
    assert t["engine_bytes"] == eng.stat().st_size and t["engine_sha256"] == hashlib.sha256(eng.read_bytes()).hexdigest()
    assert ("--stronglyTyped" in t["trtexec"]) == (MAJOR == 10)  # a no-op flag in trtexec 11
    # the engine's real precision, read from the inspector's per-layer formats
    rep = m.precision_report
    assert rep["source"] == "TensorRT engine inspector" and rep["precision"] == which == m.precision
    counts = rep["counts"]
    if which == "fp32":
        assert counts["fp16"] == counts["int8"] == 0 and counts["fp32"] > 0
    if which == "fp16":  # FP16 with the FP32 islands the graph keeps (CAM energy, softmaxes, PAM energy)
        assert counts["fp16"] > counts["fp32"] > 0 and counts["int8"] == 0
    if which == "int8":
        assert counts["int8"] > 0
    att = rep["attention"]
    assert len(att) == 4  # PAM and CAM energy and output MatMuls
    if which in ("fp16", "int8"):  # attention energy stays FP32; nothing of it quantized by default
        assert "int8" not in att.values() and "fp32" in att.values()
    layers = t["layers"]
    assert len(layers) == rep["total"] and all({"name", "type", "precision", "tactic"} <= set(row) for row in layers)
    assert logs and "engine layers" in logs[-1]
    # class maps of the engine equal those of the same graph in ONNX Runtime
    assert np.array_equal(_labels(eng, exported.frames), _labels(src, exported.frames))


def test_fused_io_uint8_in_class_map_out(exported, tmp_path):
    src = _copy(exported.fused, tmp_path)
    eng = build_engine(src)
    m = read_manifest(eng)
    assert m.input_dtype == "uint8" and m.output_kind == "labels"
    with open_backend(eng) as b:
        assert b.predict(exported.frames[:1]).logits is None
    assert np.array_equal(_labels(eng, exported.frames), _labels(src, exported.frames))


def test_dla_core_with_gpu_fallback(exported, tmp_path):
    GPU.dla_cores = 2
    eng = build_engine(_copy(exported.fp16, tmp_path), None, EngineConfig(dla_core=1))
    t = read_manifest(eng).tensorrt
    assert t["dla_core"] == 1 and "GPU_FALLBACK" in t["flags"]
    if MAJOR == 10:  # trtexec 10 adds --fp16 for DLA, which a strongly typed network refuses: no line to print
        assert t["trtexec"].startswith("none: trtexec 10.x adds --fp16") and "--stronglyTyped" not in t["trtexec"]
    else:
        assert "--useDLACore=1" in t["trtexec"]
    assert any(layer["tactic"].startswith("dla_") for layer in t["layers"])
    assert np.array_equal(_labels(eng, exported.frames[:2]), _labels(exported.fp16, exported.frames[:2]))
    with pytest.raises(EngineError, match="this device has 2 DLA cores"):
        build_engine(_copy(exported.fp16, tmp_path / "c"), None, EngineConfig(dla_core=2))
    with pytest.raises(EngineError, match="TensorRT build failed"):  # FP32 layers, no fallback
        build_engine(_copy(exported.fp32, tmp_path / "d"), None, EngineConfig(dla_core=0, gpu_fallback=False))
    assert not (tmp_path / "d" / "model.engine").exists()


def test_timing_cache_new_reused_and_rejected(exported, tmp_path):
    """Defect 4: a cache from another device was ignored, then ``get_timing_cache()`` gave None and
    ``.serialize()`` raised after the engine was written, leaving an engine without its manifest."""
    cache = tmp_path / "timing.cache"
    src = _copy(exported.fp16, tmp_path)
    eng = build_engine(src, None, EngineConfig(timing_cache=cache))
    assert cache.is_file() and read_manifest(eng).tensorrt["timing_cache"]["status"] == "new"
    first = cache.read_bytes()
    eng = build_engine(src, None, EngineConfig(timing_cache=cache))
    assert read_manifest(eng).tensorrt["timing_cache"]["status"] == "reused" and cache.read_bytes() != first
    GPU.compute_capability = (8, 9)  # another GPU: the cache's verification header does not match
    eng.unlink()
    eng.with_name(eng.name + ".json").unlink()
    logs: list[str] = []
    eng = build_engine(src, None, EngineConfig(timing_cache=cache), log=logs.append)
    m = read_manifest(eng)
    assert eng.is_file() and m.tensorrt["compute_capability"] == "8.9"
    assert m.tensorrt["timing_cache"]["status"].startswith("rejected")
    assert any("another GPU or TensorRT version" in line for line in logs)
    assert b'"cc": [8, 9]' in cache.read_bytes()  # rewritten for this device
    cache.write_bytes(b"garbage")  # unreadable: a fresh cache too
    eng = build_engine(src, None, EngineConfig(timing_cache=cache))
    assert "unreadable" in read_manifest(eng).tensorrt["timing_cache"]["status"]


def test_parser_failure_names_the_nodes(exported, tmp_path):
    """The cpu-target INT8 graph has uint8 activations: TensorRT's parser takes INT8 Q/DQ only."""
    src = _copy(exported.int8_cpu, tmp_path)
    with pytest.raises(EngineError, match=r"TensorRT's ONNX parser failed: node .*\(QuantizeLinear\): uint8 zero point"):
        build_engine(src)
    assert not src.with_suffix(".engine").exists()


def test_engine_for_another_gpu_or_version_is_refused(exported, tmp_path):
    eng = build_engine(_copy(exported.fp32, tmp_path))
    GPU.compute_capability = (8, 6)
    with pytest.raises(EngineError, match=r"engine built for sm_87 .* this GPU .* is sm_86 .* rebuild on this device"):
        open_backend(eng)
    GPU.compute_capability = (8, 7)
    m = json.loads(eng.with_name(eng.name + ".json").read_text())
    m["tensorrt"]["version"] = "10.0.1"
    eng.with_name(eng.name + ".json").write_text(json.dumps(m))
    with pytest.raises(EngineError, match=f"TensorRT 10.0.1, this GPU .* TensorRT {TRT.__version__[:4]}"):
        open_backend(eng)
    m["tensorrt"]["version"] = TRT.__version__
    eng.with_name(eng.name + ".json").write_text(json.dumps(m))
    eng.write_bytes(b"not an engine")  # other bytes than the build recorded: the pair is refused first
    with pytest.raises(ManifestError, match="the engine has 13 bytes, its sidecar recorded"):
        open_backend(eng)
    m["tensorrt"].update(engine_bytes=13, engine_sha256=hashlib.sha256(b"not an engine").hexdigest())
    eng.with_name(eng.name + ".json").write_text(json.dumps(m))
    with pytest.raises(EngineError, match="could not deserialize"):
        open_backend(eng)


def test_weak_typing_on_10_refused_on_11(exported, tmp_path):
    src = _copy(exported.fp32, tmp_path)
    if MAJOR >= 11:
        with pytest.raises(ConfigError, match=r"--fp16 is a weakly typed build, removed in TensorRT 11 .*"
                                              r"danet-edge export CHECKPOINT --fp16"):
            build_engine(src, None, EngineConfig(fp16=True))
        with pytest.raises(ConfigError, match=r"implicit INT8 calibration, removed in TensorRT 11 .*--int8 --calib"):
            build_engine(src, None, EngineConfig(int8_calib=exported.calib))
        return
    eng = build_engine(src, None, EngineConfig(fp16=True))
    m = read_manifest(eng)
    assert m.tensorrt["flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"] and m.precision == "fp16"
    assert m.precision_report["counts"]["fp16"] > 0
    # the FP16 graph's islands (CAM's energy chain: it grows with the image) pinned to FP32 with the obey flag
    from danet_edge.graph.precision import attention_nodes, default_fp32_islands

    islands = default_fp32_islands(onnx.load(str(src)))
    att = attention_nodes(onnx.load(str(src)))
    assert set(att.cam_energy + att.cam_reduce + att.cam_softmax) <= set(islands)
    assert sorted(m.tensorrt["pinned_fp32"]) == sorted(islands) == LIB.last_build["pinned"]
    assert "OBEY_PRECISION_CONSTRAINTS" in LIB.last_build["flags"]
    by_node = {n: row["precision"] for row in m.tensorrt["layers"] for n in row["onnx"]}
    assert all(by_node[n] == "fp32" for n in islands) and by_node[att.cam_out[0]] == "fp16"
    cmd = m.tensorrt["trtexec"]
    assert "--fp16" in cmd and "--precisionConstraints=obey" in cmd and f"{att.cam_energy[0]}:fp32" in cmd


def test_implicit_int8_calibration_keyed_cache_and_trtexec(exported, tmp_path):
    """Defects 2 and 3: the cache was keyed only by the graph (another folder or count reused it), and
    trtexec was told ``--calib=<cache>`` for a cache that might not exist."""
    if MAJOR >= 11:
        assert plan_build("m.onnx", EngineConfig(int8_calib=tmp_path), TRT.__version__).refusals
        return
    src = _copy(exported.fp32, tmp_path)
    plan = plan_build(src, EngineConfig(int8_calib=exported.calib), TRT.__version__)
    assert "--int8" in plan.trtexec and not any(a.startswith("--calib") for a in plan.trtexec)
    assert any("calibrates on random data" in w for w in plan.warnings)
    eng = build_engine(src, None, EngineConfig(int8_calib=exported.calib, calib_images=4))
    m = read_manifest(eng)
    cal = m.tensorrt["calibration"]
    cache = Path(cal["cache"])
    assert m.tensorrt["flags"] == ["INT8"] and m.precision == "int8" and cal["batches"] == 4
    assert cache.is_file() and cache.read_bytes().startswith(b"TRT-1003") and not cal["cache_reused"]
    assert f"--calib={cache}" in m.tensorrt["trtexec"]  # named now that it exists
    assert len(cal["images"]) == 4 and len(LIB.calibration_batches) == 4
    again = read_manifest(build_engine(src, None, EngineConfig(int8_calib=exported.calib, calib_images=4)))
    assert again.tensorrt["calibration"]["cache_reused"] and again.tensorrt["calibration"]["cache"] == str(cache)
    other = read_manifest(build_engine(src, None, EngineConfig(int8_calib=exported.calib, calib_images=3)))
    assert other.tensorrt["calibration"]["cache"] != str(cache) and not other.tensorrt["calibration"]["cache_reused"]
    assert len(LIB.calibration_batches) == 3
    # the same cache file named by the user but another image set: recalibrated, not reused
    forced = EngineConfig(int8_calib=exported.calib, calib_images=3, calib_seed=5, calib_cache=cache)
    assert not read_manifest(build_engine(src, None, forced)).tensorrt["calibration"]["cache_reused"]


def test_calibration_error_fails_the_build(exported, tmp_path, monkeypatch):
    """Defect 1: an image failing inside get_batch was swallowed by TensorRT's wrapper and read as the
    end of the data; the engine was calibrated on a truncated set and the cache written and reused."""
    if MAJOR >= 11:
        assert not hasattr(TRT, "IInt8EntropyCalibrator2")
        return
    import danet_edge.data.calib as calib_mod

    src = _copy(exported.fp32, tmp_path)
    real = calib_mod._read_rgb
    seen: dict[str, int] = {}

    def flaky(p):  # readable when the set is loaded, gone when the builder asks for it
        seen[p.name] = seen.get(p.name, 0) + 1
        if p.name == "img2.png" and seen[p.name] > 1:
            raise calib_mod.CalibrationError(f"{p}: not a readable image")
        return real(p)

    monkeypatch.setattr(calib_mod, "_read_rgb", flaky)
    with pytest.raises(CalibrationError, match=r"calibration stopped after 2 batches: .*img2.png: not a readable"):
        build_engine(src, None, EngineConfig(int8_calib=exported.calib, calib_images=6))
    assert not src.with_suffix(".engine").exists() and not list(tmp_path.glob("*.cache"))


def test_engine_without_reduced_precision_layers_is_refused(exported, tmp_path):
    LIB.force_fp32_layers = True
    src = _copy(exported.fp16, tmp_path)
    with pytest.raises(EngineError, match="asked for FP16 but the engine TensorRT built runs every layer in FP32"):
        build_engine(src)
    assert not src.with_suffix(".engine").exists()


def test_no_gpu_and_no_builder_are_one_line_errors(exported, tmp_path):
    """Defects 6 and 7: pycuda.autoinit raises pycuda's own error (not ImportError) and trt.Builder
    raises TypeError (never returns None)."""
    src = _copy(exported.fp32, tmp_path)
    GPU.trt_usable = False
    with pytest.raises(EngineError, match="TensorRT could not create a builder"):
        build_engine(src)
    from trt_standin import cuda_fakes

    GPU.trt_usable = True
    GPU.present = False
    cuda_fakes.install({"pycuda"})  # a fresh import of pycuda.autoinit
    with pytest.raises(MissingDependencyError, match=r"pycuda.autoinit \(RuntimeError: cuInit failed: no CUDA-capable"):
        build_engine(src)
    cuda_fakes.install({"pycuda", "cuda-python-13"})
    with pytest.raises(EngineError, match="no usable CUDA GPU here .*cudaErrorNoDevice.* build it on the target"):
        build_engine(src)


def test_broken_pycuda_falls_back_to_cuda_python(exported, tmp_path):
    from trt_standin import cuda_fakes

    cuda_fakes.install({"pycuda", "cuda-python-12"})
    GPU.pycuda_broken = True
    eng = build_engine(_copy(exported.fp32, tmp_path))
    with open_backend(eng) as b:
        assert type(b._runner.cuda).__name__ == "CudaPythonApi"
    assert np.array_equal(_labels(eng, exported.frames[:2]), _labels(exported.fp32, exported.frames[:2]))


def test_bf16_output_frees_its_buffers(exported, tmp_path):
    """An output dtype without a numpy type raised after the input buffers were allocated."""
    src = _copy(exported.fp32, tmp_path)
    model = onnx.load(str(src))
    out = model.graph.output[0]
    model.graph.node[-1].output[0] = out.name + "_f32"
    model.graph.node.append(onnx.helper.make_node("Cast", [out.name + "_f32"], [out.name], to=onnx.TensorProto.BFLOAT16,
                                                  name="to_bf16"))
    out.type.tensor_type.elem_type = onnx.TensorProto.BFLOAT16
    onnx.save(model, str(src))
    eng = build_engine(src)
    with pytest.raises(EngineError, match="has no numpy type"):
        open_backend(eng)
    # the machine fixture asserts that no device allocation leaked


def test_export_engine_lists_the_engines(exported, tmp_path):
    """``export --engine`` built engines but left them out of its result and printed table."""
    from danet_edge.export.export import ExportConfig, export_model

    res = export_model(exported.checkpoint, ExportConfig(fp16=True, engine=True, out=tmp_path, fused_io=False))
    engines = [a for a in res.artifacts if a.path.suffix == ".engine"]
    assert [a.path.name for a in engines] == ["model.engine", "model_fp16.engine"]
    assert [a.manifest.precision for a in engines] == ["fp32", "fp16"] and all(a.path.is_file() for a in engines)


def test_calib_fill_folder_feeds_build_int8_calib(exported, tmp_path):
    """Issue 11: `calib fill --out calib/` writes calib/images/ + calib.txt, and `build --int8-calib calib/`
    listed the folder flat (first N by name, default 500): the README's own sequence found no images."""
    from danet_edge.data.calib import fill_calib_dir

    calib = fill_calib_dir("synthetic", None, 5, tmp_path / "calib", split="train", seed=0)
    src = _copy(exported.fp32, tmp_path / "g")
    if MAJOR >= 11:  # no implicit calibration: the Q/DQ graph from export is the path
        with pytest.raises(ConfigError, match="removed in TensorRT 11"):
            build_engine(src, None, EngineConfig(int8_calib=calib))
        return
    m = read_manifest(build_engine(src, None, EngineConfig(int8_calib=calib)))
    cal = m.tensorrt["calibration"]
    assert cal["batches"] == 5 and all(name.startswith("images/") for name in cal["images"])


def test_progress_monitor_sees_the_builder_phases(exported, tmp_path, monkeypatch):
    """build draws the builder's phases through TensorRT's IProgressMonitor (real base class)."""
    import contextlib

    import danet_edge.trt.build as engine_mod
    from danet_edge.core import progress

    events = []
    monkeypatch.setattr(progress, "phases", contextlib.contextmanager(lambda: (yield lambda *e: events.append(e))))
    build_engine(_copy(exported.fp16, tmp_path))
    assert events[0][0] == "start" and events[-1][0] == "finish"
    steps = [e for e in events if e[0] == "step"]
    assert steps and len(steps) == events[0][2]
    assert isinstance(engine_mod.make_progress_monitor(TRT, lambda *e: None), TRT.IProgressMonitor)


def test_inspector_schema_is_the_versions_own(exported, tmp_path):
    """Issue 20 defect 1: TensorRT 11's inspector splits ``Format/Datatype`` into ``Format`` and ``Datatype``
    and replaces ``Bindings`` with ``I/O Tensors``; the stand-in writes each version's schema, and the FP16
    and INT8 builds still count their FP16 / INT8 layers (on 11.x the old reader counted none)."""
    eng = build_engine(_copy(exported.fp16, tmp_path), None, EngineConfig())
    with open_backend(eng):
        pass
    runtime = TRT.Runtime(TRT.Logger())
    engine = runtime.deserialize_cuda_engine(eng.read_bytes())
    info = json.loads(engine.create_engine_inspector().get_engine_information(TRT.LayerInformationFormat.JSON))
    tensors = [t for layer in info["Layers"] for t in layer["Inputs"] + layer["Outputs"]]
    if MAJOR >= 11:
        assert "Bindings" not in info and {t["IOMode"] for t in info["I/O Tensors"]} == {"Input", "Output"}
        assert all("Format/Datatype" not in t and "Datatype" in t and "Format" in t for t in tensors)
        assert {"Half", "Float"} <= {t["Datatype"] for t in tensors}
    else:
        assert "I/O Tensors" not in info and len(info["Bindings"]) == 2
        assert all("Format/Datatype" in t and "Datatype" not in t for t in tensors)
    assert read_manifest(eng).precision_report["counts"]["fp16"] > 0


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("raised", [_Boom("the terminal went away"), KeyboardInterrupt()])
def test_progress_sink_that_raises_cancels_with_its_cause(exported, tmp_path, monkeypatch, raised):
    """Issue 20 defect 3: TensorRT's wrapper reads an exception in ``step_complete`` as "cancel"; the build
    then names the cause (exit 5, or 130 for Ctrl-C) and leaves no engine, sidecar or temporary file."""
    import contextlib

    from danet_edge.core import progress
    from danet_edge.core.errors import Interrupted

    calls = []

    def sink(event, phase, value):
        calls.append(event)
        if event == "step" and value == 2:
            raise raised

    monkeypatch.setattr(progress, "phases", contextlib.contextmanager(lambda: (yield sink)))
    src = _copy(exported.fp16, tmp_path / "m")
    before = sorted(p.name for p in src.parent.iterdir())
    if isinstance(raised, KeyboardInterrupt):
        with pytest.raises(Interrupted, match="interrupted: no engine written"):
            build_engine(src)
    else:
        with pytest.raises(EngineError, match=r"cancelled: the progress display failed \(_Boom: the terminal went away\)"):
            build_engine(src)
    assert calls.count("step") == 3  # cancelled at the failing step, not run to the end
    assert sorted(p.name for p in src.parent.iterdir()) == before  # no engine, no sidecar, no .tmp


def test_progress_sink_error_is_one_line_exit_5(exported, tmp_path, monkeypatch, capsys):
    import contextlib

    from danet_edge.core import progress
    from conftest import run_cli

    def sink(event, phase, value):
        if event == "step":
            raise OSError("stderr closed")

    monkeypatch.setattr(progress, "phases", contextlib.contextmanager(lambda: (yield sink)))
    src = _copy(exported.fp16, tmp_path / "m")
    assert run_cli("build", str(src)) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "OSError: stderr closed" in err[-1] and "Traceback" not in "\n".join(err)
    assert not src.with_suffix(".engine").exists()


def test_ctrl_c_without_progress_bars_still_cancels(exported, tmp_path, monkeypatch):
    """Without bars (no terminal) a monitor is still attached, so a Ctrl-C delivered in its next callback
    stops the build instead of waiting for it to end."""
    import danet_edge.trt.build as engine_mod
    from danet_edge.core.errors import Interrupted

    made = []
    real = engine_mod.make_progress_monitor

    def spy(trt, sink):
        assert sink is None  # bars are off in tests
        m = real(trt, lambda *e: (_ for _ in ()).throw(KeyboardInterrupt()) if e[0] == "step" else None)
        made.append(m)
        return m

    monkeypatch.setattr(engine_mod, "make_progress_monitor", spy)
    with pytest.raises(Interrupted):
        build_engine(_copy(exported.fp32, tmp_path / "m"))
    assert made and isinstance(made[0].error, KeyboardInterrupt)


def test_parser_refuses_a_zero_qdq_scale(exported, tmp_path):
    """onnx-tensorrt's Q/DQ importer requires every scale > 0: a weight scale that FP16 rounded to 0 fails
    the build (before issue 20, export could write one; now trtcheck and export refuse it first)."""
    src = _copy(exported.int8, tmp_path)
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits)
    s = onnx.numpy_helper.to_array(inits[dq.input[1]]).copy()
    s.flat[0] = 0
    inits[dq.input[1]].CopyFrom(onnx.numpy_helper.from_array(s, dq.input[1]))
    onnx.save(model, str(src))
    with pytest.raises(EngineError, match=rf"{dq.name}.*Scale coefficients must all be positive"):
        build_engine(src)
    assert not src.with_suffix(".engine").exists()


@pytest.fixture(scope="module")
def forms(exported, tmp_path_factory):
    """The FP16 (and, for heads, INT8) graphs of the test checkpoint in each PAM form (64x96: L = 96, head 16)."""
    from danet_edge.export.export import ExportConfig, export_model

    out = {}
    for form in ("explicit", "chunked", "heads"):
        res = export_model(exported.checkpoint, ExportConfig(
            attention=form, attention_chunks=3 if form == "chunked" else None, fp16=True, int8=form == "heads",
            **({"calib": exported.calib, "calib_size": 6} if form == "heads" else {}), fused_io=False,
            reference_images=0,
            out=tmp_path_factory.mktemp(form)))
        out.update({(form, a.manifest.precision): a.path for a in res.artifacts})
    return out


@pytest.mark.parametrize("form", ["explicit", "chunked", "heads"])
def test_attention_fuses_only_where_tensorrt_documents_it(forms, exported, tmp_path, form):
    """The heads form in FP16 (no FP32 island between its MatMuls, one head size 16) builds into one fused layer in
    the published form (NVIDIA/TensorRT issue 4397) and the manifest says attention_fused true; the explicit and
    chunked forms (V's head size is not Q's) land in separate layers: false. The engine runs like its graph."""
    fp16 = _copy(forms[(form, "fp16")], tmp_path)
    graph = onnx.load(str(fp16))
    from danet_edge.graph.precision import attention_nodes

    att = attention_nodes(graph)
    logs: list[str] = []
    eng = build_engine(fp16, None, EngineConfig(), log=logs.append)
    m = read_manifest(eng)
    assert m.attention()["form"] == form and m.tensorrt["attention_fused"] is (form == "heads")
    assert m.attention()["fused"] is (form == "heads")
    mha = [row for row in m.tensorrt["layers"] if row["tactic"].startswith("_gemm_mha_v2")]
    if form == "heads":
        (row,) = mha
        assert row["type"] == "kgen" and {att.pam_energy[0], att.pam_softmax[0], att.pam_out[0]} <= set(row["onnx"])
    else:
        assert not mha and not any("did not fuse" in line for line in logs)  # not a fusible form: nothing to say
    assert np.array_equal(_labels(eng, exported.frames), _labels(fp16, exported.frames))


def test_islanded_or_int8_heads_does_not_fuse_and_is_refused_when_its_energy_overflows(forms, tmp_path):
    """A heads graph whose attention did not fuse: with an FP32 island between the MatMuls (TensorRT's fusion needs
    both in FP16) the verdict is false; the INT8 heads graph fuses (its attention is outside the Q/DQ, in FP16);
    an unfused heads engine (on SM 7.2, below fusion's SM 7.5) is refused in one line, naming the chunked form,
    when its measured PAM energy does not fit FP16, and warned about otherwise."""
    from danet_edge.core.manifest import manifest_path
    from danet_edge.export.fp16 import convert_fp16
    from danet_edge.graph.precision import default_fp32_islands

    int8 = read_manifest(build_engine(_copy(forms[("heads", "int8")], tmp_path / "q")))
    assert int8.tensorrt["attention_fused"] is True
    src = forms[("heads", "fp32")]
    island = tmp_path / "i" / "model_fp16.onnx"
    island.parent.mkdir()
    convert_fp16(src, island, fp32_nodes=default_fp32_islands(onnx.load(str(src)), pam_energy=True))
    meta = json.loads(manifest_path(forms[("heads", "fp16")]).read_text())
    model = onnx.load(str(island))
    model.metadata_props.add().CopyFrom(onnx.load(str(forms[("heads", "fp16")])).metadata_props[0])
    onnx.save(model, str(island))
    manifest_path(island).write_text(json.dumps(meta))
    logs: list[str] = []
    m = read_manifest(build_engine(island, None, EngineConfig(), log=logs.append))
    assert m.tensorrt["attention_fused"] is False and any("did not fuse" in line for line in logs)
    fused = read_manifest(build_engine(_copy(forms[("heads", "fp16")], tmp_path / "f")))
    assert fused.tensorrt["memory"]["device_mib"] < m.tensorrt["memory"]["device_mib"]  # a fused kernel holds no map
    # the heads FP16 graph as exported, on a GPU below SM 7.5 (no fused attention there): unfused, its energy in FP16
    GPU.compute_capability = (7, 2)
    src = _copy(forms[("heads", "fp16")], tmp_path / "sm72")
    logs = []
    assert read_manifest(build_engine(src, None, EngineConfig(), log=logs.append)).tensorrt["attention_fused"] is False
    assert any("did not fuse" in line and "chunked form" in line for line in logs)  # energy fits FP16: a warning
    meta = json.loads(manifest_path(src).read_text())
    meta["extra"]["attention"]["energy"].update(max_abs=9000.0, fits_fp16=False)  # x16 is past FP16's 65504
    model = onnx.load(str(src))
    model.metadata_props[0].value = json.dumps(meta)
    onnx.save(model, str(src))
    manifest_path(src).write_text(json.dumps(meta))
    for p in (src.with_suffix(".engine"), src.with_name(src.stem + ".engine.json")):
        p.unlink()
    with pytest.raises(EngineError, match=r"did not fuse.*measured up to 9000.*--attention chunked instead; nothing"):
        build_engine(src, None, EngineConfig())
    assert not src.with_suffix(".engine").exists()
    # a heads graph exported before the energy was measured kept it in FP32 (an island): unfused, it is a warning
    old = tmp_path / "old"
    old.mkdir()
    convert_fp16(forms[("heads", "fp32")], old / "model_fp16.onnx",
                 fp32_nodes=default_fp32_islands(onnx.load(str(forms[("heads", "fp32")])), pam_energy=True))
    graph = onnx.load(str(old / "model_fp16.onnx"))
    from danet_edge.graph.precision import precision_report

    del meta["extra"]["attention"]["energy"]
    meta["precision_report"] = precision_report(graph).to_dict()
    graph.metadata_props.add().CopyFrom(onnx.StringStringEntryProto(key="danet_edge_manifest", value=json.dumps(meta)))
    onnx.save(graph, str(old / "model_fp16.onnx"))
    manifest_path(old / "model_fp16.onnx").write_text(json.dumps(meta))
    logs = []
    assert read_manifest(build_engine(old / "model_fp16.onnx", None, EngineConfig(), log=logs.append)
                         ).tensorrt["attention_fused"] is False
    assert any("did not fuse" in line for line in logs)


def test_chunks_run_one_at_a_time_and_memory_is_read_back(forms, tmp_path):
    """A chunked graph is built with max_aux_streams 0 (its chunks are independent branches TensorRT could run
    concurrently, each holding its map slice); the manifest holds the engine's device memory beside the memory
    model's estimate; an engine above the board's budget is refused in one line."""
    from danet_edge.core.manifest import manifest_path

    src = _copy(forms[("chunked", "fp16")], tmp_path)
    m = read_manifest(build_engine(src))
    assert m.tensorrt["max_aux_streams"] == 0 and "auxiliary streams" in m.tensorrt["max_aux_streams_why"]
    assert LIB.last_build["max_aux_streams"] == 0 and "--maxAuxStreams=0" in m.tensorrt["trtexec"]
    mem = m.tensorrt["memory"]
    assert mem["device_mib"] == round(LIB.last_build["device_memory"] / 2**20, 1) and mem["estimate_mib"] > 0
    assert mem["within_budget"] is True and "gap" in mem
    explicit = read_manifest(build_engine(_copy(forms[("explicit", "fp16")], tmp_path / "e")))
    assert "max_aux_streams" not in explicit.tensorrt and LIB.last_build["max_aux_streams"] == -1
    meta = json.loads(manifest_path(src).read_text())
    meta["extra"]["attention"]["budget_mib"] = 0.01
    manifest_path(src).write_text(json.dumps(meta))
    model = onnx.load(str(src))
    model.metadata_props[0].value = json.dumps(meta)
    onnx.save(model, str(src))
    src.with_suffix(".engine").unlink()
    src.with_name(src.name.replace(".onnx", ".engine.json")).unlink()
    with pytest.raises(EngineError, match=r"the engine needs .* MiB .*above the 0 MiB export planned"):
        build_engine(src)
    assert not src.with_suffix(".engine").exists()


def test_attention_op_form_builds_from_tensorrt_10_14_only(exported, tmp_path):
    """PAM as ONNX Attention (opset 23): refused in one line by TensorRT 10.3 (JetPack 6), before the parser;
    parsed and built by 11.x, and the engine runs like its graph."""
    import tensorrt as trt

    from danet_edge.core.errors import ConfigError
    from danet_edge.export.export import ExportConfig, export_model

    res = export_model(exported.checkpoint, ExportConfig(attention="attention-op", fused_io=False, reference_images=0,
                                                         out=tmp_path / "g"))
    fp32 = res.artifacts[0].path
    assert read_manifest(fp32).extra["attention"]["min_tensorrt"] == "10.14"
    if int(trt.__version__.split(".")[0]) < 11:
        with pytest.raises(ConfigError, match=r"ONNX Attention \(opset 23\).*10\.14"):
            build_engine(fp32, None, EngineConfig())
        assert not fp32.with_suffix(".engine").exists()
        return
    with pytest.raises(EngineError, match="Could not find any implementation|TensorRT build failed"):
        build_engine(fp32, None, EngineConfig())  # an FP32 IAttention: no fused kernel is documented (modelled)
    assert any("FP32 ONNX Attention" in w for w in plan_build(fp32, EngineConfig(), TRT.__version__,
                                                              manifest=read_manifest(fp32)).warnings)
    fp16 = next(a.path for a in export_model(exported.checkpoint, ExportConfig(
        attention="attention-op", fp16=True, fused_io=False, reference_images=0, out=tmp_path / "h")).artifacts
        if a.manifest.precision == "fp16")
    eng = build_engine(fp16, None, EngineConfig())
    m = read_manifest(eng)
    assert m.attention()["form"] == "attention-op" and m.tensorrt["attention_fused"] is True
    assert np.array_equal(_labels(eng, exported.frames), _labels(fp16, exported.frames))


def test_qat_graph_builds_like_a_ptq_graph(exported, tmp_path):
    """Issue 23: the graph of a QAT checkpoint (learned scales, fused I/O) passes the parser and builds strongly typed
    like the PTQ graph, with INT8 layers, and runs like it in ONNX Runtime."""
    from danet_edge.export.export import ExportConfig, export_model
    from danet_edge.export.qat_train import prepare_qat
    from danet_edge.model.checkpoint import load_checkpoint, save_checkpoint

    record = prepare_qat(exported.checkpoint, "int8-tensorrt", exported.calib, 6)
    record = {**record, "learned": True, "epochs": 1,  # as a QAT run leaves it, scales moved
              "activations": [{**a, "scale": a["scale"] * 1.1} for a in record["activations"]]}
    src = load_checkpoint(exported.checkpoint)
    qat = save_checkpoint(tmp_path / "qat.pt", {**{k: src[k] for k in ("model", "model_config", "data")}, "qat": record})
    res = export_model(qat, ExportConfig(out=tmp_path / "x", reference_images=0))
    graph = next(a.path for a in res.artifacts if a.manifest.precision == "int8")
    assert read_manifest(graph).quantization() == "QAT" and read_manifest(graph).input_dtype == "uint8"
    eng = build_engine(graph, None, EngineConfig())
    m = read_manifest(eng)
    assert m.tensorrt["flags"] == ["STRONGLY_TYPED"] and m.precision_report["counts"]["int8"] > 0
    assert np.array_equal(_labels(eng, exported.frames), _labels(graph, exported.frames))
