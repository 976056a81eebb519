"""The main job in its reduced mode: every stage runs and leaves its outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from danet_edge.demo import DemoConfig, run_demo
from danet_edge.core.errors import ConfigError


def test_demo_config_refuses_bad_sizes():
    with pytest.raises(ConfigError):
        DemoConfig(image_size=(60, 96))
    with pytest.raises(ConfigError):
        DemoConfig(epochs=0)


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    res = run_demo(DemoConfig.quick(tmp_path / "demo"), log=lambda _m: None)
    names = {p.name for p in res.paths.values()}
    assert {"best.pt", "model.onnx", "model_fp16.onnx", "model_int8_trt.onnx", "model_int8_cpu.onnx",
            "check.json", "report.md", "bench.json", "bench.png", "demo.json"} <= names
    for p in res.paths.values():
        assert Path(p).exists(), p
    # check: the checkpoint and the four graphs, each with the precision its graph really holds
    precisions = [a.precision for a in res.check.artifacts]
    assert precisions == ["fp32", "fp32", "fp16", "int8", "int8"]
    assert res.check.artifacts[0].agreement == 100.0
    # bench: the reference plus the four graphs, with ratios against it
    timed = [e for e in res.bench.entries if e.skipped is None]
    assert sum(e.is_reference for e in timed) == 1 and len(timed) == 5
    assert all(e.latency_p50_ms > 0 and e.speedup_vs_reference > 0 for e in timed)
    # infer: every video frame went through
    assert res.infer.frames == 6 and Path(res.infer.outputs["video"]).stat().st_size > 0
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert set(summary["stage_s"]) >= {"train", "bench"} and summary["wall_s"] > 0
    assert summary["check_passed"] == (res.failed is None)
