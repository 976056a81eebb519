"""Engine build planning (pure, no TensorRT), compatibility checks, and the no-TensorRT failure path."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from danet_edge.trt.build import BuildPlan, EngineConfig, build_engine, check_engine_compat, plan_build
from danet_edge.trt.plan import no_tensorrt_hint
from danet_edge.core.errors import ConfigError, EngineError, ManifestError, MissingDependencyError
from danet_edge.core.manifest import Manifest

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _manifest(precision="fp32"):
    return Manifest(kind="onnx", precision=precision, model={}, classes=["a", "b"], palette=[[0, 0, 0], [1, 1, 1]],
                    mean=[0.5] * 3, std=[0.5] * 3, input_shape=[1, 3, 64, 96], output_shape=[1, 2, 64, 96])


def test_plan_strongly_typed_default_on_10_and_11():
    p10 = plan_build("m.onnx", EngineConfig(workspace_mib=2048, opt_level=4, timing_cache=Path("t.cache")), "10.3.0.30")
    assert isinstance(p10, BuildPlan) and p10.strongly_typed and p10.flags == ["STRONGLY_TYPED"] and not p10.refusals
    assert p10.trtexec == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.engine", "--stronglyTyped",
                           "--memPoolSize=workspace:2048M", "--builderOptimizationLevel=4",
                           "--timingCacheFile=t.cache"]
    p11 = plan_build("m.onnx", EngineConfig(), "11.4.1")
    assert p11.strongly_typed and not p11.refusals
    assert "--stronglyTyped" not in p11.trtexec  # always on in 11.x, the flag is deprecated


def test_plan_weak_typing_allowed_on_10_refused_on_11(tmp_path):
    cfg = EngineConfig(fp16=True)
    p10 = plan_build("m.onnx", cfg, "10.3.0")
    assert not p10.strongly_typed and p10.flags == ["FP16", "OBEY_PRECISION_CONSTRAINTS"] and p10.precision == "fp16"
    assert "--fp16" in p10.trtexec and p10.fp32_islands == []  # a graph not here: nothing to pin in the plan
    p11 = plan_build("m.onnx", cfg, "11.0.0")
    assert p11.refusals and "removed in TensorRT 11" in p11.refusals[0]
    cache = tmp_path / "m.int8-calib.0123.cache"
    calib = EngineConfig(int8_calib=tmp_path, calib_cache=cache)
    p10 = plan_build(tmp_path / "m.onnx", calib, "10.7.0")
    assert "INT8" in p10.flags and p10.precision == "int8" and p10.calib_cache == cache
    # issue 8 defect 3: trtexec names the cache only once it exists (without it trtexec calibrates on noise)
    assert "--int8" in p10.trtexec and not any(a.startswith("--calib") for a in p10.trtexec)
    assert any("calibrates on random data" in w for w in p10.warnings)
    cache.write_text("TRT-100700-EntropyCalibration2\n")
    assert f"--calib={cache}" in plan_build(tmp_path / "m.onnx", calib, "10.7.0").trtexec
    refusal = plan_build("m.onnx", calib, "11.4.0").refusals
    assert any("implicit INT8" in r and "export CHECKPOINT --int8" in r for r in refusal)  # a flag that exists
    assert "export CHECKPOINT --fp16" in plan_build("m.onnx", cfg, "11.0.0").refusals[0]


def test_plan_refuses_conflicts_and_bad_ranges(tmp_path):
    assert plan_build("m.onnx", EngineConfig(), "8.6.1").refusals
    assert any("needs an FP32 graph" in r for r in
               plan_build("m.onnx", EngineConfig(int8_calib=tmp_path), "10.3.0", manifest=_manifest("int8")).refusals)
    assert any("INT8 Q/DQ" in r for r in
               plan_build("m.onnx", EngineConfig(fp16=True), "10.3.0", manifest=_manifest("int8")).refusals)
    with pytest.raises(ConfigError, match="optimisation level must be in 0..5"):  # ranges: the config itself
        EngineConfig(opt_level=7)
    with pytest.raises(ConfigError, match="workspace"):
        EngineConfig(workspace_mib=0)
    p = plan_build("m.onnx", EngineConfig(dla_core=0), "10.3.0", manifest=_manifest("fp32"))
    assert "GPU_FALLBACK" in p.flags and p.warnings  # FP32 graph on the DLA falls back to the GPU
    # DLA on 11.x: only 11.4.1 documents it on a Jetson (AGX Orin, JetPack 7.2.2+); Thor has none at all
    fp16 = _manifest("fp16")
    assert not plan_build("m.onnx", EngineConfig(dla_core=0), "10.3.0", manifest=fp16).warnings
    for v in ("11.0.0.114", "11.4.0.106", "11.5.0"):
        w = plan_build("m.onnx", EngineConfig(dla_core=0), v, manifest=fp16).warnings
        assert any("has no DLA on a Jetson" in x and "Jetson Thor has no DLA" in x for x in w), (v, w)
        assert not any("Thor need" in x for x in w)  # the old text promised DLA on Thor
    p11 = plan_build("m.onnx", EngineConfig(dla_core=0), "11.4.1", manifest=fp16)
    assert not p11.warnings and "--useDLACore=0" in p11.trtexec and "--allowGPUFallback" in p11.trtexec
    with pytest.raises(ConfigError):
        plan_build("m.onnx", EngineConfig(), "ten")


def test_plan_prints_no_trtexec_line_that_builds_something_else():
    """Issue 20 defect 4: trtexec 10.x adds kFP16 for --useDLACore unless --int8, which the 10.x builder
    refuses on a strongly typed network; the plan says there is no equivalent instead of printing one."""
    for prec in ("fp32", "fp16", "int8"):
        p = plan_build("m.onnx", EngineConfig(dla_core=0), "10.3.0", manifest=_manifest(prec))
        assert p.strongly_typed and p.trtexec == [] and "--stronglyTyped" not in p.trtexec_command
        assert p.trtexec_command.startswith("none: trtexec 10.x adds --fp16 for --useDLACore")
        assert "trtexec --onnx" not in no_tensorrt_hint(Path("m.onnx"), p)
    weak = plan_build("m.onnx", EngineConfig(dla_core=0, fp16=True), "10.3.0", manifest=_manifest("fp32"))
    assert "--fp16" in weak.trtexec and "--useDLACore=0" in weak.trtexec  # weakly typed: trtexec builds the same
    gpu = plan_build("m.onnx", EngineConfig(), "10.3.0", manifest=_manifest("fp16"))
    assert "--stronglyTyped" in gpu.trtexec  # without DLA the strongly typed line stays


def test_engine_compat_check():
    built = {"version": "10.3.0.30", "compute_capability": "8.7", "gpu_name": "Orin"}
    check_engine_compat(built, "10.3.0.26", (8, 7))  # same major.minor.patch, same GPU: fine
    with pytest.raises(EngineError, match=r"engine built for sm_87 with TensorRT 10\.3\.0, this GPU is sm_89 with "
                                          r"TensorRT 10\.7\.0: rebuild on this device"):
        check_engine_compat(built, "10.7.0", (8, 9))
    with pytest.raises(EngineError, match="sm_86"):
        check_engine_compat(built, "10.3.0", (8, 6))
    with pytest.raises(ManifestError, match="no 'tensorrt' entry"):
        check_engine_compat(None, "10.3.0", (8, 7))


@pytest.mark.skipif(HAS_TRT, reason="tests the path where tensorrt is missing")
def test_build_without_tensorrt_says_where_to_build(tmp_path, tiny_checkpoint):
    from _runtime_helpers import export_tiny

    onnx = export_tiny(tiny_checkpoint, tmp_path / "m.onnx")
    with pytest.raises(MissingDependencyError, match=r"tensorrt is not installed.*m\.onnx and m\.onnx\.json copied "
                                                     r"over.*trtexec --onnx="):
        build_engine(onnx, tmp_path / "m.engine")
    assert not (tmp_path / "m.engine").exists() and not (tmp_path / "m.engine.json").exists()
    (tmp_path / "engines").mkdir()  # a folder as out (export --engine passes its out_dir): <stem>.engine inside
    with pytest.raises(MissingDependencyError, match=r"--saveEngine=\S*engines/m\.engine"):
        build_engine(onnx, tmp_path / "engines")


def test_build_rejects_bad_paths(tmp_path):
    from danet_edge.core.errors import DataError

    with pytest.raises(DataError):
        build_engine(tmp_path / "missing.onnx")
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(ConfigError, match=".engine or .plan"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.trt")
    with pytest.raises(ManifestError):
        build_engine(tmp_path / "m.onnx")


def _gpu_and_trt():
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (cannot be installed on the dev machine)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    return trt


@pytest.mark.tensorrt
def test_build_and_run_engine_matches_onnx(tmp_path, tiny_checkpoint):
    _gpu_and_trt()
    from _runtime_helpers import export_tiny, random_frames
    from danet_edge.runtime.backends import open_backend

    onnx = export_tiny(tiny_checkpoint, tmp_path / "m.onnx")
    engine = build_engine(onnx, tmp_path / "m.engine", EngineConfig(timing_cache=tmp_path / "t.cache"))
    assert engine.read_bytes()[:4] != b"{\"fo"  # plain engine, no JSON header
    frames = random_frames(2, 64, 96)
    with open_backend(engine) as tb, open_backend(onnx, providers=["cpu"]) as ob:
        assert (tb.predict(frames).labels == ob.predict(frames).labels).mean() > 0.99
