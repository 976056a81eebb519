"""Shared fixtures: a tiny trained-shape checkpoint, the CamVid path, thread limits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Passive OpenMP waiting: on a busy or shared CPU the default spin-waiting makes torch 10-50x
# slower (measured here); it must be set before torch loads its OpenMP runtime.
if not os.environ.get("OMP_WAIT_POLICY"):
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "camvid"
CAMVID = Path(os.environ.get("DANET_EDGE_CAMVID", CAMVID))


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    """Root of CamVid in the SegNet layout; skips the test where it is absent."""
    if not (CAMVID / "train.txt").is_file():
        pytest.skip(f"CamVid not found at {CAMVID} (set DANET_EDGE_CAMVID)")
    return CAMVID


def make_tiny_checkpoint(path: Path, num_classes: int = 5, image_size=(64, 96), backbone: str = "resnet18",
                         seed: int = 0) -> Path:
    """A danet-edge checkpoint with random weights, non-zero attention gammas and BN statistics
    that are not the identity, so that every part of the graph matters."""
    from danet_edge.checkpoint import default_palette, save_checkpoint
    from danet_edge.model import ModelConfig, build_model

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
    from danet_edge.checkpoint import load_checkpoint, save_checkpoint

    make_tiny_checkpoint(path, num_classes=num_classes, image_size=image_size)
    ckpt = load_checkpoint(path)
    ckpt["model"]["head.conv8.1.bias"].zero_()
    ckpt["model"]["head.conv8.1.weight"].mul_(10.0)
    del ckpt["format"]
    return save_checkpoint(path, ckpt)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Path of a ResNet-18 DANet checkpoint, 5 classes, image size 64x96 (random weights)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
