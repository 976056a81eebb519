"""DeepStream nvinfer configs and Triton model repositories (danet_edge/deepstream.py, triton.py, cli/deploy.py).

Triton's config is parsed with Triton's own schema: ``model_config_pb2`` from the ``tritonclient`` package (the
``[test]`` extra). It lives in ``tritonclient/grpc/``, whose ``__init__`` needs grpcio (``tritonclient[grpc]``,
which would also pin protobuf < 7); the generated module itself needs only protobuf, so it is loaded by path.
"""

from __future__ import annotations

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
    assert [float(v) for v in props["offsets"].split(";")] == pytest.approx([255 * v for v in m.mean])
    assert float(props["net-scale-factor"]) == pytest.approx(res.net_scale_factor)
    # files named relative to the config, beside it; one class name per line, in index order
    assert (res.folder / props["onnx-file"]).is_file() and (res.folder / props["labelfile-path"]).is_file()
    assert res.labels.read_text().splitlines() == m.classes
    assert read_manifest(res.model).output_name == "scores"  # sidecar and embedded manifest agree
    # rewritten in place (the folder carries danet-edge's marker); a foreign folder is refused
    deepstream.write_nvinfer_config(exported["logits"], tmp_path / "ds")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="did not write"):
        deepstream.write_nvinfer_config(exported["logits"], tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_nvinfer_graph_scores_keep_the_argmax(exported, tmp_path):
    """nvinfer's segmentation parser takes a class only if its value is > -1 and > segmentation-threshold:
    the softmax tail makes every winning score >= 1/K without moving the argmax."""
    import onnxruntime as ort

    res = deepstream.write_nvinfer_config(exported["logits"], tmp_path / "ds")
    m = read_manifest(exported["logits"])
    x = np.random.default_rng(0).standard_normal(m.input_shape).astype(np.float32) * 3
    def run(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]

    logits, scores = run(exported["logits"]), run(res.model)
    assert scores.shape == logits.shape and np.allclose(scores.sum(1), 1.0, atol=1e-5)
    assert np.array_equal(scores.argmax(1), logits.argmax(1)) and scores.max(1).min() >= 1 / m.num_classes - 1e-6


def test_single_scale_normalisation_error_imagenet():
    """nvinfer has one net-scale-factor for all channels; ImageNet's std differs per channel."""
    k, offsets = deepstream.single_scale_normalisation(IMAGENET_MEAN, IMAGENET_STD)
    assert offsets == pytest.approx([123.675, 116.28, 103.53])
    err = deepstream.normalisation_error(IMAGENET_MEAN, IMAGENET_STD, k, offsets)
    naive = deepstream.normalisation_error(IMAGENET_MEAN, IMAGENET_STD, 1 / (255 * np.mean(IMAGENET_STD)), offsets)
    assert err["max_abs"] <= naive["max_abs"] + 1e-12  # minimax: never worse than 1/(255 mean(std))
    assert err["max_abs"] == pytest.approx(0.0258, abs=1e-4) and err["mean_abs"] == pytest.approx(0.0106, abs=1e-4)
    assert naive["max_abs"] == pytest.approx(0.0299, abs=1e-4)
    same = deepstream.single_scale_normalisation(IMAGENET_MEAN, [0.25, 0.25, 0.25])
    assert deepstream.normalisation_error(IMAGENET_MEAN, [0.25] * 3, *same)["max_abs"] < 1e-12  # equal std: exact


def _label_change(onnx_path: Path, frames: np.ndarray) -> tuple[float, dict]:
    """Pixel agreement (%) between the graph on the exact normalisation and on nvinfer's single-scale one."""
    import onnxruntime as ort

    from danet_edge.data.preprocess import normalize, resize_image

    m = read_manifest(onnx_path)
    k, off = deepstream.single_scale_normalisation(m.mean, m.std)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    agree, total, errs = 0, 0, []
    for f in frames:
        pixels = resize_image(f, m.image_size)[None]  # the same pixels for both: only the normalisation differs
        exact, approx = normalize(pixels, m.mean, m.std), deepstream.nvinfer_input(pixels, k, off)
        errs.append(float(np.abs(approx - exact).max()))
        a = sess.run(None, {m.input_name: exact})[0].argmax(1)
        b = sess.run(None, {m.input_name: approx})[0].argmax(1)
        agree += int((a == b).sum())
        total += a.size
    return 100.0 * agree / total, {"max_abs": max(errs)}


def test_single_scale_costs_little_label_agreement(exported):
    """A random-weight tiny model is close to ties everywhere (the worst case for any input change); the figure
    on a trained CamVid model is in benchmarks/deepstream_normalisation.py and the report."""
    agreement, err = _label_change(exported["logits"], random_frames(4, 64, 96))
    print(f"single-scale normalisation on synthetic frames: agreement {agreement:.3f} %, max |dx| {err['max_abs']:.4f}")
    assert err["max_abs"] < 0.027 and agreement > 97.0


@pytest.mark.camvid
def test_single_scale_normalisation_error_on_camvid_pixels(camvid_root):
    """The normalised-input error on real street images (the pixels decide which x values occur)."""
    from PIL import Image

    files = sorted((camvid_root / "val").glob("*.png"))[:4]
    if not files:
        pytest.skip(f"no CamVid val images under {camvid_root}")
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    k, off = deepstream.single_scale_normalisation(IMAGENET_MEAN, IMAGENET_STD)
    err = deepstream.normalisation_error(IMAGENET_MEAN, IMAGENET_STD, k, off, pixels=pixels)
    print(f"CamVid val pixels ({len(files)} images): max {err['max_abs']:.4f}, mean {err['mean_abs']:.4f}")
    assert err["max_abs"] <= 0.0258 + 1e-4 and err["mean_abs"] < 0.02


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
    engine.write_bytes(b"not a real TensorRT plan")
    write_manifest(engine, replace(read_manifest(onnx_path), kind="engine"))
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
