"""Data sets, validation errors and transforms."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from danet_edge.data.transforms import EvalTransform, TrainTransform, TransformedDataset
from danet_edge.data.datasets import build_dataset, synthetic_frames, write_synthetic_video
from danet_edge.core.errors import ConfigError, DataError


def test_synthetic_deterministic_and_splits_differ():
    a = build_dataset("synthetic", split="train", size=(64, 96), length=6)
    b = build_dataset("synthetic", split="train", size=(64, 96), length=6)
    v = build_dataset("synthetic", split="val", size=(64, 96), length=6)
    assert len(a) == 6 and a.image_path(0) is None
    img, mask = a[3]
    assert img.shape == (64, 96, 3) and img.dtype == np.uint8
    assert mask.shape == (64, 96) and mask.dtype == np.int64
    assert np.array_equal(img, b[3][0]) and np.array_equal(mask, b[3][1])
    assert not np.array_equal(img, v[3][0])
    assert not np.array_equal(img, a[4][0])
    classes = np.unique(np.concatenate([a[i][1].ravel() for i in range(6)]))
    assert set(classes) >= {0, 1, 2, 3}  # sky, building, road, sidewalk always there
    assert classes.max() < a.info.num_classes == 8
    assert len(build_dataset("synthetic", split="val", limit=3)) == 3


def test_unknown_name_lists_choices():
    with pytest.raises(ConfigError, match="camvid"):
        build_dataset("pascal", "x")


def test_camvid(camvid_root):
    ds = build_dataset("camvid", camvid_root, "val", limit=2)
    assert len(ds) == 2 and ds.info.num_classes == 11 and ds.info.ignore_index == 11
    img, mask = ds[0]
    assert img.shape == (360, 480, 3) and mask.shape == (360, 480)
    assert mask.max() <= 11
    assert ds.image_path(0).is_file()
    with pytest.raises(DataError, match="test.txt"):
        build_dataset("camvid", camvid_root, "test")


def _write_folder(root: Path, n: int = 2, size=(20, 30), max_label: int = 2) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(root / "images" / f"im{i}.jpg"), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        Image.fromarray(rng.integers(0, max_label + 1, size, dtype=np.uint8)).save(root / "masks" / f"im{i}.png")
    (root / "classes.txt").write_text("a\nb\nc\n")
    return root


def test_folder_ok_and_errors(tmp_path):
    root = _write_folder(tmp_path / "ok")
    ds = build_dataset("folder", root, "train")
    assert ds.info.classes == ["a", "b", "c"] and len(ds) == 2
    img, mask = ds[1]
    assert img.shape == (20, 30, 3) and mask.max() <= 2

    with pytest.raises(DataError, match="not found"):
        build_dataset("folder", tmp_path / "nothing")
    with pytest.raises(ConfigError, match="contradicts"):
        build_dataset("folder", root, num_classes=5)

    (root / "images" / "orphan.png").write_bytes(cv2.imencode(".png", np.zeros((20, 30, 3), np.uint8))[1].tobytes())
    with pytest.raises(DataError, match="orphan"):
        build_dataset("folder", root)
    (root / "images" / "orphan.png").unlink()

    Image.fromarray(np.zeros((21, 30), np.uint8)).save(root / "masks" / "im0.png")  # size mismatch
    with pytest.raises(DataError, match="im0.png"):
        build_dataset("folder", root)[0]
    Image.fromarray(np.full((20, 30), 7, np.uint8)).save(root / "masks" / "im0.png")  # label 7 > 2, not 255
    with pytest.raises(DataError, match=r"label values \[7\]"):
        build_dataset("folder", root)[0]
    Image.fromarray(np.full((20, 30), 255, np.uint8)).save(root / "masks" / "im0.png")  # ignore: fine
    assert (build_dataset("folder", root)[0][1] == 255).all()
    (root / "images" / "im1.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="im1.jpg"):
        build_dataset("folder", root)[1]


def test_folder_needs_class_count(tmp_path):
    root = _write_folder(tmp_path / "d")
    (root / "classes.txt").unlink()
    with pytest.raises(ConfigError, match="num-classes"):
        build_dataset("folder", root)
    assert build_dataset("folder", root, num_classes=3).info.num_classes == 3


def test_cityscapes_label_mapping(tmp_path):
    city = "aachen"
    (tmp_path / "leftImg8bit" / "val" / city).mkdir(parents=True)
    (tmp_path / "gtFine" / "val" / city).mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "leftImg8bit" / "val" / city / "a_000000_000019_leftImg8bit.png"),
                np.zeros((4, 6, 3), np.uint8))
    ids = np.array([[7, 8, 26, 0, 33, 4]] * 4, np.uint8)  # road, sidewalk, car, unlabeled, bicycle, static
    Image.fromarray(ids).save(tmp_path / "gtFine" / "val" / city / "a_000000_000019_gtFine_labelIds.png")
    ds = build_dataset("cityscapes", tmp_path, "val")
    assert ds.info.num_classes == 19
    assert ds[0][1][0].tolist() == [0, 1, 13, 255, 18, 255]


def test_train_transform_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(1)
    mask = rng.integers(0, 5, (40, 50))
    image = np.repeat((mask * 40).astype(np.uint8)[..., None], 3, axis=2)
    torch.manual_seed(0)
    tf = TrainTransform((32, 32), scale=(1.0, 1.0), jitter=False, ignore_index=255)
    mean, std = np.array(tf.ops.transforms[-1].mean), np.array(tf.ops.transforms[-1].std)
    for _ in range(5):
        x, y = tf(image, mask)
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        pix = np.round((x[0].numpy() * std[0] + mean[0]) * 255)
        assert np.array_equal(pix, y.numpy() * 40)


def test_train_transform_pads_with_ignore():
    image, mask = np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20), np.int64)
    x, y = TrainTransform((40, 40), scale=(1.0, 1.0), ignore_index=11)(image, mask)
    assert x.shape == (3, 40, 40)
    assert (y == 11).sum() == 40 * 40 - 20 * 20 and (y == 0).sum() == 400
    with pytest.raises(ConfigError):
        TrainTransform((4, 4))


def test_eval_transform_and_wrapper():
    ds = build_dataset("synthetic", split="val", size=(64, 96), length=2)
    x, y = TransformedDataset(ds, EvalTransform())[0]
    assert x.shape == (3, 64, 96) and y.shape == (64, 96)
    assert torch.equal(y, torch.from_numpy(ds[0][1]))
    x, y = EvalTransform(size=(32, 48))(*ds[0])
    assert x.shape == (3, 32, 48) and y.shape == (32, 48)


def test_video(tmp_path):
    frames = list(synthetic_frames(3, (64, 96), seed=2))
    assert len(frames) == 3 and not np.array_equal(frames[0][1], frames[2][1])  # things move
    out = write_synthetic_video(tmp_path / "demo.mp4", num_frames=5, size=(64, 96), fps=10)
    cap = cv2.VideoCapture(str(out))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 5
    assert [p.name for p in tmp_path.iterdir()] == ["demo.mp4"]
