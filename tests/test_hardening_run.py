"""Hardening (issue "never overwrite a user's run, one line for every bad path or value"):

1. a new ``train`` into a folder holding a run is refused (``--resume`` / ``--exist-ok``);
2. data errors are one line whatever ``--workers``; every file is checked before the first epoch and
   ``last.pt`` is written before each validation;
3. upper bounds for ``infer --threads``, ``bench --batch``, ``train --crop-size`` (by the machine);
4. Ctrl-C in train / export / infer says what was kept, exit 130;
5. stale ``.tmp`` files, label names of images sharing a stem, options that do nothing, out-of-range values.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from _runtime_helpers import export_tiny, random_frames
from danet_edge.model.checkpoint import load_checkpoint
from danet_edge.core.errors import ConfigError, DataError, Interrupted
from danet_edge.train.config import TrainConfig
from danet_edge.train.memory import activation_memory
from danet_edge.train.train import train

QUICK = ["--dataset", "synthetic", "--synthetic-size", "64", "96", "--limit-train", "4", "--limit-val", "2",
         "-b", "2", "--epochs", "1", "--workers", "0", "--no-progress"]


def _cli(args, capsys):
    """(exit code, stderr lines) of ``danet-edge ARGS`` run in-process."""
    from _runtime_helpers import run_cli

    code, _, err = run_cli(args, capsys)
    return code, err


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def tiny_config(out, **kw) -> TrainConfig:
    base = dict(dataset="synthetic", data_options={"size": (64, 96)}, epochs=1, batch_size=2, limit_train=4,
                limit_val=2, workers=0, out_dir=str(out), progress=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 1-epoch run (last.pt, best.pt, metrics.jsonl, config.json); copy it before changing it."""
    out = tmp_path_factory.mktemp("run") / "run"
    train(tiny_config(out))
    return out


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _folder_dataset(root: Path, n: int = 4, size=(64, 64)) -> Path:
    """``root/{train,val}/{images,masks}`` with ``n`` readable pairs each, 3 classes."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / split / "images" / f"{i}.png"), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
            Image.fromarray(rng.integers(0, 3, size, dtype=np.uint8), "L").save(root / split / "masks" / f"{i}.png")
    return root


# ------------------------------------------------------------------ the table: one line, nothing changed
@pytest.fixture
def prepared(tmp_path, tiny_checkpoint):
    """A folder holding an earlier run (fake bytes: the refusal must not even read them), a checkpoint and
    a calibration folder."""
    run = tmp_path / "run"
    run.mkdir()
    for name, data in (("best.pt", b"best at 23 % mIoU"), ("last.pt", b"last"), ("metrics.jsonl", b'{"epoch": 0}\n'),
                       ("config.json", b"{}")):
        (run / name).write_bytes(data)
    calib = tmp_path / "calib"
    calib.mkdir()
    cv2.imwrite(str(calib / "a.png"), np.zeros((64, 96, 3), np.uint8))
    ckpt = tmp_path / "tiny.pt"
    ckpt.write_bytes(Path(tiny_checkpoint).read_bytes())
    return tmp_path


CASES = [  # (id, argv with {d} = the prepared folder, exit code, phrase of the one line)
    ("train-into-run", ["train", *QUICK, "-o", "{d}/run"], 2, "--exist-ok"),
    ("train-into-run-names-resume", ["train", *QUICK, "-o", "{d}/run"], 2, "--resume"),
    ("train-crop-too-big", ["train", *QUICK, "--crop-size", "100000", "100000", "-o", "{d}/new"], 2, "8192"),
    ("train-crop-no-memory", ["train", *QUICK, "--crop-size", "8192", "8192", "-o", "{d}/new"], 2, "TB of activations"),
    ("train-aux-weight", ["train", *QUICK, "--aux-weight", "-1", "-o", "{d}/new"], 2, "--aux-weight"),
    ("train-lr-nan", ["train", *QUICK, "--lr", "nan", "-o", "{d}/new"], 2, "--lr"),
    ("infer-threads", ["infer", "{d}/tiny.pt", "{d}/calib", "--threads", "100000", "-o", "{d}/inf"], 2, "--threads"),
    ("bench-batch", ["bench", "{d}/tiny.pt", "--batch", "100000"], 2, "1..1024"),
    ("export-target-cpu", ["export", "{d}/tiny.pt", "--target", "cpu", "-o", "{d}/exp"], 2, "--target cpu"),
    ("export-calib-no-int8", ["export", "{d}/tiny.pt", "--calib", "{d}/calib", "-o", "{d}/exp"], 2, "--calib"),
    ("check-min-agreement", ["check", "{d}/tiny.pt", "-r", "{d}/tiny.pt", "--min-agreement", "150"], 2, "0..100"),
]


@pytest.mark.parametrize("argv,code,phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(prepared, argv, code, phrase, capsys):
    before = _hashes(prepared)
    got, err = _cli([a.replace("{d}", str(prepared)) for a in argv], capsys)
    assert got == code != 0
    assert len([ln for ln in err if ln.startswith("error:")]) == 1 and len(err) == 1, err
    assert phrase in err[0] and "Traceback" not in "\n".join(err)
    after = _hashes(prepared)
    assert {k: after.get(k) for k in before} == before  # every file that was there is untouched
    assert not (prepared / "new" / "last.pt").exists()


def test_training_numbers_must_be_finite_and_in_range():
    for bad in (dict(lr=float("nan")), dict(lr=0.0), dict(aux_weight=-1.0), dict(weight_decay=float("inf")),
                dict(grad_clip=float("nan")), dict(fcn_aux_weight=-0.2), dict(crop_size=(8193, 64))):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)


# ------------------------------------------------------------------ 1. an existing run is never replaced silently
def test_train_help_names_the_convention():
    from typer.testing import CliRunner

    from danet_edge.cli import app

    out = CliRunner().invoke(app, ["train", "--help"], terminal_width=200).output
    assert "--exist-ok" in out and "Ultralytics" in out and "refuses" in out


def test_exist_ok_replaces_the_run_and_eval_is_not_affected(trained, tmp_path, capsys):
    run = _copy_run(trained, tmp_path / "run")
    old_best = (run / "best.pt").read_bytes()
    (run / ".best.pt.k2j3.tmp").write_bytes(b"half")  # left by a kill
    code, err = _cli(["eval", run / "best.pt", "--synthetic-size", "64", "96", "--limit", "1",
                      "--json", run / "eval.json"], capsys)  # eval reads a run folder freely
    assert code in (0, None) and not err and (run / "eval.json").is_file()
    code, err = _cli(["train", *QUICK, "--seed", "7", "--exist-ok", "-o", run], capsys)
    assert code in (0, None), err
    assert (run / "best.pt").read_bytes() != old_best
    assert load_checkpoint(run / "last.pt")["train_config"]["seed"] == 7
    assert [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()] == [0]
    assert not (run / ".best.pt.k2j3.tmp").exists()


# ------------------------------------------------------------------ 2. data errors: one line, early, last.pt kept
def test_corrupt_val_image_fails_before_the_first_epoch(tmp_path, capsys, monkeypatch):
    data = _folder_dataset(tmp_path / "data")
    (data / "val" / "images" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    epochs = []
    monkeypatch.setattr("danet_edge.train.train._train_epoch", lambda *a, **k: epochs.append(1) or {})
    code, err = _cli(["train", "--dataset", "folder", "--data", data, "--num-classes", "3", "-b", "2",
                      "--epochs", "1", "--workers", "0", "--no-progress", "-o", tmp_path / "out"], capsys)
    assert code == 3 and len(err) == 1 and err[0].startswith("error: ") and "2.png" in err[0], err
    assert not epochs and not (tmp_path / "out" / "last.pt").exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_worker_errors_are_one_line(workers, tmp_path, capsys, monkeypatch):
    """A file that breaks after the pre-check (here: the pre-check skipped) fails inside a DataLoader
    worker; PyTorch wraps it in the worker's traceback, train gives the worker's own line."""
    data = _folder_dataset(tmp_path / "data")
    (data / "train" / "images" / "1.png").write_bytes(b"garbage")
    monkeypatch.setattr("danet_edge.data.datasets.SegmentationDataset.verify", lambda self, description=None: 0)
    code, err = _cli(["train", "--dataset", "folder", "--data", data, "--num-classes", "3", "-b", "2", "--epochs",
                      "1", "--workers", str(workers), "--no-progress", "-o", tmp_path / "out"], capsys)
    assert code == 3 and len(err) == 1, err
    assert err[0] == f"error: {data / 'train' / 'images' / '1.png'}: cannot read image (missing, empty or not an image)"


def test_worker_error_unwrapping():
    from danet_edge.train.loader_errors import _worker_errors

    class Loader:
        def __init__(self, exc):
            self.exc = exc

        def __iter__(self):
            yield 1
            raise self.exc

    wrapped = ("Caught DataError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 3, in f\n    raise DataError(m)\ndanet_edge.core.errors.DataError: a.png: bad mask\n')
    with pytest.raises(DataError) as e:
        list(_worker_errors(Loader(DataError(wrapped))))
    assert str(e.value) == "a.png: bad mask"
    with pytest.raises(DataError, match=r"^reading the training data: OSError: \[Errno 5\] b.png$"):
        list(_worker_errors(Loader(OSError(wrapped.replace("danet_edge.core.errors.DataError: a.png: bad mask",
                                                              "OSError: [Errno 5] b.png")))))
    with pytest.raises(ValueError):  # not from a worker: untouched
        list(_worker_errors(Loader(ValueError("plain"))))


def test_last_pt_is_written_before_validation_and_resume_validates_it(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def broken(*a, **k):
        raise DataError("val/3.png: cannot read image")

    with monkeypatch.context() as m:
        m.setattr("danet_edge.train.train._validate", broken)
        with pytest.raises(DataError):
            train(tiny_config(out, epochs=2))
    ckpt = load_checkpoint(out / "last.pt")  # the epoch's training survived its validation
    assert ckpt["epoch"] == 0 and ckpt["pending_validation"] is True
    assert not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text().strip()
    train(tiny_config(out, epochs=2, resume=True))
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and all(r["val_miou"] is not None for r in rows)
    assert load_checkpoint(out / "last.pt")["pending_validation"] is False and (out / "best.pt").is_file()


def test_verify_finds_each_kind_of_bad_file(tmp_path):
    from danet_edge.data.datasets import build_dataset

    data = _folder_dataset(tmp_path / "data")
    ds = build_dataset("folder", data, "train", num_classes=3)
    assert ds.verify() == 4
    png = data / "train" / "images" / "0.png"
    good = png.read_bytes()
    for damage, phrase in ((lambda: png.write_bytes(good[: len(good) // 2]), "cut-short"),
                           (lambda: Image.new("L", (32, 64)).save(data / "train" / "masks" / "0.png"), "mask is 32x64"),
                           (lambda: Image.new("L", (64, 64), 7).save(data / "train" / "masks" / "0.png"),
                            "label values [7]")):
        _folder_reset(data)
        damage()
        with pytest.raises(DataError, match=phrase.replace("[", r"\[").replace("]", r"\]")):
            build_dataset("folder", data, "train", num_classes=3).verify()


def _folder_reset(data: Path) -> None:
    import shutil

    shutil.rmtree(data)
    _folder_dataset(data)


@pytest.mark.skipif(not (Path(__file__).resolve().parents[1].parent / "shared/datasets/camvid/train.txt").is_file(),
                    reason="CamVid not here")
def test_camvid_precheck_is_quick(camvid_root):
    import time

    from danet_edge.data.datasets import build_dataset

    t0 = time.perf_counter()
    n = sum(build_dataset("camvid", camvid_root, s).verify() for s in ("train", "val"))
    seconds = time.perf_counter() - t0
    assert n == 468 and seconds < 30, seconds  # about 1.3 s here on a loaded 2-core machine


# ------------------------------------------------------------------ 3. bounds by the machine
def test_crop_memory_estimate_and_refusal(monkeypatch, tmp_path):
    from danet_edge.model.config import ModelConfig

    small, _ = activation_memory((352, 352), 8, ModelConfig(backbone="resnet18"))
    assert 0.5e9 < small < 2e9  # README's CamVid crop: about 1 GB
    big, att = activation_memory((8192, 8192), 1, ModelConfig(backbone="resnet18"))
    assert att == 4 * (1024 * 1024) ** 2 and big > att

    class VM:
        available = 50e6

    monkeypatch.setattr("psutil.virtual_memory", lambda: VM())
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"crop 256x256 needs about .* more than the 50 MB of RAM available"):
        train(tiny_config(tmp_path / "x", crop_size=(256, 256)))
    assert not (tmp_path / "x").exists()


def test_bench_batch_memory(monkeypatch):
    from danet_edge.bench.config import BenchConfig, check_batch_memory

    with pytest.raises(ConfigError, match="1..1024"):
        BenchConfig(batches=(1025,))

    class VM:
        available = 2**30

    monkeypatch.setattr("psutil.virtual_memory", lambda: VM())
    check_batch_memory(8, (64, 96), 5)
    with pytest.raises(ConfigError, match=r"--batch 1024 at 512x1024 needs at least .* GiB"):
        check_batch_memory(1024, (512, 1024), 19)


# ------------------------------------------------------------------ 4. Ctrl-C says what was kept
def test_train_interrupted_after_an_epoch(tmp_path, capsys, monkeypatch):
    def killed(record, epochs):  # Ctrl-C right after epoch 1's last.pt was written
        raise KeyboardInterrupt

    monkeypatch.setattr("danet_edge.train.train._log_epoch", killed)
    out = tmp_path / "run"
    code, err = _cli(["train", *QUICK, "--epochs", "2", "-o", out], capsys)
    assert code == 130 and err == [f"interrupted after epoch 1: {out / 'last.pt'} (--resume continues from it)"]


def test_train_interrupted_before_the_first_epoch(tmp_path, capsys, monkeypatch):
    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("danet_edge.train.train._train_epoch", killed)
    code, err = _cli(["train", *QUICK, "-o", tmp_path / "run"], capsys)
    assert code == 130 and err == ["interrupted before the first epoch ended: nothing saved"]
    with pytest.raises(Interrupted):  # the library raises a KeyboardInterrupt that says it
        train(tiny_config(tmp_path / "lib"))


def test_export_interrupted_lists_the_complete_artifacts(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    def killed(*a, **k):  # Ctrl-C right after the FP32 graph and its manifest were written
        raise KeyboardInterrupt

    monkeypatch.setattr("danet_edge.export.export.format_report", killed)  # first called once model.onnx is written
    out = tmp_path / "exp"
    code, err = _cli(["-q", "export", tiny_checkpoint, "--fp16", "--reference-images", "0", "-o", out], capsys)
    assert code == 130
    assert err == [f"interrupted: 1 artifact(s) complete in {out} (model.onnx), nothing half-written"]
    assert not list(out.rglob("*.tmp"))


def test_infer_interrupted_leaves_a_playable_video(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    import danet_edge.infer.stages as pipeline

    frames = tmp_path / "frames"
    frames.mkdir()
    for i, f in enumerate(random_frames(5, 64, 96)):
        cv2.imwrite(str(frames / f"{i}.png"), f)
    model = export_tiny(tiny_checkpoint, tmp_path / "m.onnx")
    real, calls = pipeline.fit_frame, []

    def fit(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "fit_frame", fit)
    out = tmp_path / "inf"
    code, err = _cli(["infer", model, frames, "-o", out], capsys)
    video = out / "images_overlay.mp4"
    assert code == 130
    assert err == [f"interrupted after 2 frames: {video} playable, {out / 'summary.json'}"]
    cap = cv2.VideoCapture(str(video))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    assert json.loads((out / "summary.json").read_text())["interrupted"] is True


# ------------------------------------------------------------------ 5. smaller ones
def test_resume_removes_only_atomic_tmp_files_in_out(trained, tmp_path):
    run = _copy_run(trained, tmp_path / "run")
    stale = [run / ".last.pt.a1b2c3.tmp", run / ".metrics.jsonl.zz.tmp", run / ".config.json.q.tmp"]
    kept = [run / ".other.bin.x.tmp", run / "notes.tmp", run / "last.pt.tmp", run / "sub" / ".last.pt.x.tmp"]
    for p in stale + kept:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x")
    train(tiny_config(run, epochs=2, resume=True))
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_label_names_are_unique(tmp_path, tiny_checkpoint, capsys):
    from danet_edge.infer.sources import output_names

    assert output_names([Path("a.png"), Path("a.jpg"), Path("b.png")]) == ["a_png", "a_jpg", "b"]
    assert output_names([Path("x/c.png"), Path("y/c.png"), Path("C.PNG")]) == ["c_png", "c_png_2", "C_png_3"]
    frames = tmp_path / "frames"
    frames.mkdir()
    imgs = random_frames(3, 64, 96)
    cv2.imwrite(str(frames / "a.png"), imgs[0])
    cv2.imwrite(str(frames / "a.jpg"), imgs[1])
    cv2.imwrite(str(frames / "b.png"), imgs[2])
    model = export_tiny(tiny_checkpoint, tmp_path / "m.onnx")
    code, err = _cli(["infer", model, frames, "--save-labels", "--no-save-video", "-o", tmp_path / "out"], capsys)
    assert code in (0, None), err
    assert sorted(p.name for p in (tmp_path / "out" / "labels").iterdir()) == ["a_jpg.png", "a_png.png", "b.png"]


def test_thresholds_file_values_in_range(tmp_path):
    from danet_edge.check.thresholds import load_thresholds, parse_threshold_overrides

    (tmp_path / "t.json").write_text(json.dumps({"int8": {"min_agreement": 101}}))
    with pytest.raises(ConfigError, match="0..100"):
        load_thresholds(tmp_path / "t.json")
    with pytest.raises(ConfigError, match="0..100"):
        parse_threshold_overrides([], ["int8=-0.5"])
    assert parse_threshold_overrides(["int8=100"], ["0"])["int8"].min_agreement == 100.0


def test_export_options_that_would_do_nothing():
    from danet_edge.export.config import ExportConfig

    with pytest.raises(ConfigError, match="--target cpu"):
        ExportConfig(target="cpu", fp16=True)
    with pytest.raises(ConfigError, match="--calib"):
        ExportConfig(calib=Path("calib"), fp16=True)
    ExportConfig(target="cpu", int8=True, calib=Path("calib"))
    ExportConfig(target="cpu", recipes=("int8-cpu",))


def test_calibration_options_apply_to_a_calibrating_recipe_without_int8():
    """``--recipe int8-tensorrt-fp32 --calib-size 32`` calibrates: the options are not refused as INT8-only."""
    from danet_edge.export.config import ExportConfig
    from danet_edge.core.errors import ConfigError

    ExportConfig(recipes=("int8-tensorrt-fp32",), calib_size=32, calib_method="minmax")
    with pytest.raises(ConfigError, match="applies to INT8 only"):
        ExportConfig(fp16=True, calib_size=32)
