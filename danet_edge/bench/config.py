"""Options of the bench stage: :class:`BenchConfig` (``danet-edge bench``) and the batch-memory check."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.config import Config, check_choice, check_range, option
from ..core.errors import ConfigError

__all__ = ["BenchConfig", "check_batch_memory", "MAX_BATCH", "MAX_SECONDS"]


#: Largest ``--batch`` bench takes; what fits in memory is checked per entry (:func:`check_batch_memory`).
MAX_BATCH = 1024
#: Longest ``--warmup-s`` / ``--duration`` bench takes, in s (one entry's warm-up or timed window).
MAX_SECONDS = 3600


def check_batch_memory(batch: int, size: Sequence[int], num_classes: int) -> None:
    """Refuse a batch whose frames, model input, logits and labels cannot fit in the RAM available now
    (a lower bound of what timing it holds: the model's activations come on top).

    Raises:
        ConfigError: naming the estimate and what is available.
    """
    import psutil

    h, w = int(size[0]), int(size[1])
    per_image = h * w * (3 + 3 * 4 + num_classes * 4 + 8)  # uint8 frame, f32 input, f32 logits, int64 labels
    need, have = batch * per_image, psutil.virtual_memory().available
    if need > have:
        raise ConfigError(f"--batch {batch} at {h}x{w} needs at least {need / 2**30:.1f} GiB for its inputs and "
                          f"outputs, more than the {have / 2**30:.1f} GiB of RAM available: use a smaller --batch")


@dataclass
class BenchConfig(Config):
    """Options of :func:`bench_artifacts`.

    Attributes:
        reference: PyTorch checkpoint timed as the FP32 eager reference (None: not timed; speed-ups are then
            relative to the first FP32 artifact at the same size and batch).
        backend: a row of the backend table (``runtime.backends.BACKEND_TABLE``) every artifact is opened with,
            e.g. ``openvino-bf16`` for the cpu-target INT8 graph (None: each artifact's backend by its suffix, as
            before). The reference stays PyTorch eager, so the speed-up is this backend's over eager. Each such
            entry is named ``<file> on <backend>``; its ``backend`` field holds the name either way.
        warmup: untimed runs before timing, at least (>= 0); warmup_s: untimed time before timing, at least,
            in s (trtexec's ``--warmUp``, which is in ms); warm-up ends when both are done.
        runs: timed runs, at least (>= 1); duration_s: timed window, at least, in s (trtexec's ``--duration``);
            timing ends when both are done, or at ``max(runs, 10000)`` runs (a note says so).
        batches: batch sizes for backends that take any batch (PyTorch); static-shape artifacts
            run at their own batch. None: the artifacts' batches.
        threads: CPU threads for PyTorch, ONNX Runtime and OpenVINO (None: each library's default).
            ``benchmarks/cpu_runtimes.py`` runs 2 unless told: give the same count to compare with it.
        device: torch device for PyTorch entries (None: CUDA when available, else CPU).
        gpu_variants: time the PyTorch FP16/bf16 autocast and explicit-PAM variants (GPU only).
        check_json: a ``danet-edge check`` JSON whose mIoU the plot uses.
        json_path, plot_path: write the report JSON / the accuracy-latency plot (PNG) there (the plot is
            left out, with a warning, when matplotlib is not installed).
        seed: seed of the synthetic input scenes.
        jetson_root: file-system root the Jetson facts and power rails are read under (None: ``/``; a fake
            sysfs tree in tests). Not a command-line option.
    """

    reference: Path | None = option(None, "PyTorch checkpoint timed as the FP32 eager reference.")
    backend: str | None = option(None, "Run every artifact on this backend (default: by file suffix), e.g. "
                                       "openvino-bf16 for the cpu-target INT8 graph; the --reference stays "
                                       "PyTorch eager, so the speed-up is this backend's over eager.")
    warmup: int = option(3, "Untimed runs before timing, at least (see --warmup-s).")
    runs: int = option(20, "Timed runs, at least (see --duration).")
    warmup_s: float = option(1.0, "Untimed time before timing, at least, in seconds (trtexec --warmUp, in ms there); "
                                  "0: --warmup runs only.")
    duration_s: float = option(3.0, "Timed window, at least, in seconds (trtexec --duration): timing ends when both "
                                    "--runs and this are done, or at max(--runs, 10000) runs; 0: --runs only.")
    batches: tuple[int, ...] | None = option(None, "Batch sizes for PyTorch (static graphs run at their own batch); "
                                                   "repeatable.")
    threads: int | None = option(None, "CPU threads for PyTorch, ONNX Runtime and OpenVINO (default: each "
                                       "library's own).")
    device: str | None = option(None, "Torch device for PyTorch entries (cpu, cuda).")
    gpu_variants: bool = option(True, "Time the PyTorch FP16/bf16 autocast and explicit-PAM variants (GPU only).")
    check_json: Path | None = option(None, "A check JSON: its mIoU goes into the plot.")
    json_path: Path | None = option(None, "Write the report as JSON here.")
    plot_path: Path | None = option(None, "Accuracy-vs-latency plot (PNG).")
    seed: int = option(0, "Seed of the synthetic input scenes.")
    jetson_root: Path | None = option(None, "File-system root of the Jetson facts (tests).")

    def validate(self) -> None:
        """Raises ConfigError for negative warm-up, no timed runs, warm-up or duration outside 0..``MAX_SECONDS``
        s (or not finite), batch sizes outside 1..``MAX_BATCH``, threads below 1 or a backend that is no row of
        the backend table (the bounds that depend on the machine, and whether the backend runs each artifact's
        kind, ``runtime.backends.check_backend_opens``, are the stage's: :func:`bench_artifacts`)."""
        check_range("--warmup", self.warmup, 0)
        check_range("--runs", self.runs, 1)
        check_range("--warmup-s", self.warmup_s, 0, MAX_SECONDS, integer=False)
        check_range("--duration", self.duration_s, 0, MAX_SECONDS, integer=False)
        if self.batches is not None:
            self.batches = tuple(int(b) for b in self.batches)
            if not self.batches or any(not 1 <= b <= MAX_BATCH for b in self.batches):
                raise ConfigError(f"--batch sizes must be in 1..{MAX_BATCH}, got {list(self.batches)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.backend is not None:
            from ..runtime.backends import BACKEND_TABLE  # imports no runtime (torch, onnxruntime, openvino)

            check_choice("--backend", self.backend, list(BACKEND_TABLE))
