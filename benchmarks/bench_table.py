"""CPU bench table: DANet (random weights) exported to FP32 / FP16 / INT8 (tensorrt and cpu targets),
timed with ``bench_artifacts`` side by side with PyTorch FP32 eager.

The project claims ONNX Runtime INT8 (cpu target: uint8 activations, int8 per-channel weights) runs
at least 3x faster than PyTorch eager FP32 for DANet ResNet-50 at 256x512 on CPU. Random weights are
fine for speed (agreement figures of a random model mean little and are not the point here).

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_table.py [--backbone resnet50] [--size 256 512]
[--runs 5] [--precisions fp32 fp16 int8_trt int8_cpu] [--out runs/bench_r50]``
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from danet_edge.bench.config import BenchConfig
from danet_edge.bench.run import bench_artifacts
from danet_edge.data.calib import fill_calib_dir  # noqa: E402
from danet_edge.model.checkpoint import default_palette, save_checkpoint  # noqa: E402
from danet_edge.export.export import ExportConfig, export_model  # noqa: E402
from danet_edge.model.config import ModelConfig
from danet_edge.model.danet import build_model


def random_checkpoint(path: Path, backbone: str, size: tuple[int, int], classes: int) -> Path:
    import torch

    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, num_classes=classes)
    model = build_model(cfg).eval()
    return save_checkpoint(path, {
        "model": model.state_dict(), "model_config": cfg.to_dict(),
        "data": {"dataset": "random", "classes": [f"c{i}" for i in range(classes)], "palette": default_palette(classes),
                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "ignore_index": 255,
                 "image_size": list(size)}, "epoch": 0})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", type=int, nargs=2, default=(256, 512))
    ap.add_argument("--classes", type=int, default=19)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--calib", type=int, default=8, help="calibration images (synthetic scenes)")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "int8_trt", "int8_cpu"])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_r50")
    args = ap.parse_args()
    out: Path = args.out
    size = tuple(args.size)
    ckpt = out / f"{args.backbone}_{size[0]}x{size[1]}.pt"
    if not ckpt.is_file():
        random_checkpoint(ckpt, args.backbone, size, args.classes)
    calib = out / "calib"
    if not (calib / "calib.txt").is_file():
        fill_calib_dir("synthetic", None, args.calib, calib)
    exp = out / "export"
    names = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8_trt": "model_int8_trt.onnx",
             "int8_cpu": "model_int8_cpu.onnx"}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not all((exp / names[p]).is_file() for p in args.precisions if p != "int8_cpu"):
            export_model(ckpt, ExportConfig(fp16="fp16" in args.precisions, int8="int8_trt" in args.precisions,
                                            target="tensorrt", calib=calib if "int8_trt" in args.precisions else None,
                                            out=exp, verify_images=1), log=print)
        if "int8_cpu" in args.precisions and not (exp / names["int8_cpu"]).is_file():
            export_model(ckpt, ExportConfig(int8=True, target="cpu", calib=calib, out=exp, verify_images=1), log=print)
    print(f"exports ready ({time.perf_counter() - t0:.0f} s)")
    rep = bench_artifacts([exp / names[p] for p in args.precisions],
                          BenchConfig(reference=ckpt, warmup=args.warmup, runs=args.runs, gpu_variants=False,
                                      json_path=out / "bench.json", plot_path=out / "bench.png"))
    m = rep.machine
    print(f"\n{args.backbone} {size[0]}x{size[1]}, batch 1, {m['cpu']} ({m['cpu_count']} cores, "
          f"{m['torch_threads']} torch threads), torch {m['torch']}, onnxruntime {m['onnxruntime']}, "
          f"{args.runs} timed runs after {args.warmup} warm-up\n")
    print("| entry | precision | p50 ms | p90 ms | mean ms | FPS | host peak MiB | speed-up vs eager FP32 |")
    print("|---|---|---|---|---|---|---|---|")
    for e in rep.entries:
        if e.skipped:
            continue
        print(f"| {e.name} | {e.precision} | {e.latency_p50_ms:.0f} | {e.latency_p90_ms:.0f} | {e.latency_mean_ms:.0f} "
              f"| {e.throughput_fps:.2f} | {e.host_peak_mib:.0f} | {e.speedup_vs_reference:.2f}x |")
    print(f"\nJSON {rep.json_path}, plot {rep.plot_path}")


if __name__ == "__main__":
    main()
