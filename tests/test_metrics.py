"""ConfusionMatrix against a hand-computed example."""

from __future__ import annotations

import math

import numpy as np
import pytest

from danet_edge.errors import DataError
import torch

from danet_edge.metrics import ConfusionMatrix

# 3 classes, ignore 255. Class 2 appears in neither target nor prediction.
TARGET = np.array([[0, 0, 1, 1], [0, 1, 1, 255]])
PRED = np.array([[0, 1, 1, 1], [0, 0, 1, 2 - 2]])  # last pixel ignored whatever it predicts


def test_hand_computed():
    cm = ConfusionMatrix(3, ignore_index=255).update(PRED, TARGET)
    # target 0: pred 0,1,0 -> M[0,0]=2, M[0,1]=1; target 1: pred 1,1,0,1 -> M[1,1]=3, M[1,0]=1
    assert cm.mat.tolist() == [[2, 1, 0], [1, 3, 0], [0, 0, 0]]
    iou = cm.iou()
    assert iou[0] == pytest.approx(2 / (3 + 3 - 2))  # 0.5
    assert iou[1] == pytest.approx(3 / (4 + 4 - 3))  # 0.6
    assert math.isnan(iou[2])
    assert cm.miou() == pytest.approx(0.55)
    assert cm.pixel_accuracy() == pytest.approx(5 / 7)
    assert cm.mean_class_accuracy() == pytest.approx((2 / 3 + 3 / 4) / 2)
    d = cm.to_dict(["a", "b", "c"])
    assert d["per_class_iou"] == {"a": pytest.approx(0.5), "b": pytest.approx(0.6), "c": None}
    assert d["pixels"] == 7


def test_false_positive_class_counts_with_zero_iou():
    cm = ConfusionMatrix(3).update(np.array([2, 1]), np.array([1, 1]))
    iou = cm.iou()
    assert iou[2] == 0.0 and iou[1] == 0.5 and math.isnan(iou[0])
    assert cm.miou() == pytest.approx(0.25)


def test_torch_input_merge_and_bad_values():
    a = ConfusionMatrix(3).update(torch.from_numpy(PRED), torch.from_numpy(TARGET))
    b = ConfusionMatrix(3).update(PRED.ravel(), TARGET.ravel())
    assert torch.equal(a.mat, b.mat)
    a.merge(b)
    assert a.total == 14
    with pytest.raises(DataError, match="target values"):
        ConfusionMatrix(3).update(np.array([0]), np.array([5]))
    with pytest.raises(DataError):
        ConfusionMatrix(3).update(np.array([0.5]), np.array([0]))
    with pytest.raises(DataError, match="merge"):
        a.merge(ConfusionMatrix(4))


def test_random_matches_bruteforce():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 6, size=(4, 17, 23))
    t[rng.random(t.shape) < 0.1] = 255
    p = rng.integers(0, 5, size=t.shape)
    cm = ConfusionMatrix(5).update(p, np.where(t == 5, 255, t))
    valid = (t != 255) & (t != 5)
    for k in range(5):
        inter = np.sum((p == k) & (t == k) & valid)
        union = np.sum(((p == k) | (t == k)) & valid)
        assert cm.iou()[k] == pytest.approx(inter / union)
    assert cm.pixel_accuracy() == pytest.approx(np.mean(p[valid] == t[valid]))


def test_empty_is_nan():
    cm = ConfusionMatrix(2)
    assert math.isnan(cm.miou()) and math.isnan(cm.pixel_accuracy())
    assert cm.to_dict()["miou"] is None
