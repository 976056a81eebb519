"""Evaluation: padding to the output stride, multi-scale + flip, checkpoints, JSON, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from danet_edge.data.datasets import DatasetInfo, build_dataset
from danet_edge.core.errors import ConfigError
from danet_edge.train.evaluate import evaluate, predict_logits, write_result
from danet_edge.model.config import IMAGENET_MEAN, IMAGENET_STD

K = 4


class CodedData:
    """Images whose red channel encodes the class (class * 60), sizes not multiples of 8."""

    def __init__(self, n: int = 3, size=(30, 50)) -> None:
        self.info = DatasetInfo("coded", [f"c{i}" for i in range(K)], [[0, 0, 0]] * K, 255)
        rng = np.random.default_rng(0)
        self.items = []
        for _ in range(n):
            mask = np.zeros(size, np.int64)
            mask[:, size[1] // 2:] = 1
            mask[size[0] // 2:, :] = rng.integers(2, 4)
            img = np.zeros((*size, 3), np.uint8)
            img[..., 0] = mask * 60
            mask[0, 0] = 255  # an ignored pixel
            self.items.append((img, mask))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class Decoder(nn.Module):
    """A 'model' that reads the class back from the red channel; refuses sizes not divisible by 8."""

    def forward(self, x):
        assert x.shape[-2] % 8 == 0 and x.shape[-1] % 8 == 0
        red = (x[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
        centers = torch.arange(K, dtype=x.dtype) * 60
        return -(red[:, None] - centers[None, :, None, None]).abs()


def test_padding_and_perfect_score():
    result = evaluate(Decoder(), CodedData())
    assert result.miou == pytest.approx(1.0) and result.pixel_accuracy == pytest.approx(1.0)
    assert result.confusion.total == 3 * (30 * 50 - 1)  # the ignored pixel is not counted
    assert result.num_images == 3 and result.ms_per_image > 0


def test_multi_scale_and_flip():
    result = evaluate(Decoder(), CodedData(), multi_scale=True, flip=True, scales=(0.75, 1.0, 1.5))
    assert result.miou > 0.9  # only boundary pixels can move under resizing
    x = torch.randn(1, 3, 32, 40)
    p = predict_logits(Decoder(), x, multi_scale=True, flip=True, scales=(1.0,))
    assert torch.allclose(p.sum(1), torch.full((1, 32, 40), 2.0), atol=1e-5)  # mean of 2 softmaxes, summed
    with pytest.raises(ConfigError):
        evaluate(Decoder(), CodedData(), multi_scale=True, scales=(0.0,))


def test_checkpoint_eval_json_and_table(tmp_path):
    from conftest import make_tiny_checkpoint
    from rich.console import Console

    ckpt = make_tiny_checkpoint(tmp_path / "t.pt", num_classes=8)
    ds = build_dataset("synthetic", split="val", size=(60, 90), length=2)  # 60x90: needs padding
    result = evaluate(ckpt, ds)
    assert result.source == str(ckpt) and result.num_images == 2
    d = json.loads(result.to_json())
    assert set(d["per_class_iou"]) == set(ds.info.classes)
    assert d["miou"] is None or 0 <= d["miou"] <= 1
    assert all(v is None or 0 <= v <= 1 for v in d["per_class_iou"].values())
    write_result(result, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["num_images"] == 2
    console = Console(record=True, width=100)
    from danet_edge.cli.render import eval_table

    console.print(eval_table(result))
    assert "mIoU" in console.export_text()
    with pytest.raises(ConfigError, match="5 classes"):
        evaluate(make_tiny_checkpoint(tmp_path / "t5.pt", num_classes=5), ds)


def test_model_mode_restored():
    m = Decoder().train()
    evaluate(m, CodedData(1))
    assert m.training


def test_cli_eval(tmp_path):
    from conftest import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "t.pt", num_classes=8)
    out = tmp_path / "eval.json"
    cmd = [sys.executable, "-m", "danet_edge.cli", "eval", str(ckpt), "--limit", "1",
           "--synthetic-size", "64", "96", "--json", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "mIoU" in r.stdout and json.loads(out.read_text())["num_images"] == 1
    r = subprocess.run(cmd[:4] + [str(tmp_path / "missing.pt")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 3 and r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr  # bad input
    assert not math.isnan(json.loads(out.read_text())["ms_per_image"])
