"""Backends: suffix table, override, Torch vs ONNX Runtime agreement, fused I/O, batching, manifest checks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from _runtime_helpers import export_tiny, random_frames
from danet_edge.core.errors import ConfigError, DataError, ManifestError
from danet_edge.core.manifest import manifest_path
from danet_edge.data.frames import fit_frame, restore_labels
from danet_edge.runtime.backends import (BACKENDS, Backend, OnnxRuntimeBackend, TorchBackend, backend_for,
                                         open_backend, segment_frames)


@pytest.fixture(scope="module")
def onnx_fp32(tiny_checkpoint, tmp_path_factory):
    return export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture(scope="module")
def onnx_fused(tiny_checkpoint, tmp_path_factory):
    return export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("onnxf") / "tiny_fused.onnx", fused=True, batch=2)


def test_suffix_table_and_override(tmp_path):
    assert backend_for("a/b.pt") == "torch" and backend_for("m.pth") == "torch"
    assert backend_for("m.onnx") == "onnxruntime"
    assert backend_for("m.engine") == "tensorrt" and backend_for("m.plan") == "tensorrt"
    assert backend_for("m.bin", backend="onnxruntime") == "onnxruntime"
    # exact suffix: upper case and double suffixes are not guessed
    for bad in ("m.ONNX", "m.onnx.json", "model"):
        with pytest.raises(ConfigError, match=r"\.onnx \(onnxruntime\)"):
            backend_for(bad)
    with pytest.raises(ConfigError, match="torch, onnxruntime, onnxruntime-fused-attention, openvino, openvino-bf16, tensorrt"):
        backend_for("m.onnx", backend="tflite")
    assert set(BACKENDS.values()) == {"torch", "onnxruntime", "tensorrt"}


def test_open_missing_file_and_wrong_options(tmp_path, onnx_fp32, tiny_checkpoint):
    with pytest.raises(DataError, match="not found"):
        open_backend(tmp_path / "nope.onnx")
    with pytest.raises(ConfigError, match="onnxruntime / onnxruntime-fused-attention backend only"):
        open_backend(tiny_checkpoint, providers=["cpu"])
    with pytest.raises(ConfigError, match="static batch of 1"):
        open_backend(onnx_fp32, batch=4)
    with pytest.raises(ConfigError, match="unknown execution provider"):
        open_backend(onnx_fp32, providers=["warp-drive"])


def test_torch_and_onnx_agree(tiny_checkpoint, onnx_fp32):
    frames = random_frames(3, 64, 96)
    with open_backend(tiny_checkpoint, device="cpu") as tb, open_backend(onnx_fp32, providers=["cpu"]) as ob:
        assert isinstance(tb, TorchBackend) and isinstance(ob, OnnxRuntimeBackend)
        assert isinstance(tb, Backend) and isinstance(ob, Backend)
        assert ob.providers == ["CPUExecutionProvider"]
        assert tb.manifest.image_size == ob.manifest.image_size == (64, 96)
        pt, po = tb.predict(frames), ob.predict(frames)  # 3 frames through a static batch of 1
    assert pt.labels.shape == po.labels.shape == (3, 64, 96)
    assert pt.labels.dtype == po.labels.dtype == np.int64
    assert po.logits.shape == (3, 5, 64, 96) and po.logits.dtype == np.float32
    np.testing.assert_allclose(po.logits, pt.logits, rtol=1e-3, atol=1e-3)
    assert (pt.labels == po.labels).mean() > 0.999
    assert len(np.unique(pt.labels)) > 1  # the test would be vacuous on a constant map


def test_fused_io_and_batch_padding(tiny_checkpoint, onnx_fused, onnx_fp32):
    frames = random_frames(3, 64, 96, seed=1)
    with open_backend(onnx_fused) as fb, open_backend(onnx_fp32) as ob:
        assert fb.manifest.input_dtype == "uint8" and fb.manifest.batch_size == 2
        pf = fb.predict(frames)  # 3 frames through a static batch of 2: one padded batch
        po = ob.predict(frames)
    assert pf.logits is None and pf.labels.shape == (3, 64, 96) and pf.labels.dtype == np.int64
    assert (pf.labels == po.labels).mean() > 0.999


def test_predict_rejects_wrong_input(onnx_fp32):
    with open_backend(onnx_fp32) as ob:
        with pytest.raises(DataError, match=r"\(N, 64, 96, 3\) uint8"):
            ob.predict(np.zeros((1, 64, 96, 3), np.float32))
        with pytest.raises(DataError):
            ob.predict(np.zeros((1, 32, 96, 3), np.uint8))


def test_missing_and_mismatching_manifest(onnx_fp32, tmp_path):
    import onnx

    lone = tmp_path / "lone.onnx"
    graph = onnx.load(str(onnx_fp32))
    del graph.metadata_props[:]  # no embedded manifest (another tool's graph): the open checks the graph itself
    onnx.save(graph, str(lone))  # (with it, read_manifest refuses the pair first: tests/test_bad_input.py)
    with pytest.raises(ManifestError, match="lone.onnx.json not found"):
        open_backend(lone)
    data = json.loads(manifest_path(onnx_fp32).read_text())
    for change, pattern in (({"input_name": "x"}, "input 'images' .* is not its manifest's 'x'"),
                            ({"input_shape": [1, 3, 64, 128]}, "static shapes"),
                            ({"output_kind": "labels"}, "needs a 3-D output")):
        manifest_path(lone).write_text(json.dumps({**data, **change}))
        with pytest.raises(ManifestError, match=pattern):
            open_backend(lone)


def test_not_an_onnx_file(tmp_path, onnx_fp32):
    bad = tmp_path / "bad.onnx"
    bad.write_text("hello")
    shutil.copy(manifest_path(onnx_fp32), manifest_path(bad))
    with pytest.raises(DataError, match="onnxruntime cannot load it"):
        open_backend(bad)


def test_segment_frames_any_size(onnx_fp32):
    big = [random_frames(1, 128, 192, seed=2)[0], random_frames(1, 50, 70, seed=3)[0]]
    with open_backend(onnx_fp32) as ob:
        maps = segment_frames(ob, big)
        direct = ob.predict(np.stack([fit_frame(big[0], (64, 96))[0]])).labels[0]
        boxed = segment_frames(ob, big, letterbox=True)
    assert [m.shape for m in maps] == [(128, 192), (50, 70)]
    assert [m.shape for m in boxed] == [(128, 192), (50, 70)]
    # 128x192 is exactly 2x the model size: nearest upsampling repeats each label 2x2
    np.testing.assert_array_equal(maps[0][::2, ::2], direct)


def test_letterbox_placement_roundtrip():
    frame = np.zeros((100, 300, 3), np.uint8)
    img, pl = fit_frame(frame, (64, 96), letterbox=True)
    assert img.shape == (64, 96, 3) and (pl.height, pl.width) == (32, 96) and pl.top == 16
    assert (img[:16] == 114).all() and (img[16:48] == 0).all()
    labels = np.zeros((64, 96), np.int64)
    labels[16:48] = 3
    assert (restore_labels(labels, pl, (100, 300)) == 3).all()


def test_import_does_not_pull_optional_packages():
    code = ("import sys, danet_edge, danet_edge.runtime, danet_edge.runtime.backends, danet_edge.cli;"
            "import danet_edge.trt.build, danet_edge.infer.pipeline, danet_edge.trt.cuda;"
            "bad = [m for m in ('tensorrt', 'pycuda', 'cuda', 'modelopt') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_openvino_backend_runs_the_same_graphs(tmp_path, tiny_checkpoint):
    """One more row of the backend table: the same .onnx through OpenVINO (by name; .onnx stays ORT's)."""
    pytest.importorskip("openvino")
    from _runtime_helpers import export_tiny, random_frames

    from danet_edge.core.errors import ConfigError
    from danet_edge.runtime.backends import backend_for, open_backend, segment_frames

    path = export_tiny(tiny_checkpoint, tmp_path / "m.onnx")
    frames = list(random_frames(3, 64, 96))
    with open_backend(path, backend="openvino", threads=1) as ov, open_backend(path, threads=1) as ort_:
        assert ov.name == "openvino" and "f32" in ov.provider and backend_for(path) == "onnxruntime"
        a, b = segment_frames(ov, frames), segment_frames(ort_, frames)
        assert all((x == y).mean() > 0.999 for x, y in zip(a, b))  # FP32 graph, f32 inference precision
        pa, pb = ov.predict(np.stack(frames[:1])), ort_.predict(np.stack(frames[:1]))
        assert np.abs(pa.logits - pb.logits).max() < 1e-3 * np.abs(pb.logits).max()
    with pytest.raises(ConfigError, match="providers"):
        open_backend(path, backend="openvino", providers=["cpu"])


def test_openvino_bf16_row_says_what_it_compiled_for(tmp_path, tiny_checkpoint):
    """``--backend openvino-bf16``: bf16 outside INT8 where the CPU has it; the provider names the precision
    OpenVINO really compiled for (f32 on a CPU without bf16), and the class maps stay close to f32's."""
    pytest.importorskip("openvino")
    from _runtime_helpers import export_tiny, random_frames

    from danet_edge.runtime.backends import open_backend, segment_frames

    path = export_tiny(tiny_checkpoint, tmp_path / "m.onnx")
    frames = list(random_frames(2, 64, 96))
    with open_backend(path, backend="openvino-bf16", threads=1) as bf, open_backend(path, backend="openvino",
                                                                                    threads=1) as f32:
        got = str(bf.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
        assert bf.name == "openvino-bf16" and f"({got} inference precision)" in bf.provider
        assert all((x == y).mean() > 0.95 for x, y in zip(segment_frames(bf, frames), segment_frames(f32, frames)))
