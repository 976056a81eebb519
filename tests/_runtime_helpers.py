"""Test helpers for the runtime tests: a tiny ONNX export and smooth random frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from danet_edge.checkpoint import load_model


def export_tiny(ckpt: Path, out: Path, fused: bool = False, batch: int = 1) -> Path:
    """Export ``ckpt`` to ``out`` (static shape) with the project's exporter; writes ``out.json``."""
    from danet_edge.export import export_onnx

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
