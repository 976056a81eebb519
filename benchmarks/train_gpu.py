"""A few ``danet-edge train`` steps of DANet R-50 on a GPU with AMP and SyncBatchNorm, against the same steps in
FP32, then ``eval`` of the result: one table.

Both runs go through torchrun with one process, so the DDP path runs (NCCL, ``SyncBatchNorm`` on CUDA, the
``GradScaler`` with ``--amp``) exactly as a multi-GPU run would, on one device. Same seed, data and steps; only
``--amp`` differs. Prepared for a machine with a CUDA GPU and PyTorch but no TensorRT (under 5 minutes on one
H100 / H200); on a CPU it runs the same path tiny and in FP32 only (AMP is CUDA-only), so that it is tested:

    .venv/bin/python benchmarks/train_gpu.py            # CUDA: R-50, 256x512 synthetic scenes, 3 epochs of 4 steps
    .venv/bin/python benchmarks/train_gpu.py --tiny     # CPU smoke: R-18, 64x96, 2 epochs of 2 steps

Prints per epoch the training loss of the FP32 and AMP runs and their relative difference, then each run's
mIoU from ``danet-edge eval`` and the seconds each took.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], env_note: str) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{env_note} failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="R-18 at 64x96, 2 epochs of 2 steps (a CPU smoke run)")
    p.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    a = p.parse_args()
    cuda = torch.cuda.is_available()
    backbone, size, epochs, steps, batch = ("resnet18", (64, 96), 2, 2, 2) if a.tiny or not cuda else \
        ("resnet50", (256, 512), 3, 4, 4)
    modes = ["fp32", "amp"] if cuda else ["fp32"]
    with tempfile.TemporaryDirectory(prefix="danet-train-gpu-") as tmp:
        root = a.out or Path(tmp)
        rows: dict[str, dict] = {}
        for mode in modes:
            out = root / mode
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m",
                   "danet_edge.cli", "-q", "train", "--dataset", "synthetic", "--synthetic-size", str(size[0]),
                   str(size[1]), "--backbone", backbone, "--epochs", str(epochs), "--batch-size", str(batch),
                   "--limit-train", str(steps * batch), "--limit-val", str(batch), "--seed", "0", "--workers", "0",
                   "--no-progress", "-o", str(out)] + (["--amp"] if mode == "amp" else [])
            train_s = _run(cmd, f"train ({mode})")
            metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
            ev = root / f"eval_{mode}.json"
            eval_s = _run([sys.executable, "-m", "danet_edge.cli", "-q", "eval", str(out / "last.pt"), "--dataset",
                           "synthetic", "--synthetic-size", str(size[0]), str(size[1]), "--limit", str(batch),
                           "--json", str(ev)], f"eval ({mode})")
            rows[mode] = {"losses": [m["train_loss"] for m in metrics], "miou": json.loads(ev.read_text())["miou"],
                          "train_s": train_s, "eval_s": eval_s}
    device = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"danet-edge train under torchrun (1 process, DDP{' + SyncBatchNorm' if cuda else ''}) on {device}: "
          f"{backbone}, synthetic {size[0]}x{size[1]}, {epochs} epochs of {steps} steps, batch {batch}")
    print(f"{'epoch':>5s} {'loss FP32':>10s} {'loss AMP':>10s} {'rel. diff':>9s}")
    for i, loss in enumerate(rows["fp32"]["losses"]):
        amp = rows["amp"]["losses"][i] if "amp" in rows else None
        diff = f"{abs(amp - loss) / abs(loss):9.2e}" if amp is not None else f"{'-':>9s}"
        print(f"{i:5d} {loss:10.4f} {amp if amp is not None else float('nan'):10.4f} {diff}")
    for mode, r in rows.items():
        print(f"{mode}: eval mIoU {100 * r['miou']:.2f} %, train {r['train_s']:.0f} s, eval {r['eval_s']:.0f} s")
    if not cuda:
        print("AMP and SyncBatchNorm: not run (no CUDA GPU here); the FP32 DDP path ran")


if __name__ == "__main__":
    main()
