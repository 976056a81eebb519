"""DeepStream nvinfer configs and Triton model repositories (danet_edge/deploy/deepstream.py, triton.py, cli/deploy.py).

Triton's config is parsed with Triton's own schema: ``model_config_pb2`` from the ``tritonclient`` package (the
``[test]`` extra). It lives in ``tritonclient/grpc/``, whose ``__init__`` needs grpcio (``tritonclient[grpc]``,
which would also pin protobuf < 7); the generated module itself needs only protobuf, so it is loaded by path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from _runtime_helpers import export_tiny, random_frames
from danet_edge.deploy import deepstream, triton
from danet_edge.core.errors import ConfigError, DataError, ManifestError
from danet_edge.core.manifest import read_manifest, write_manifest

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint as a logits graph and as a fused-I/O graph (5 classes, 64x96, batch 1)."""
    d = tmp_path_factory.mktemp("deploy")
    return {"logits": export_tiny(tiny_checkpoint, d / "model.onnx"),
            "fused": export_tiny(tiny_checkpoint, d / "model_fused.onnx", fused=True)}


@pytest.fixture(scope="module")
def model_config_pb2():
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tritonclient is not installed (pip install 'danet-edge[test]')")
    path = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
    mod_spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------------------------- DeepStream

def test_nvinfer_config_uses_only_documented_properties(exported, tmp_path):
    res = deepstream.write_nvinfer_config(exported["logits"], tmp_path / "ds")
    groups = deepstream.parse_nvinfer_config(res.config)
    assert list(groups) == ["property"]
    props = groups["property"]
    assert set(props) <= deepstream.NVINFER_PROPERTIES, set(props) - deepstream.NVINFER_PROPERTIES
    m = read_manifest(exported["logits"])
    assert props["network-type"] == "2" and props["network-mode"] == "0"  # segmentation, FP32 graph
    assert props["model-color-format"] == "0" and props["num-detected-classes"] == str(m.num_classes)
    assert props["batch-size"] == "1" and props["output-tensor-meta"] == "1" and props["maintain-aspect-ratio"] == "0"
    assert props["output-blob-names"] == "scores" and "cluster-mode" not in props
    # nvinfer hands the graph x/255; the graph normalises per channel (float64 1/255 to the last digit)
    assert props["offsets"] == "0;0;0" and float(props["net-scale-factor"]) == 1 / 255
    assert res.net_scale_factor == 1 / 255 and res.offsets == [0.0, 0.0, 0.0]
    # files named relative to the config, beside it; one class name per line, in index order
    assert (res.folder / props["onnx-file"]).is_file() and (res.folder / props["labelfile-path"]).is_file()
    assert res.labels.read_text().splitlines() == m.classes
    ds = read_manifest(res.model)  # sidecar and embedded manifest agree
    assert ds.output_name == "scores" and ds.mean == [0, 0, 0] and ds.std == [1, 1, 1]  # a host feeds it x/255
    rec = ds.extra["deepstream"]
    assert rec["net_scale_factor"] == 1 / 255 and rec["offsets"] == [0, 0, 0]
    assert rec["normalisation_in_graph"]["mean"] == m.mean and rec["normalisation_in_graph"]["std"] == m.std
    assert not any("approximat" in n for n in res.notes) and "approximat" not in res.config.read_text()
    # rewritten in place (the folder carries danet-edge's marker); a foreign folder is refused
    deepstream.write_nvinfer_config(exported["logits"], tmp_path / "ds")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="did not write"):
        deepstream.write_nvinfer_config(exported["logits"], tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def _session(path: Path, also: str | None = None):
    """ONNX Runtime CPU session of the graph at ``path``, with the inner tensor ``also`` as a second output."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    if also is not None:
        model.graph.output.append(onnx.helper.make_tensor_value_info(also, onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _deepstream_vs_fused(config: Path, fused: Path, logits: str, frames: np.ndarray) -> tuple[float, float]:
    """Run the DeepStream graph (on nvinfer's input, from the written config's net-scale-factor and offsets) and
    the fused-I/O graph (on the uint8 frames) frame by frame: ``(% equal class maps, max |dlogits| / max |logits|)``,
    ``logits`` the name of the logits tensor inside both. The DeepStream graph's class map is the argmax of its
    scores (what nvinfer's parser takes)."""
    props = deepstream.parse_nvinfer_config(config)["property"]
    scale, offsets = float(props["net-scale-factor"]), [float(v) for v in props["offsets"].split(";")]
    m = read_manifest(fused)
    ds, fu = _session(config.parent / props["onnx-file"], logits), _session(fused, logits)
    equal = total = 0
    worst = 0.0
    for f in frames:
        scores, ds_logits = ds.run(None, {m.input_name: deepstream.nvinfer_input(f[None], scale, offsets)})
        labels, fu_logits = fu.run(None, {m.input_name: f[None]})
        equal += int((scores.argmax(1) == labels).sum())
        total += labels.size
        worst = max(worst, float(np.abs(ds_logits - fu_logits).max() / np.abs(fu_logits).max()))
    return 100.0 * equal / total, worst


def test_deepstream_graph_computes_the_fused_graph(exported, tmp_path):
    """Issue 24: nvinfer's net-scale-factor is one number for three channels, so the per-channel normalisation
    lives in the DeepStream graph. Fed what nvinfer feeds (config's 1/255, offsets 0), it gives the fused-I/O
    graph's class maps and logits. A random-weight model is close to ties everywhere: the single-scale
    approximation this replaces changed a few % of its labels."""
    res = deepstream.write_nvinfer_config(exported["logits"], tmp_path / "ds")
    props = deepstream.parse_nvinfer_config(res.config)["property"]
    assert props["net-scale-factor"] == "0.00392156862745098" and props["offsets"] == "0;0;0"
    logits = read_manifest(exported["logits"]).output_name
    agreement, rel = _deepstream_vs_fused(res.config, exported["fused"], logits, random_frames(4, 64, 96))
    print(f"DeepStream graph vs fused graph, synthetic frames: {agreement:.4f} % equal labels, "
          f"max |dlogits| {rel:.2e} of max |logits|")
    assert agreement == 100.0 and rel <= 1e-5


def test_deepstream_head_is_exact_for_every_pixel_value():
    """Every 8-bit value in every channel: the DeepStream head on nvinfer's x/255 gives the fused head's
    normalised input bit for bit (one graph of identity "logits" through both rewrites). Without the Round,
    float32 (x * 1/255) * 255 misses x for some values; with it, even FP16 x/255 comes back to x."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from danet_edge.export.graph_io import fuse_io

    shape = [1, 3, 16, 16]
    g = helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "identity",
                          [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    ds_model = deepstream.nvinfer_graph(model, IMAGENET_MEAN, IMAGENET_STD)
    fused_model = fuse_io(model, IMAGENET_MEAN, IMAGENET_STD)
    onnx.checker.check_model(ds_model)
    pixels = np.stack([np.arange(256, dtype=np.uint8).reshape(16, 16)] * 3, -1)[None]  # (1, 16, 16, 3)
    y = deepstream.nvinfer_input(pixels, deepstream.NET_SCALE_FACTOR, deepstream.OFFSETS)

    def run(m, feed):  # the "logits" (the normalised input) as an output beside the graph's own
        m.graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape))
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            ["logits"], {"images": feed})[0]

    ds, fused = run(ds_model, y), run(fused_model, pixels)
    want = ((pixels.astype(np.float32) - np.float32(255) * np.float32(IMAGENET_MEAN))
            * (np.float32(1) / (np.float32(IMAGENET_STD) * np.float32(255)))).transpose(0, 3, 1, 2)
    assert np.array_equal(ds, fused) and np.array_equal(fused, want)
    assert not np.array_equal(y * np.float32(255), pixels.transpose(0, 3, 1, 2).astype(np.float32))  # why Round
    assert np.array_equal(np.round(y.astype(np.float16).astype(np.float32) * 255), pixels.transpose(0, 3, 1, 2))


def test_nvinfer_graph_scores_keep_the_argmax(exported, tmp_path):
    """nvinfer's segmentation parser takes a class only if its value is > -1 and > segmentation-threshold:
    the softmax tail makes every winning score >= 1/K without moving the argmax."""
    res = deepstream.write_nvinfer_config(exported["logits"], tmp_path / "ds")
    m = read_manifest(exported["logits"])
    x = deepstream.nvinfer_input(random_frames(1, 64, 96, seed=3), res.net_scale_factor, res.offsets)
    scores, logits = _session(res.model, m.output_name).run(None, {m.input_name: x})
    assert scores.shape == logits.shape == tuple(m.output_shape) and np.allclose(scores.sum(1), 1.0, atol=1e-5)
    assert np.array_equal(scores.argmax(1), logits.argmax(1)) and scores.max(1).min() >= 1 / m.num_classes - 1e-6


@pytest.mark.camvid
def test_deepstream_graph_computes_the_fused_graph_on_camvid(exported, camvid_root, tmp_path):
    """The same on real street images (CamVid val, resized to the tiny model's 64x96): 100 % equal labels. The
    trained CamVid model on all 101 val images at 360x480: benchmarks/deepstream_normalisation.py."""
    from PIL import Image

    from danet_edge.data.preprocess import resize_image

    pairs = [line.split() for line in (camvid_root / "val.txt").read_text().splitlines() if line.strip()][:4]
    if not pairs:
        pytest.skip(f"no CamVid val pairs in {camvid_root / 'val.txt'}")
    m = read_manifest(exported["fused"])
    frames = np.stack([resize_image(np.asarray(Image.open(camvid_root / img).convert("RGB")), m.image_size)
                       for img, _ in pairs])
    res = deepstream.write_nvinfer_config(exported["logits"], tmp_path / "ds")
    logits = read_manifest(exported["logits"]).output_name
    agreement, rel = _deepstream_vs_fused(res.config, exported["fused"], logits, frames)
    print(f"DeepStream graph vs fused graph, {len(frames)} CamVid val images: {agreement:.4f} % equal labels, "
          f"max |dlogits| {rel:.2e} of max |logits|")
    assert agreement == 100.0 and rel <= 1e-5


def test_nvinfer_refuses_fused_io_and_engines(exported, tmp_path):
    with pytest.raises(ConfigError, match="fused I/O"):
        deepstream.write_nvinfer_config(exported["fused"], tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    engine = _fake_engine(exported["logits"], tmp_path)  # an engine of the plain logits graph: raw logits out
    with pytest.raises(ConfigError, match="misread"):
        deepstream.write_nvinfer_config(engine, tmp_path / "ds")
    cpu = tmp_path / "model_int8_cpu.onnx"
    cpu.write_bytes(exported["logits"].read_bytes())
    write_manifest(cpu, replace(read_manifest(exported["logits"]), target="cpu"))  # the pair check keeps precision
    with pytest.raises(ConfigError, match="CPU INT8"):
        deepstream.write_nvinfer_config(cpu, tmp_path / "ds")
    with pytest.raises(ConfigError, match="segmentation-threshold"):
        deepstream.DeepStreamConfig(segmentation_threshold=1.5)
    res = deepstream.write_nvinfer_config(exported["logits"], tmp_path / "ds_ok")
    with pytest.raises(ConfigError, match="already a DeepStream graph"):  # its head would normalise twice
        deepstream.write_nvinfer_config(res.model, tmp_path / "ds")
    old = _fake_engine(res.model, tmp_path)  # built from an older .deepstream.onnx: no normalisation head
    m = read_manifest(old)
    write_manifest(old, replace(m, extra={**m.extra, "deepstream": {"source": "model.onnx", "net_scale_factor": 0.017,
                                                                     "offsets": [123.675, 116.28, 103.53]}}))
    with pytest.raises(ConfigError, match="older danet-edge"):
        deepstream.write_nvinfer_config(old, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_nvinfer_config_for_an_engine_built_from_the_deepstream_graph(exported, tmp_path):
    """deploy graph.onnx -> DIR/graph.deepstream.onnx -> danet-edge build -> deploy the engine: model-engine-file."""
    res = deepstream.write_nvinfer_config(exported["logits"], tmp_path / "ds")
    engine = _fake_engine(res.model, tmp_path)  # what build writes: the .deepstream.onnx manifest, kind engine
    out = deepstream.write_nvinfer_config(engine, tmp_path / "ds_engine")
    props = deepstream.parse_nvinfer_config(out.config)["property"]
    assert props["model-engine-file"] == engine.name and "onnx-file" not in props
    assert set(props) <= deepstream.NVINFER_PROPERTIES
    assert (out.folder / engine.name).read_bytes() == engine.read_bytes() and read_manifest(out.folder / engine.name)


# ---------------------------------------------------------------------------------------------- Triton

def _fake_engine(onnx_path: Path, tmp_path: Path) -> Path:
    """An engine-shaped artifact (bytes are not a real plan) with an engine manifest, for the file layout."""
    engine = tmp_path / f"{onnx_path.stem}.engine"
    plan = b"not a real TensorRT plan"
    engine.write_bytes(plan)
    built = {"engine_bytes": len(plan), "engine_sha256": hashlib.sha256(plan).hexdigest()}  # what ties it to the file
    write_manifest(engine, replace(read_manifest(onnx_path), kind="engine", tensorrt=built))
    return engine


@pytest.mark.parametrize("kind", ["logits", "fused"])
def test_triton_config_parses_with_tritons_schema(exported, tmp_path, model_config_pb2, kind):
    from google.protobuf import text_format

    folder = triton.write_model_repository(exported[kind], tmp_path / "repo", triton.TritonConfig(name="danet"))
    cfg = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    m = read_manifest(exported[kind])
    types = model_config_pb2.DataType
    assert cfg.name == "danet" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 0
    (inp,), (out,) = cfg.input, cfg.output
    assert inp.name == m.input_name and list(inp.dims) == m.input_shape
    assert out.name == m.output_name and list(out.dims) == m.output_shape
    if kind == "fused":
        assert list(inp.dims) == [1, 64, 96, 3] and inp.data_type == types.Value("TYPE_UINT8")
        assert list(out.dims) == [1, 64, 96] and out.data_type == types.Value("TYPE_INT32")
    else:
        assert list(inp.dims) == [1, 3, 64, 96] and inp.data_type == types.Value("TYPE_FP32")
        assert list(out.dims) == [1, 5, 64, 96] and out.data_type == types.Value("TYPE_FP32")
    model = folder / "1" / "model.onnx"
    assert model.read_bytes() == exported[kind].read_bytes()
    assert read_manifest(model).classes == m.classes  # the manifest beside it, and it belongs to it


def test_triton_engine_is_a_plan(exported, tmp_path, model_config_pb2):
    from google.protobuf import text_format

    engine = _fake_engine(exported["fused"], tmp_path)
    folder = triton.write_model_repository(engine, tmp_path / "repo", triton.TritonConfig(version=3))
    assert folder.name == "model_fused"
    cfg = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.platform == "tensorrt_plan" and (folder / "3" / "model.plan").is_file()
    assert (folder / "3" / "model.plan.json").is_file()
    for bad in ("../x", ".hidden", "a b", ""):
        with pytest.raises(ConfigError, match="--name"):
            triton.TritonConfig(name=bad)


def test_bad_artifacts_are_one_line_errors(exported, tmp_path):
    with pytest.raises(DataError, match="no such file"):
        triton.write_model_repository(tmp_path / "missing.onnx", tmp_path / "repo")
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(exported["logits"].read_bytes())
    with pytest.raises(ManifestError, match="not found beside it"):
        triton.write_model_repository(lonely, tmp_path / "repo")
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="deploy takes"):
        deepstream.write_nvinfer_config(tmp_path / "m.pt", tmp_path / "ds")


def test_a_graph_that_does_not_parse_or_match_its_manifest_is_refused(exported, tmp_path):
    """The configs are written from the manifest: a corrupt graph, or one whose I/O is not the manifest's,
    would only fail when DeepStream or Triton loads it; both writers refuse it, writing nothing."""
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a protobuf")
    shutil.copyfile(exported["logits"].with_name("model.onnx.json"), tmp_path / "corrupt.onnx.json")
    import onnx

    swapped = tmp_path / "swapped.onnx"  # the fused graph, without the manifest export embeds, beside the logits
    fused = onnx.load(str(exported["fused"]))  # graph's sidecar (an embedded one would be caught by read_manifest)
    del fused.metadata_props[:]
    onnx.save(fused, str(swapped))
    shutil.copyfile(exported["logits"].with_name("model.onnx.json"), tmp_path / "swapped.onnx.json")
    for artifact, want in ((corrupt, "not a readable ONNX graph"), (swapped, "is not its manifest's")):
        with pytest.raises(ManifestError, match=want):
            triton.write_model_repository(artifact, tmp_path / "repo")
        with pytest.raises(ManifestError, match=want):
            deepstream.write_nvinfer_config(artifact, tmp_path / "ds")
    assert not (tmp_path / "repo").exists() and not (tmp_path / "ds").exists()
    with pytest.raises(ConfigError, match="--model-version"):
        triton.write_model_repository(exported["logits"], tmp_path / "repo", triton.TritonConfig(version=0))


# ---------------------------------------------------------------------------------------------- CLI

def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from danet_edge.cli import main

    monkeypatch.setattr(sys, "argv", ["danet-edge", *args])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


def test_cli_deploy(exported, tmp_path, monkeypatch, capsys):
    code, out, err = _cli(monkeypatch, capsys, "deploy", str(exported["logits"]), "--deepstream", str(tmp_path / "ds"),
                          "--triton", str(tmp_path / "repo"), "--name", "danet", "-q")
    assert code == 0, err
    assert (tmp_path / "ds" / deepstream.CONFIG_NAME).is_file() and (tmp_path / "repo/danet/config.pbtxt").is_file()
    assert "DeepStream:" in out and "Triton:" in out
    for args, want_code, want in (
            (["deploy", str(tmp_path / "missing.onnx"), "--triton", str(tmp_path / "r")], 3, "no such file"),
            (["deploy", str(exported["logits"])], 2, "--deepstream DIR and/or --triton REPO"),
            (["deploy", str(exported["fused"]), "--deepstream", str(tmp_path / "d2")], 2, "fused I/O"),
            (["deploy", str(exported["logits"]), "--triton", str(tmp_path / "r"), "--name", "../up"], 2, "--name")):
        code, out, err = _cli(monkeypatch, capsys, *args)
        assert code == want_code and err.startswith("error:") and want in err, (args, code, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "d2").exists() and not (tmp_path / "r").exists()
    assert json.loads((tmp_path / "repo/danet/.danet-edge-deploy.json").read_text())["kind"] == "triton"
