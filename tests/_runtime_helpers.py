"""Test helpers for the runtime tests: a tiny ONNX export with a hand-written manifest.

Kept independent of ``danet_edge.export`` so the backend tests do not depend on another stage.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import torch

from danet_edge.checkpoint import checkpoint_manifest, load_model
from danet_edge.manifest import write_manifest


class _Fused(torch.nn.Module):
    """uint8 NHWC RGB in, normalised inside; labels (ArgMax) out."""

    def __init__(self, model, mean, std) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0)

    def forward(self, x):
        x = x.permute(0, 3, 1, 2).float()
        return self.model((x - self.mean) / self.std).argmax(1)


def export_tiny(ckpt: Path, out: Path, fused: bool = False, batch: int = 1, own: bool = False) -> Path:
    """Export ``ckpt`` to ``out`` (static shape) and write ``out.json``.

    Uses the project's exporter (``danet_edge.export.export_onnx``) when it is importable, else
    (or with ``own=True``) a plain ``torch.onnx.export`` with a hand-written manifest.
    """
    lm = load_model(ckpt)
    if not own:
        try:
            from danet_edge.export import export_onnx
        except ImportError:
            export_onnx = None
        if export_onnx is not None:
            h, w = lm.data["image_size"]
            export_onnx(lm, out, (h, w), batch=batch, fused_io=fused, tolerance=1e-3)
            return out
    man = checkpoint_manifest(lm, batch=batch)
    h, w = man.image_size
    if fused:
        module = _Fused(lm.model, lm.data["mean"], lm.data["std"]).eval()
        x = torch.zeros(batch, h, w, 3, dtype=torch.uint8)
        man = dataclasses.replace(man, kind="onnx", input_shape=[batch, h, w, 3], input_dtype="uint8",
                                  output_name="labels", output_shape=[batch, h, w], output_dtype="int64",
                                  output_kind="labels", opset=17)
    else:
        module = lm.model
        x = torch.randn(batch, 3, h, w)
        man = dataclasses.replace(man, kind="onnx", opset=17)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, x, str(out), input_names=[man.input_name], output_names=[man.output_name],
                          opset_version=17, dynamo=False)
    write_manifest(out, man)
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
