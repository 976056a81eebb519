"""The main job, end to end on the embedded synthetic street scenes, in one process.

Stages (each calls the library function of its module; no subprocess):

1. ``train.train``: DANet ResNet-18 (no pretrained weights needed) on synthetic scenes;
2. ``calib.fill_calib_dir``: a class-balanced calibration folder from the training split;
3. ``export.export_model``: FP32 ONNX, FP16 ONNX and INT8 Q/DQ for TensorRT (symmetric), then
   INT8 Q/DQ for ONNX Runtime on CPU (uint8 activations), all static-shape with manifests;
4. ``checks.check_artifacts``: every artifact (and the checkpoint itself) against the checkpoint on
   the synthetic val split: JSON, Markdown report and disagreement pictures;
5. ``bench.bench_artifacts``: latency/FPS/memory side by side with PyTorch FP32 eager, plot;
6. ``runtime.pipeline.run_inference``: a generated synthetic video through the fastest artifact that
   passed the check (by bench throughput), overlay video and per-stage timing.

A TensorRT engine is not built (TensorRT is not installable here: build it on the Jetson with
``danet-edge build``). The default sizes keep the whole job under 10 minutes on 2 CPU cores.

On a CPU shared with other work, PyTorch's OpenMP threads spin-wait for descheduled peers and
training slows by up to 10x; the ``danet-edge`` CLI therefore sets ``OMP_WAIT_POLICY=PASSIVE`` (unless
already set) before torch is loaded. Measured on 2 busy cores: 455 s without, 45 s with it.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .core.config import Config, check_range, option
from .model.config import ModelConfig
from .core.errors import ConfigError
from .core.utils import ensure_output_names, write_json

__all__ = ["DemoConfig", "DemoResult", "run_demo"]

#: The stage folders the demo writes in its ``--out`` (each stage checks its own names inside).
DEMO_FOLDERS = ("train", "calib", "export", "check", "bench", "video", "infer")


@dataclass
class DemoConfig(Config):
    """Sizes of the demo. Images ``(H, W)`` px, times in seconds.

    Attributes:
        out: output folder (train/, calib/, export/, check/, bench/, infer/, demo.json).
        backbone: DANet backbone (resnet18 keeps the CPU run short).
        image_size: synthetic scene size, also the export size (multiples of 8).
        epochs, batch_size, train_images, val_images: training budget and the check's image count.
        lr: base learning rate (poly schedule).
        calib_images: calibration images for both INT8 graphs.
        bench_runs, bench_warmup: timed / untimed runs per bench entry (at least);
        bench_duration_s, bench_warmup_s: timed / untimed time per bench entry, at least, in s (kept short:
            the demo times five entries; ``bench`` itself defaults to 3 s and 1 s).
        video_frames, video_size: the synthetic video sent through ``infer``.
        seed: seeds training, data, calibration and video.
    """

    out: Path = option(Path("runs/demo"), "Output folder.")
    backbone: str = "resnet18"
    image_size: tuple[int, int] = (96, 128)
    epochs: int = 8
    batch_size: int = 8
    train_images: int = 192
    val_images: int = 24
    lr: float = 0.02
    calib_images: int = 32
    bench_runs: int = 10
    bench_warmup: int = 2
    bench_duration_s: float = 1.0
    bench_warmup_s: float = 0.2
    video_frames: int = 60
    video_size: tuple[int, int] = (240, 320)
    seed: int = 0

    def validate(self) -> None:
        self.out = Path(self.out)
        h, w = self.image_size
        if h % 8 or w % 8 or h < 32 or w < 32:
            raise ConfigError(f"demo image size must be multiples of 8 and >= 32, got {h}x{w}")
        for name in ("epochs", "batch_size", "train_images", "val_images", "calib_images", "bench_runs",
                     "video_frames"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("bench_duration_s", "bench_warmup_s"):
            check_range(name, getattr(self, name), 0, 60, integer=False)

    @classmethod
    def quick(cls, out: str | os.PathLike[str] = Path("runs/demo_quick")) -> "DemoConfig":
        """Tiny sizes and one epoch: every stage runs, in well under a minute on 2 cores."""
        return cls(out=Path(out), image_size=(64, 96), epochs=1, batch_size=4, train_images=16, val_images=4,
                   calib_images=4, bench_runs=2, bench_warmup=1, bench_duration_s=0.0, bench_warmup_s=0.0,
                   video_frames=6, video_size=(72, 96))


@dataclass
class DemoResult:
    """What the demo wrote and how long each stage took.

    Attributes:
        paths: label -> path of every artifact and report.
        stage_s: seconds per stage; wall_s: the whole job.
        check, bench, infer: the stage results (``CheckReport``, ``BenchReport``, ``InferSummary``).
        failed: None when every artifact passed the check, else the failures in one line.
    """

    paths: dict[str, Path] = field(default_factory=dict)
    stage_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    check: Any = None
    bench: Any = None
    infer: Any = None
    failed: str | None = None


def run_demo(cfg: DemoConfig | None = None, log: Callable[[str], None] | None = None) -> DemoResult:
    """Run the whole job (see the module docstring).

    Returns:
        DemoResult; a failed accuracy check is reported in ``failed`` (the artifacts stay), not raised.

    Raises:
        DanetEdgeError subclasses from any stage (bad options, export or inference failures).
    """
    from .bench.config import BenchConfig
    from .bench.run import bench_artifacts
    from .data.calib import fill_calib_dir
    from .check.config import CheckConfig
    from .check.run import check_artifacts
    from .data.datasets import build_dataset, write_synthetic_video
    from .core.errors import CheckFailed
    from .export.export import ExportConfig, export_model
    from .infer.config import InferConfig
    from .infer.pipeline import run_inference
    from .train.config import TrainConfig
    from .train.train import train

    cfg = cfg or DemoConfig()
    log = log or (lambda msg: print(msg, flush=True))
    out = cfg.out
    ensure_output_names(out, "--out", ["demo.json"], DEMO_FOLDERS)  # a link among them: refused before any stage
    res = DemoResult()
    t_start = time.perf_counter()

    def stage(name: str) -> Callable[[], None]:
        log(f"== {name}")
        t0 = time.perf_counter()
        return lambda: res.stage_s.__setitem__(name, round(time.perf_counter() - t0, 2))

    done = stage("train")
    size = tuple(cfg.image_size)
    ckpt = train(TrainConfig(
        dataset="synthetic", model=ModelConfig(backbone=cfg.backbone), epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
        seed=cfg.seed, workers=0, out_dir=str(out / "train"), limit_train=cfg.train_images,
        limit_val=cfg.val_images, data_options={"size": size}, progress=False,
        exist_ok=True))  # the demo's own folder: a second demo replaces its run
    res.paths["checkpoint"] = ckpt
    done()

    done = stage("calibration images")
    calib = out / "calib"
    if not (calib / "calib.txt").is_file():
        fill_calib_dir("synthetic", None, cfg.calib_images, calib, split="train", seed=cfg.seed)
    res.paths["calibration folder"] = calib
    done()

    done = stage("export FP32, FP16, INT8 (tensorrt), INT8 (cpu)")
    exp = out / "export"
    common = dict(calib=calib, calib_size=cfg.calib_images, seed=cfg.seed, out=exp)
    with warnings.catch_warnings():  # onnxconverter-common warns once per FP16-truncated weight
        warnings.filterwarnings("ignore", category=UserWarning, module="onnxconverter_common")
        first = export_model(ckpt, ExportConfig(fp16=True, int8=True, target="tensorrt", **common), log=log)
        second = export_model(ckpt, ExportConfig(int8=True, target="cpu", **common), log=log)
    artifacts = [a.path for a in first.artifacts] + [second.artifacts[-1].path]
    for a in artifacts:
        res.paths[f"artifact {a.name}"] = a
    done()

    done = stage("check against the PyTorch reference")
    val = build_dataset("synthetic", split="val", limit=cfg.val_images, size=size)
    check = check_artifacts([ckpt, *artifacts], ckpt, val,
                            CheckConfig(json_path=out / "check" / "check.json", report_dir=out / "check"))
    res.check = check
    res.paths["check JSON"] = Path(check.json_path)
    res.paths["check report"] = Path(check.markdown_path)
    try:
        check.raise_for_failure()
    except CheckFailed as e:
        res.failed = str(e)
        log(f"check: {e}")
    done()

    done = stage("bench")
    bench = bench_artifacts(artifacts, BenchConfig(
        reference=ckpt, warmup=cfg.bench_warmup, runs=cfg.bench_runs, warmup_s=cfg.bench_warmup_s,
        duration_s=cfg.bench_duration_s, check_json=out / "check" / "check.json",
        json_path=out / "bench" / "bench.json", plot_path=out / "bench" / "bench.png", gpu_variants=False))
    res.bench = bench
    res.paths["bench JSON"] = Path(bench.json_path)
    res.paths["bench plot"] = Path(bench.plot_path)
    done()

    done = stage("infer a synthetic video")
    video = write_synthetic_video(out / "video" / "synthetic.mp4", cfg.video_frames, tuple(cfg.video_size),
                                  seed=cfg.seed)
    model = _fastest_passing(check, bench) or artifacts[0]
    summary = run_inference(model, video, InferConfig(out_dir=out / "infer"))
    res.infer = summary
    res.paths["input video"] = video
    res.paths[f"infer model ({Path(model).name})"] = Path(model)
    for key, p in summary.outputs.items():
        res.paths[f"infer {key}"] = Path(p)
    done()

    res.wall_s = round(time.perf_counter() - t_start, 1)
    res.paths["demo summary"] = out / "demo.json"
    write_json(out / "demo.json", {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "wall_s": res.wall_s, "stage_s": res.stage_s, "check_passed": res.failed is None, "failed": res.failed,
        "paths": {k: str(v) for k, v in res.paths.items()},
        "infer": {"frames": summary.frames, "fps": summary.fps, "model": str(model)},
    })
    log(f"== done in {res.wall_s:.0f} s")
    return res


def _fastest_passing(check: Any, bench: Any) -> Path | None:
    """The artifact with the highest bench throughput among those that passed the check."""
    passed = {str(Path(a.path).resolve()) for a in check.artifacts if a.passed}
    timed = [e for e in bench.entries if not e.is_reference and e.skipped is None and e.path
             and str(Path(e.path).resolve()) in passed]
    if not timed:
        return None
    return Path(max(timed, key=lambda e: e.throughput_fps or 0.0).path)
