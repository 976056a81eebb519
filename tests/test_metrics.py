"""ConfusionMatrix against a hand-computed example, torch tensors and the former torch implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from danet_edge.core.errors import DataError
import torch

from danet_edge.core.metrics import ConfusionMatrix

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
    assert isinstance(a.mat, np.ndarray) and a.mat.dtype == np.int64 and np.array_equal(a.mat, b.mat)
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


def _torch_confusion(pred: np.ndarray, target: np.ndarray, k: int, ignore: int) -> torch.Tensor:
    """The former implementation (torch.bincount on int64 tensors), kept here as the oracle."""
    p, t = torch.from_numpy(pred).reshape(-1).long(), torch.from_numpy(target).reshape(-1).long()
    keep = t != ignore
    return torch.bincount(t[keep] * k + p[keep], minlength=k * k).reshape(k, k)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_numpy_matrix_equals_the_torch_one(dtype):
    rng = np.random.default_rng(1)
    cm = ConfusionMatrix(7, ignore_index=255)
    oracle = torch.zeros(7, 7, dtype=torch.int64)
    for _ in range(3):
        t = rng.integers(0, 7, size=(2, 31, 45))
        t[rng.random(t.shape) < 0.05] = 255
        p = rng.integers(0, 7, size=t.shape)
        cm.update(p.astype(dtype), t.astype(dtype if dtype != np.int32 else np.int64))
        oracle += _torch_confusion(p, t, 7, 255)
    assert cm.mat.dtype == np.int64 and cm.mat.tolist() == oracle.tolist()
    m = oracle.double()
    tp = torch.diag(m)
    union = m.sum(0) + m.sum(1) - tp
    ref_iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan"))).numpy()
    assert np.array_equal(cm.iou(), ref_iou, equal_nan=True)  # bit for bit, not approximately
    assert cm.pixel_accuracy() == float(torch.diag(oracle).sum()) / int(oracle.sum())


def test_tensor_by_duck_typing_and_bad_inputs():
    class FakeTensor:  # what update needs of a tensor on any device: detach().cpu().numpy()
        def __init__(self, a):
            self.a = a

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return self.a

        def is_floating_point(self):
            return self.a.dtype.kind == "f"

    cm = ConfusionMatrix(3).update(FakeTensor(PRED), FakeTensor(TARGET))
    assert cm.mat.tolist() == [[2, 1, 0], [1, 3, 0], [0, 0, 0]]
    with pytest.raises(DataError, match="not floats"):
        ConfusionMatrix(3).update(FakeTensor(np.zeros(2, np.float32)), np.zeros(2, np.int64))
    with pytest.raises(DataError, match="not floats"):
        ConfusionMatrix(3).update(torch.zeros(2, dtype=torch.bfloat16), torch.zeros(2, dtype=torch.long))
    with pytest.raises(DataError, match="numpy array or torch tensor"):
        ConfusionMatrix(3).update([0, 1], [0, 1])
    with pytest.raises(DataError, match="elements"):
        ConfusionMatrix(3).update(np.zeros(3, np.int64), np.zeros(2, np.int64))
    cm.reset()
    assert cm.total == 0 and cm.mat.dtype == np.int64
    assert cm.all_reduce() is cm  # no process group: a no-op


def test_metrics_import_no_torch():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; import numpy as np; from danet_edge.core.metrics import ConfusionMatrix;"
            "cm = ConfusionMatrix(2).update(np.array([0, 1]), np.array([0, 0])); cm.all_reduce();"
            "print(cm.mat.tolist(), sys.modules['torch'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[[1,", "1],", "[0,", "0]]", "None"]
