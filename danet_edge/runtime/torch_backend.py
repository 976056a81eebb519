"""PyTorch eager backend: a danet-edge (or official DANet) checkpoint, FP32 (row ``torch`` of the table)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..core.errors import ConfigError
from .backends import _BaseBackend

__all__ = ["TorchBackend"]


class TorchBackend(_BaseBackend):
    """A danet-edge (or official DANet) checkpoint run in PyTorch eager mode, FP32.

    Args:
        path: ``.pt`` / ``.pth`` checkpoint, loaded with ``checkpoint.load_model`` (weights_only=True).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when available, else CPU.
        image_size: ``(h, w)`` input size; default the checkpoint's ``data.image_size`` (else 512x1024).
        batch: batch size recorded in the manifest (PyTorch itself takes any N).
        qat_float: also open a QAT checkpoint, as its float weights without the fake quantization (the model its
            INT8 graph was exported from: export's reference bundle); without it a QAT checkpoint is refused.

    Raises:
        CheckpointError: unreadable or unsafe checkpoint. ConfigError: unknown or unavailable device.
        MissingDependencyError: PyTorch is not installed (the device runtime runs .onnx / .engine without it).
    """

    name = "torch"
    static_batch = False

    def __init__(self, path: str | os.PathLike[str], device: str | None = None,
                 image_size: tuple[int, int] | None = None, batch: int | None = None, qat_float: bool = False) -> None:
        from ..core.optional import import_torch

        torch = import_torch("a .pt / .pth checkpoint (the torch backend)")
        from ..model.checkpoint import checkpoint_manifest, load_model

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"unknown torch device {device!r} ({e})") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU here")
        loaded = load_model(path, qat=qat_float)
        self.model = loaded.model.to(self.device).eval()
        self.manifest = checkpoint_manifest(loaded, image_size=image_size, batch=batch or 1)
        self.provider = f"PyTorch {torch.__version__} eager FP32 on {self.device}"
        self._torch = torch
        if self.device.type == "cuda":
            self._sync = lambda: torch.cuda.synchronize(self.device)
            self.compute_timing = "perf_counter around model(x), torch.cuda.synchronize before and after (device tensors)"
        else:
            self._sync = None
            self.compute_timing = "perf_counter around model(x) on the CPU (no normalisation, no argmax, no copies)"

    @classmethod
    def artifact_precision(cls, path: Any, manifest: Any) -> tuple[str, str, dict[str, Any] | None]:
        """Checkpoints run in FP32 eager mode."""
        return "fp32", "checkpoint (float32 weights, eager FP32)", None

    def _forward(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        torch = self._torch
        x = torch.from_numpy(self._model_input(images)).to(self.device, non_blocking=True)
        with torch.inference_mode():
            logits = self._timed(self.model, x, sync=self._sync)  # the forward alone: compute_ms
            labels = logits.argmax(1)
        return labels.cpu().numpy(), logits.float().cpu().numpy()

    def close(self) -> None:
        self.model = None
