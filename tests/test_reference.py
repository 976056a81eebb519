"""Reference bundles: export writes them, check reads them without PyTorch and gives what a checkpoint gives."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from _runtime_helpers import make_tiny_checkpoint
from danet_edge.check.run import check_artifacts
from danet_edge.check.config import CheckConfig
from danet_edge.export.config import ExportConfig
from danet_edge.data.datasets import build_dataset
from danet_edge.core.errors import ConfigError, DataError, ManifestError
from danet_edge.export.export import export_model
from danet_edge.export.reference import is_bundle, load_bundle


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An 8-class checkpoint (the synthetic scenes' classes: a labelled bundle) exported at 64x96 and 96x128."""
    root = tmp_path_factory.mktemp("ref")
    ckpt = make_tiny_checkpoint(root / "tiny8.pt", num_classes=8)
    res = export_model(ckpt, ExportConfig(out=root / "a", fp16=True, reference_images=5, batch=2, fused_io=False))
    other = export_model(ckpt, ExportConfig(out=root / "b", imgsz=(96, 128), reference_images=2))
    return {"ckpt": ckpt, "res": res, "other": other, "root": root}


def _same(a, b) -> None:
    assert a.agreement == pytest.approx(b.agreement, abs=1e-6)
    assert a.miou_delta == pytest.approx(b.miou_delta, abs=1e-6)
    assert a.miou == pytest.approx(b.miou, abs=1e-6)
    assert a.reference_miou == pytest.approx(b.reference_miou, abs=1e-6)
    assert a.per_class_iou == pytest.approx(b.per_class_iou, abs=1e-6, nan_ok=True)


def test_export_writes_a_labelled_bundle_with_the_fingerprint(exported):
    res = exported["res"]
    bundle_dir = res.reference_bundle
    assert bundle_dir == exported["root"] / "a" / "reference" and is_bundle(bundle_dir)
    b = load_bundle(bundle_dir)
    assert len(b) == 5 and b.labelled and b.image_size == (64, 96)
    fp = b.meta["fingerprint"]
    assert fp["image_size"] == [64, 96] and fp["mean"] == [0.485, 0.456, 0.406] and fp["channel_order"] == "RGB"
    assert b.reference_labels.shape == (5, 64, 96) and b.reference_logits.shape == (5, 8, 64, 96)
    assert b.meta["reference"]["miou"] is not None
    # the stored images are the data set's, at their own size
    ds = build_dataset("synthetic", None, "val", 5)
    assert all(np.array_equal(b[i][0], ds[i][0]) and np.array_equal(b[i][1], ds[i][1]) for i in range(5))


def test_check_against_the_bundle_equals_check_against_the_checkpoint(exported):
    res = exported["res"]
    paths = [a.path for a in res.artifacts]
    via_bundle = check_artifacts(paths, res.reference_bundle)
    via_ckpt = check_artifacts(paths, exported["ckpt"], build_dataset("synthetic", None, "val", 5))
    assert via_bundle.frames == via_ckpt.frames == 5
    for a, b in zip(via_bundle.artifacts, via_ckpt.artifacts):
        _same(a, b)
        assert a.rel_l2_error is not None and a.rel_l2_error == pytest.approx(b.rel_l2_error, rel=0.05, abs=1e-3)
    assert via_bundle.passed


def test_a_bundle_of_another_size_or_normalisation_is_refused(exported, tmp_path):
    fp32 = exported["res"].artifacts[0].path
    with pytest.raises(ManifestError, match=r"image_size \[96, 128\] vs \[64, 96\]"):
        check_artifacts([fp32], exported["other"].reference_bundle)
    tampered = tmp_path / "reference"
    shutil.copytree(exported["res"].reference_bundle, tampered)
    meta = json.loads((tampered / "bundle.json").read_text())
    meta["fingerprint"]["mean"] = [0.5, 0.5, 0.5]
    (tampered / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(ManifestError, match=r"mean \[0.5, 0.5, 0.5\] vs \[0.485, 0.456, 0.406\]"):
        check_artifacts([fp32], tampered)
    with pytest.raises(ConfigError, match="brings its own images"):
        check_artifacts([fp32], exported["res"].reference_bundle, build_dataset("synthetic", None, "val", 2))


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "bundle.npz").write_bytes(b"x" * 10), "does not match its SHA-256"),
    (lambda d: (d / "bundle.npz").unlink(), "bundle.npz is missing"),
    (lambda d: (d / "bundle.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "bundle.json").write_text(json.dumps({"format": "other/9"})), "format must be"),
    (lambda d: (d / "bundle.json").write_text(json.dumps({**json.loads((d / "bundle.json").read_text()), "count": 10**6})),
     "count must be"),
])
def test_a_damaged_bundle_is_refused_in_one_line(exported, tmp_path, damage, message):
    d = tmp_path / "reference"
    shutil.copytree(exported["res"].reference_bundle, d)
    damage(d)
    with pytest.raises(DataError, match=message) as e:
        load_bundle(d)
    assert "\n" not in str(e.value)


def test_a_bundle_without_labels_checks_agreement_only(tiny_checkpoint, tmp_path):
    """The 5-class checkpoint does not match the synthetic scenes' 8 classes: its bundle holds no labels."""
    res = export_model(tiny_checkpoint, ExportConfig(out=tmp_path, reference_images=3))
    b = load_bundle(res.reference_bundle)
    assert not b.labelled and b.meta["reference"]["miou"] is None
    rep = check_artifacts([res.artifacts[0].path], res.reference_bundle)
    (a,) = rep.artifacts
    assert a.passed and a.agreement > 99.9 and any("no labels" in n for n in a.notes)


def test_no_bundle_with_zero_images(tiny_checkpoint, tmp_path):
    res = export_model(tiny_checkpoint, ExportConfig(out=tmp_path, reference_images=0))
    assert res.reference_bundle is None and not (tmp_path / "reference").exists()


def test_bundle_size_holds_the_same_pixels_at_large_sizes():
    """16 images up to 512x1024; above, as many as hold 16 x 512 x 1024 pixels, at least 4; a count given wins."""
    cfg = ExportConfig()
    assert [cfg.bundle_images(s) for s in ((360, 480), (512, 1024), (720, 1440), (1024, 2048), (2048, 4096))] == \
        [16, 16, 8, 4, 4]
    assert ExportConfig(reference_images=16).bundle_images((1024, 2048)) == 16
    assert ExportConfig(reference_images=0).bundle_images((360, 480)) == 0
    # verification: 2 images up to 512x1024, 1 above; a count given wins
    assert [cfg.verification_images(s) for s in ((360, 480), (512, 1024), (720, 1440), (1024, 2048))] == [2, 2, 1, 1]
    assert ExportConfig(verify_images=3).verification_images((1024, 2048)) == 3


def _cli(args, capsys):
    from _runtime_helpers import run_cli

    return run_cli(args, capsys)


def test_cli_check_with_a_bundle_and_bad_bundles(exported, tmp_path, capsys):
    res = exported["res"]
    art = str(res.artifacts[0].path)
    code, out, _ = _cli(["check", art, "-r", str(res.reference_bundle), "--json", str(tmp_path / "c.json")], capsys)
    assert code in (0, None), out
    assert json.loads((tmp_path / "c.json").read_text())["frames"] == 5
    code, _, err = _cli(["check", art, "-r", str(res.reference_bundle), "-d", "synthetic"], capsys)
    assert code == 2 and len(err) == 1 and "brings its own images" in err[0]
    code, _, err = _cli(["check", art, "-r", str(exported["other"].reference_bundle)], capsys)
    assert code not in (0, None) and len(err) == 1 and "image_size" in err[0]


def test_a_missing_or_wrong_reference_says_what_to_give(exported, tmp_path, capsys):
    art = str(exported["res"].artifacts[0].path)
    for ref, words in ((tmp_path / "nothing", "does not exist"), (tmp_path, "folder without bundle.json")):
        code, _, err = _cli(["check", art, "-r", str(ref)], capsys)
        assert code == 3 and len(err) == 1 and words in err[0] and "reference/ folder" in err[0]
