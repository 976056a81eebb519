"""Test helpers for the runtime tests: a tiny ONNX export and smooth random frames."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from danet_edge.model.checkpoint import load_model

# CamVid in the SegNet layout, beside the project (tests that need it skip without it).
CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "camvid"
CAMVID = Path(os.environ.get("DANET_EDGE_CAMVID", CAMVID))


def export_tiny(ckpt: Path, out: Path, fused: bool = False, batch: int = 1) -> Path:
    """Export ``ckpt`` to ``out`` (static shape) with the project's exporter; writes ``out.json``."""
    from danet_edge.export.fp32 import export_onnx

    lm = load_model(ckpt)
    h, w = lm.data["image_size"]
    export_onnx(lm, out, (h, w), batch=batch, fused_io=fused, tolerance=1e-3)
    return out


def random_frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """``(n, h, w, 3)`` uint8 frames with smooth structure (not pure noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for i in range(n):
        base = np.stack([(xx * (3 + i)) % 256, (yy * 5) % 256, ((xx + yy) * 2 + 40 * i) % 256], -1)
        frames.append(np.clip(base + rng.integers(0, 30, (h, w, 3)), 0, 255).astype(np.uint8))
    return np.stack(frames)


def make_tiny_checkpoint(path: Path, num_classes: int = 5, image_size=(64, 96), backbone: str = "resnet18",
                         seed: int = 0) -> Path:
    """A danet-edge checkpoint with random weights, non-zero attention gammas and BN statistics
    that are not the identity, so that every part of the graph matters."""
    from danet_edge.model.checkpoint import default_palette, save_checkpoint
    from danet_edge.model.config import ModelConfig
    from danet_edge.model.danet import build_model

    torch.manual_seed(seed)
    cfg = ModelConfig(backbone=backbone, num_classes=num_classes)
    model = build_model(cfg)
    model.head.sa.gamma.data.fill_(0.5)
    model.head.sc.gamma.data.fill_(0.3)
    model.train()
    with torch.no_grad():  # a few forward passes give realistic BN running stats
        for _ in range(3):
            model(torch.randn(2, 3, *image_size))
    model.eval()
    save_checkpoint(path, {
        "model": model.state_dict(),
        "model_config": cfg.to_dict(),
        "data": {"dataset": "synthetic", "classes": [f"c{i}" for i in range(num_classes)],
                 "palette": default_palette(num_classes), "mean": [0.485, 0.456, 0.406],
                 "std": [0.229, 0.224, 0.225], "ignore_index": 255, "image_size": list(image_size)},
        "epoch": 0,
    })
    return path


def make_sensitive_checkpoint(path: Path, num_classes: int = 8, image_size=(64, 96)) -> Path:
    """The tiny random checkpoint with a bias-free classifier and 10x weights, so that its labels
    follow the image (a random head predicts one class almost everywhere, and then any broken
    artifact would still agree with it)."""
    from danet_edge.model.checkpoint import load_checkpoint, save_checkpoint

    make_tiny_checkpoint(path, num_classes=num_classes, image_size=image_size)
    ckpt = load_checkpoint(path)
    ckpt["model"]["head.conv8.1.bias"].zero_()
    ckpt["model"]["head.conv8.1.weight"].mul_(10.0)
    del ckpt["format"]
    return save_checkpoint(path, ckpt)


def run_cli(args, capsys) -> tuple:
    """Run ``danet-edge ARGS`` in-process through the CLI's ``main``: ``(exit code, stdout, stderr lines)``.
    Output captured before the call is dropped."""
    import sys

    import pytest

    from danet_edge.cli import main

    capsys.readouterr()
    old = sys.argv
    sys.argv = ["danet-edge", *map(str, args)]
    try:
        with pytest.raises(SystemExit) as e:
            main()
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return e.value.code, out.out, out.err.strip().splitlines()
