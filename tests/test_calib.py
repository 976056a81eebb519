"""INT8 Q/DQ graphs: TensorRT form (symmetric int8), CPU form (uint8), attention policy, reproducible
calibration record and caches keyed to the graph hash, calibration folder handling."""

from __future__ import annotations


import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from danet_edge.data.calib import fill_calib_dir, graph_sha256, load_calibration_set
from danet_edge.export.quantize import quantize_int8
from danet_edge.model.checkpoint import load_model
from danet_edge.core.errors import CalibrationError
from danet_edge.export.fp32 import export_onnx
from danet_edge.graph.precision import attention_nodes, precision_report


def _write_images(folder, n=4, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        small = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"img{i}.png"), cv2.resize(small, (120, 80)))
    return folder


@pytest.fixture(scope="module")
def fp32_graph(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8")
    path = export_onnx(load_model(tiny_checkpoint), out / "model.onnx", (64, 96)).path
    return path, load_calibration_set(_write_images(out / "calib"))


def _zero_points(model):
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    types = {i.name: i.data_type for i in model.graph.initializer}
    return [(n.name, types[n.input[2]], inits[n.input[2]]) for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def test_tensorrt_target_symmetric_int8_attention_kept(fp32_graph, tmp_path):
    src, calib = fp32_graph
    res = quantize_int8(src, calib, tmp_path / "trt.onnx", "tensorrt", "minmax")
    model = onnx.load(str(res.path))
    zps = _zero_points(model)
    assert zps and all(t == TensorProto.INT8 and not z.any() for _, t, z in zps)
    rep = precision_report(model)
    assert rep.by_op["Conv"] == {"int8": 28}
    att = attention_nodes(model).matmuls
    assert len(att) == 4 and not set(att) & set(rep.quantized)


def test_include_attention_quantizes_attention_matmuls(fp32_graph, tmp_path):
    src, calib = fp32_graph
    res = quantize_int8(src, calib, tmp_path / "trt_att.onnx", "tensorrt", "minmax", include_attention=True)
    model = onnx.load(str(res.path))
    rep = precision_report(model)
    assert set(rep.attention_quantized) == set(attention_nodes(model).matmuls) and len(rep.attention_quantized) == 4
    assert all(t == TensorProto.INT8 and not z.any() for _, t, z in _zero_points(model))


def test_cpu_target_uses_uint8_activations(fp32_graph, tmp_path):
    src, calib = fp32_graph
    model = onnx.load(str(quantize_int8(src, calib, tmp_path / "cpu.onnx", "cpu", "minmax").path))
    types = {t for _, t, _ in _zero_points(model)}
    assert TensorProto.UINT8 in types and TensorProto.INT8 in types  # uint8 activations, int8 weights


def test_record_and_caches_keyed_to_graph_hash(fp32_graph, tmp_path):
    src, calib = fp32_graph
    digest = graph_sha256(onnx.load(str(src)))
    first = quantize_int8(src, calib, tmp_path / "a.onnx", "tensorrt", "entropy")
    assert not first.reused
    for p in (first.record_path, first.ranges_path):
        assert p.is_file() and digest[:16] in p.name
    # no TensorRT calibration cache from export (issue 8, defect 8): build --int8-calib keys its own
    assert not list(tmp_path.glob("*.cache")) and "trt_cache" not in first.record
    rec = first.record
    assert rec["graph_sha256"] == digest and rec["method"] == "entropy" and rec["count"] == 4
    assert rec["images"] == [f"img{i}.png" for i in range(4)] and rec["seed"] == 0
    second = quantize_int8(src, calib, tmp_path / "b.onnx", "tensorrt", "entropy")
    assert second.reused
    other = load_calibration_set(calib.root, count=2, seed=1)
    assert not quantize_int8(src, other, tmp_path / "c.onnx", "tensorrt", "entropy").reused


def test_calibration_folder_errors_and_list(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="no image"):
        load_calibration_set(tmp_path / "empty")
    bad = _write_images(tmp_path / "bad", 2)
    (bad / "zz_broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(CalibrationError, match="zz_broken.png"):
        load_calibration_set(bad)
    listed = _write_images(tmp_path / "listed", 3)
    (listed / "calib.txt").write_text("# two of three\nimg2.png\nimg0.png\n")
    assert [p.name for p in load_calibration_set(listed).paths] == ["img2.png", "img0.png"]
    a = load_calibration_set(_write_images(tmp_path / "many", 6), count=3, seed=5)
    b = load_calibration_set(tmp_path / "many", count=3, seed=5)
    assert a.paths == b.paths and len(a) == 3 and a.available == 6


def test_fill_calib_dir_self_contained(tmp_path):
    out = fill_calib_dir("synthetic", None, 4, tmp_path / "calib")
    names = [l for l in (out / "calib.txt").read_text().splitlines() if not l.startswith("#")]
    assert len(names) == 4 and all((out / n).is_file() for n in names)
    assert len(load_calibration_set(out)) == 4
    with pytest.raises(CalibrationError, match="already exists"):
        fill_calib_dir("synthetic", None, 4, out)


@pytest.mark.slow
def test_fill_calib_dir_camvid_class_balanced(camvid_root, tmp_path):
    import json

    out = fill_calib_dir("camvid", camvid_root, 12, tmp_path / "calib")
    info = json.loads((out / "calib.json").read_text())
    assert len(info["images"]) == 12 and len(info["classes_covered"]) >= 10


def test_calibration_chunk_bounds_memory_and_divides():
    from danet_edge.export.quantize import calibration_chunk

    assert calibration_chunk(64) == 4 and calibration_chunk(6) == 3 and calibration_chunk(7) == 1
    assert calibration_chunk(2) == 2 and calibration_chunk(1) == 1
    for n in range(1, 40):
        c = calibration_chunk(n)
        assert n % c == 0 and 1 <= c <= 4


def test_chunked_minmax_ranges_equal_all_at_once(tmp_path):
    """ORT's strided collection (a few batches in memory at a time) keeps MinMax ranges exact."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    from danet_edge.data.calib import load_calibration_set
    from danet_edge.export.quantize import _Reader
    from danet_edge.export.export import ExportConfig, export_model
    from conftest import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "m.pt", image_size=(32, 48))
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        cv2.imwrite(str(frames / f"{i}.png"), rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    onnx_path = export_model(ckpt, ExportConfig(out=tmp_path / "export", fused_io=False)).artifacts[0].path
    model = onnx.load(str(onnx_path))
    calib = load_calibration_set(frames)

    def ranges(chunk):
        cal = create_calibrator(onnx_path, ["Conv"], augmented_model_path=str(tmp_path / f"aug{chunk}.onnx"),
                                calibrate_method=CalibrationMethod.MinMax)
        reader = _Reader(calib, model, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        for start in range(0, len(reader), chunk):
            reader.set_range(start, start + chunk)
            cal.collect_data(reader)
        return {k: np.concatenate([np.ravel(r) for r in v.range_value]) for k, v in cal.compute_data().data.items()}

    reader = _Reader(calib, model, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    every = list(iter(reader.get_next, None))
    reader.set_range(2, 4)
    part = list(iter(reader.get_next, None))
    assert len(every) == 6 and len(part) == 2
    np.testing.assert_array_equal(part[0]["images"], every[2]["images"])

    whole, chunked = ranges(6), ranges(2)
    assert whole.keys() == chunked.keys() and len(whole) > 10
    for k in whole:
        np.testing.assert_allclose(chunked[k], whole[k], rtol=1e-6, atol=1e-7)
