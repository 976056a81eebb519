"""Issue 23: quantization-aware fine-tuning. The fake quantization sits where the recipe's graph has Q/DQ (so the
simulated model computes what the graph computes), the scales learn, a QAT checkpoint exports to the recipe's graph
with the learned scales, resume is exact, and QAT and float checkpoints are not taken for each other."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
import torch

from _runtime_helpers import make_tiny_checkpoint, run_cli
from danet_edge.core.errors import CheckpointError, ConfigError, ExportError
from danet_edge.data.calib import load_calibration_set
from danet_edge.data.preprocess import preprocess
from danet_edge.export.fp32 import ort_session
from danet_edge.export.qat import check_placement, learned_ranges, module_path, quantized_tensors
from danet_edge.export.qat_train import prepare_qat, qat_train
from danet_edge.export.quantize import quantize_int8
from danet_edge.model.checkpoint import load_checkpoint, load_model
from danet_edge.model.fakequant import attach_qat, validate_qat_record
from danet_edge.train.config import TrainConfig

SIZE = (64, 96)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    out = tmp_path_factory.mktemp("qat")
    ckpt = make_tiny_checkpoint(out / "tiny.pt", num_classes=8, image_size=SIZE)
    (out / "calib").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):  # smooth colour fields: activations that look like images, not noise
        cv2.imwrite(str(out / "calib" / f"{i}.png"), cv2.resize(rng.integers(0, 256, (6, 8, 3), np.uint8), SIZE[::-1]))
    records = {}
    for recipe in ("int8-tensorrt", "int8-cpu"):
        work = out / recipe
        work.mkdir()
        records[recipe] = (prepare_qat(ckpt, recipe, out / "calib", work_dir=work), work)
    return {"dir": out, "ckpt": ckpt, "calib": out / "calib", "records": records}


def test_module_path_follows_torch_scopes():
    assert module_path("/backbone/layer2/layer2.0/downsample/downsample.0/Conv") == "backbone.layer2.0.downsample.0"
    assert module_path("/head/conv5a/conv5a.0/Conv") == "head.conv5a.0"
    assert module_path("/backbone/conv1/Conv") == "backbone.conv1"
    assert module_path("/head/sa/Add") == "head.sa"


@pytest.mark.parametrize("recipe,file_name", [("int8-tensorrt", "model_int8_trt.onnx"), ("int8-cpu", "model_int8_cpu.onnx")])
def test_every_qdq_of_the_graph_is_simulated(setup, recipe, file_name):
    record, work = setup["records"][recipe]
    graph, fp32 = onnx.load(str(work / file_name)), onnx.load(str(work / "model.onnx"))
    qdq = quantized_tensors(graph, fp32)
    assert {a["tensor"] for a in record["activations"]} == set(qdq)
    q_nodes = sum(n.op_type == "QuantizeLinear" for n in graph.graph.node)
    assert len(record["activations"]) == q_nodes  # one quantizer per Q/DQ pair, shared by its readers
    convs = [n for n in fp32.graph.node if n.op_type == "Conv"]
    expected_weights = len(convs) - (1 if recipe == "int8-cpu" else 0)  # the cpu target keeps the classifier FP32
    assert len(record["weights"]) == expected_weights
    kinds = {k for a in record["activations"] for k, _ in a["sites"]}
    assert {"input", "skip"} <= kinds and ("output" in kinds) == (recipe == "int8-cpu")
    assert all(0 < a["scale"] < 10 for a in record["activations"])
    validate_qat_record(record, "test")


BLOCK = ("backbone.layer1.0", "/backbone/layer1/layer1.0/relu_1/Relu_output_0")  # the first residual block's output


def _graph_with_output(path, tensor):
    """The graph at ``path`` with ``tensor`` as a second output (its type from shape inference)."""
    model = onnx.load(str(path))
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, types.get(tensor, onnx.TensorProto.FLOAT), None))
    return model


@pytest.mark.parametrize("recipe", ["int8-tensorrt", "int8-cpu"])
def test_simulated_model_computes_what_the_graph_computes(setup, recipe, tmp_path):
    """The fake-quantized PyTorch model computes what the Q/DQ graph computes: at the first residual block (Conv
    inputs, weights, the skip or the Conv outputs quantized) it is several times closer to the graph than the float
    model is. The tensorrt recipe's placement is checked on its FP32-rest twin (same Q/DQ, no FP16 rounding, which
    flips roundings at the next Q/DQ and is the graph's own noise, not the simulation's); deeper in a random
    network every rounding flip grows, so the comparison is made where the placement shows."""
    record, work = setup["records"][recipe]
    target = "tensorrt" if recipe == "int8-tensorrt" else "cpu"
    graph_path = tmp_path / "twin.onnx"
    quantize_int8(work / "model.onnx", None, graph_path, target, high_precision="fp32", ranges=learned_ranges(record))
    check_placement(graph_path, work / "model.onnx", record)
    loaded, float_model = load_model(setup["ckpt"]), load_model(setup["ckpt"]).model
    attach_qat(loaded.model, record)
    loaded.model.eval()
    seen = {}
    loaded.model.get_submodule(BLOCK[0]).register_forward_hook(lambda m, i, o: seen.__setitem__("sim", o.numpy().copy()))
    float_model.get_submodule(BLOCK[0]).register_forward_hook(lambda m, i, o: seen.__setitem__("flt", o.numpy().copy()))
    sess = ort_session(_graph_with_output(graph_path, BLOCK[1]), "int8")
    sim_err, float_err = [], []
    for frame in load_calibration_set(setup["calib"]).frames():
        x = preprocess([frame], SIZE, loaded.data["mean"], loaded.data["std"])
        graph = sess.run(None, {sess.get_inputs()[0].name: x})[1].astype(np.float32)
        with torch.no_grad():
            loaded.model(torch.from_numpy(x)), float_model(torch.from_numpy(x))
        sim_err.append(np.linalg.norm(seen["sim"] - graph) / np.linalg.norm(graph))
        float_err.append(np.linalg.norm(seen["flt"] - graph) / np.linalg.norm(graph))
    assert np.mean(sim_err) < 0.25 * np.mean(float_err), (sim_err, float_err)


def test_learned_ranges_give_back_the_scales(setup, tmp_path):
    """The record's scales, given to ONNX Runtime's quantizer as ranges, come back as the graph's scales, on the same
    tensors, for both targets (INT8 symmetric and UINT8 with zero point)."""
    for recipe, target in (("int8-tensorrt", "tensorrt"), ("int8-cpu", "cpu")):
        record, work = setup["records"][recipe]
        record = {**record, "activations": [{**a, "scale": a["scale"] * 1.37} for a in record["activations"]]}
        out = tmp_path / f"{target}.onnx"
        res = quantize_int8(work / "model.onnx", None, out, target, ranges=learned_ranges(record))
        check_placement(out, work / "model.onnx", record)
        assert res.record["scales"] == "learned"
        got = quantized_tensors(onnx.load(str(out)), onnx.load(str(work / "model.onnx")))
        for a in record["activations"]:
            g = got[a["tensor"]]
            assert g["scale"] == pytest.approx(a["scale"], rel=1e-3 if target == "tensorrt" else 1e-6)  # FP16 scales
            assert g["zero_point"] == a["zero_point"]
        with pytest.raises(ExportError, match="other tensors than the QAT record: 1 more"):
            check_placement(out, work / "model.onnx", {**record, "activations": record["activations"][1:]})


def _qat_cfg(out, **kw):
    base = dict(dataset="synthetic", data_options={"size": SIZE}, epochs=2, batch_size=4, limit_train=8, limit_val=2,
                workers=0, out_dir=str(out), progress=False, lr=0.01)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def qat_run(setup):
    out = setup["dir"] / "run"
    best = qat_train(setup["ckpt"], "int8-tensorrt", _qat_cfg(out), setup["calib"])
    return out, best


def test_qat_run_learns_and_keeps_a_float_state_dict(setup, qat_run):
    out, best = qat_run
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["qat"]["learned"] and ckpt["qat"]["epochs"] == 2 and ckpt["qat"]["recipe"] == "int8-tensorrt"
    assert not any(k.startswith("qat.") for k in ckpt["model"])  # a plain DANet state dict
    start, _ = setup["records"]["int8-tensorrt"]
    moved = [abs(a["scale"] - b["scale"]) / b["scale"] for a, b in zip(ckpt["qat"]["activations"], start["activations"])]
    assert max(moved) > 0  # the scales are parameters that learned
    src = load_checkpoint(setup["ckpt"])
    assert any(not torch.equal(v, src["model"][k]) for k, v in ckpt["model"].items() if v.is_floating_point())
    groups = ckpt["optimizer"]["param_groups"]
    assert len(groups) == 3 and groups[2]["weight_decay"] == 0.0
    bn = ckpt["model"]["backbone.bn1.running_mean"]
    assert torch.equal(bn, src["model"]["backbone.bn1.running_mean"])  # BatchNorm frozen: the graph folds these
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]


def test_qat_resume_continues_exactly(setup, qat_run, tmp_path, monkeypatch):
    straight, _ = qat_run
    split = tmp_path / "split"

    def killed(record, epochs):  # dies right after epoch 1's checkpoint
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr("danet_edge.train.train._log_epoch", killed)
        with pytest.raises(KeyboardInterrupt):
            qat_train(setup["ckpt"], "int8-tensorrt", _qat_cfg(split), setup["calib"])
    assert load_checkpoint(split / "last.pt")["epoch"] == 0
    qat_train(setup["ckpt"], "int8-tensorrt", _qat_cfg(split, resume=True), setup["calib"])
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(split / "last.pt")
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-6), k
    assert [x["scale"] for x in a["qat"]["activations"]] == pytest.approx([x["scale"] for x in b["qat"]["activations"]],
                                                                          rel=1e-5)


def test_qat_checkpoint_exports_with_learned_scales(setup, qat_run, tmp_path, capsys):
    _, best = qat_run
    code, _, err = run_cli(["export", best, "-o", tmp_path / "x", "--reference-images", "2"], capsys)
    assert code == 0, err
    graph = tmp_path / "x" / "model_int8_trt.onnx"
    manifest = json.loads((tmp_path / "x" / "model_int8_trt.onnx.json").read_text())
    cal = manifest["calibration"]
    qat_record = load_checkpoint(best)["qat"]
    assert cal["scales"] == "learned" and cal["qat"]["source_sha256"] == load_model(setup["ckpt"]).sha256
    assert manifest["source_checkpoint_sha256"] == load_model(best, qat=True).sha256
    from danet_edge.core.manifest import read_manifest

    assert read_manifest(graph).quantization() == "QAT"  # what check and bench print beside the precision
    assert read_manifest(setup["records"]["int8-tensorrt"][1] / "model_int8_trt.onnx").quantization() == "PTQ"
    inputs = onnx.load(str(graph)).graph.input[0]
    assert inputs.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    # same placement as the PTQ graph of the float checkpoint, with the learned scales
    ptq_record, work = setup["records"]["int8-tensorrt"]
    code, _, err = run_cli(["export", best, "-o", tmp_path / "y", "--reference-images", "0", "--logits"], capsys)
    assert code == 0, err
    got = quantized_tensors(onnx.load(str(tmp_path / "y" / "model_int8_trt.onnx")),
                            onnx.load(str(tmp_path / "y" / "model.onnx")))
    assert set(got) == {a["tensor"] for a in ptq_record["activations"]}
    ptq, qat = onnx.load(str(work / "model_int8_trt.onnx")).graph, onnx.load(str(tmp_path / "y" / "model_int8_trt.onnx")).graph
    assert [(n.op_type, list(n.input), list(n.output)) for n in ptq.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in qat.node]  # node for node the PTQ graph: only values differ
    assert {i.name: (i.data_type, list(i.dims)) for i in ptq.initializer} == \
        {i.name: (i.data_type, list(i.dims)) for i in qat.initializer}
    for a in qat_record["activations"]:
        assert got[a["tensor"]]["scale"] == pytest.approx(a["scale"], rel=1e-3)


def test_qat_and_float_checkpoints_are_not_taken_for_each_other(setup, qat_run, tmp_path, capsys):
    out, best = qat_run
    for args in (["eval", best], ["check", setup["dir"] / "int8-tensorrt" / "model_int8_trt.onnx", "-r", best],
                 ["train", "--qat", "int8-tensorrt", "--weights", best, "-o", tmp_path / "t"]):
        code, _, err = run_cli(args, capsys)
        assert code == 3 and len(err) == 1 and "is a QAT checkpoint" in err[0], (args, err)  # a checkpoint error
    with pytest.raises(CheckpointError, match="is a QAT checkpoint"):
        load_model(best)
    # a float run resumed as QAT, and a QAT run resumed as float
    float_run = tmp_path / "float"
    from danet_edge.train.train import train

    train(_qat_cfg(float_run, epochs=1))
    with pytest.raises(CheckpointError, match="float training run"):
        qat_train(setup["ckpt"], "int8-tensorrt", _qat_cfg(float_run, resume=True, epochs=2), setup["calib"])
    with pytest.raises(CheckpointError, match="is a QAT checkpoint"):
        train(_qat_cfg(out, resume=True, epochs=3))
    code, _, err = run_cli(["export", best, "--fp16", "-o", tmp_path / "z"], capsys)
    assert code == 2 and "exports that graph only" in err[0]
    with pytest.raises(ConfigError, match="--qat"):
        _qat_cfg(tmp_path / "q", qat="int8-fp16", weights=str(setup["ckpt"])).validate()


def test_bad_qat_records_are_refused():
    good = {"format": "danet-edge-qat/1", "recipe": "int8-tensorrt", "target": "tensorrt", "source_sha256": "ab",
            "image_size": [64, 96], "weights": ["backbone.conv1"], "ranges": {"t": [0.0, 1.0]},
            "activations": [{"tensor": "t", "scale": 0.1, "zero_point": 0, "qmin": -128, "qmax": 127,
                             "sites": [["input", "backbone.conv1"]]}]}
    validate_qat_record(good, "x")
    for bad, msg in (({"scale": float("nan")}, "scale"), ({"scale": -1.0}, "scale"), ({"zero_point": 300}, "zero point"),
                     ({"qmin": -5}, "neither INT8"), ({"sites": [["elsewhere", "a"]]}, "sites")):
        rec = {**good, "activations": [{**good["activations"][0], **bad}]}
        with pytest.raises(CheckpointError, match=msg):
            validate_qat_record(rec, "x")
    with pytest.raises(CheckpointError, match="range of"):
        validate_qat_record({**good, "ranges": {"t": [2.0, 1.0]}}, "x")
    model = load_model  # noqa: F841 - a record naming another model's module is refused at attach time
    from danet_edge.model.danet import build_model
    from danet_edge.model.config import ModelConfig

    net = build_model(ModelConfig(backbone="resnet18", num_classes=3))
    with pytest.raises(CheckpointError, match="not a module"):
        attach_qat(net, {**good, "weights": ["backbone.layer9.conv1"]})


@pytest.mark.slow
def test_two_process_qat_learns_the_same_quantizers(setup, qat_run, tmp_path):
    """DDP: two processes fine-tune one set of scales (they are parameters of the wrapped model, so their gradients
    are averaged like the weights') and rank 0 writes the QAT checkpoint."""
    out = tmp_path / "ddp"
    qat_train(setup["ckpt"], "int8-tensorrt", _qat_cfg(out, devices=2, epochs=1), setup["calib"])
    a, b = load_checkpoint(qat_run[0] / "last.pt"), load_checkpoint(out / "last.pt")
    assert b["qat"]["learned"] and b["train_config"]["devices"] == 2
    assert [x["tensor"] for x in a["qat"]["activations"]] == [x["tensor"] for x in b["qat"]["activations"]]
    start, _ = setup["records"]["int8-tensorrt"]
    assert any(x["scale"] != y["scale"] for x, y in zip(b["qat"]["activations"], start["activations"]))


def test_check_judges_a_qat_graph_by_its_miou_against_the_float_model(setup, qat_run, tmp_path, capsys):
    """Against the float checkpoint QAT started from, the graph's agreement is not a fidelity measure (the weights were
    fine-tuned on purpose): check notes it and judges the mIoU change. Against its own reference bundle (the QAT
    checkpoint's float weights) the agreement threshold applies as for any graph."""
    _, best = qat_run
    out = tmp_path / "x"
    assert run_cli(["export", best, "-o", out, "--reference-images", "2"], capsys)[0] == 0
    graph = out / "model_int8_trt.onnx"
    code, _, err = run_cli(["check", graph, "-r", setup["ckpt"], "--dataset", "synthetic", "--limit", "2",
                            "--min-agreement", "100", "--max-miou-drop", "100", "--json", tmp_path / "a.json"], capsys)
    art = json.loads((tmp_path / "a.json").read_text())["artifacts"][0]
    assert code == 0 and art["quantization"] == "QAT", err
    assert not any("agreement" in f for f in art["failures"]) and any("QAT graph of this reference" in n for n in art["notes"])
    code, _, err = run_cli(["check", graph, "-r", out / "reference", "--min-agreement", "100",
                            "--json", tmp_path / "b.json"], capsys)
    art = json.loads((tmp_path / "b.json").read_text())["artifacts"][0]
    assert art["agreement"] == 100.0 or any("agreement" in f for f in art["failures"])  # the threshold applies


@pytest.mark.slow
def test_qat_resume_after_kill_9_continues_exactly(setup, qat_run, tmp_path):
    """``train --qat`` killed with SIGKILL right after its first epoch's metrics line, then ``--resume``: the same
    weights, scales and metrics as the run that was never killed (``qat_run``, same options, in-process)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    args = [sys.executable, "-m", "danet_edge.cli", "train", "--qat", "int8-tensorrt", "--weights", str(setup["ckpt"]),
            "--dataset", "synthetic", "--synthetic-size", str(SIZE[0]), str(SIZE[1]), "--epochs", "2", "--batch-size",
            "4", "--limit-train", "8", "--limit-val", "2", "--workers", "0", "--lr", "0.01", "--calib",
            str(setup["calib"]), "-o", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 600
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1) and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    r = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = load_checkpoint(qat_run[0] / "last.pt"), load_checkpoint(out / "last.pt")
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-5), k
    assert [x["scale"] for x in a["qat"]["activations"]] == pytest.approx([x["scale"] for x in b["qat"]["activations"]],
                                                                          rel=1e-4)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]


def test_qat_without_calib_calibrates_on_its_own_training_set(setup, tmp_path, monkeypatch, capsys):
    """Issue 32: ``train --qat RECIPE --weights CKPT`` with no ``--calib`` stopped with "calibration folder calib
    holds no image" (or does not exist): the first QAT run a new user tries. Now the initial scales are calibrated
    on a stated number of images drawn from the training set it fine-tunes on, the log and the record say so, and
    without ``-o`` the run goes to ``runs/qat`` (``runs/train`` holds the float run it starts from)."""
    monkeypatch.chdir(tmp_path)  # no ./calib here
    code, out, err = run_cli(["train", "--qat", "int8-tensorrt", "--weights", setup["ckpt"], "--dataset", "synthetic",
                              "--synthetic-size", *map(str, SIZE), "--limit-train", "8", "--limit-val", "2", "-b", "4",
                              "--epochs", "1", "--workers", "0", "--no-progress", "--calib-size", "6"], capsys)
    assert code == 0, err
    text = " ".join(out.split())
    assert "QAT: no --calib: initial scales calibrated on 6 images drawn class-balanced from the training set " \
           "(synthetic train split)" in text, text
    ckpt = load_checkpoint(tmp_path / "runs" / "qat" / "best.pt")
    cal = ckpt["qat"]["calibration"]
    assert cal["source"].startswith("6 images drawn class-balanced") and cal["count"] == 6 and "root" not in cal
    assert not (tmp_path / "calib").exists() and not (tmp_path / "runs" / "train").exists()


@pytest.mark.parametrize("flag", [["--output-stride", "16"], ["--backbone", "resnet50"], ["--aux"]])
def test_qat_refuses_model_options_it_would_replace(setup, tmp_path, capsys, flag):
    """``train --qat`` fine-tunes the model of ``--weights`` as it is; a model option given was silently replaced
    by the checkpoint's."""
    code, _, err = run_cli(["train", "--qat", "int8-tensorrt", "--weights", setup["ckpt"], *flag, "-o",
                            tmp_path / "q"], capsys)
    assert code == 2 and len(err) == 1 and f"{flag[0]}: --qat fine-tunes the model of --weights as it is" in err[0]
    assert not (tmp_path / "q").exists()
