"""CPU runtimes side by side: the same ONNX files on ONNX Runtime and OpenVINO, beside PyTorch eager FP32.

DANet (random weights unless ``--checkpoint``) exported to FP32 and to the cpu-target INT8 graph (uint8
activations, int8 per-channel weights) with fused I/O (the export default), as logits graphs (``--logits``),
with quantized attention MatMuls, and the tensorrt-target INT8 + FP16 graph (Q/DQ also on residual skips);
every entry timed in one run, one after the other with ``danet-edge bench``'s loop and defaults
(``bench.measure.time_runs``, ``BenchConfig``: warm-up runs and seconds, at least ``--runs`` timed runs and the
timed window's seconds), with the same thread count, medians; each entry's
time is ``Backend.predict`` on one frame at the model size: normalise, the graph, argmax, labels to host (the resize
to that size is done once, before timing). Answers issue 9's question:
which CPU runtime is the honest fast route, and how far INT8 goes against eager FP32.

Run: ``nice -n 10 .venv/bin/python benchmarks/cpu_runtimes.py [--backbone resnet50] [--size 256 512]
[--threads 2] [--runs 20] [--out runs/cpu_runtimes] [--graph NAME=PATH ...]`` (needs ``pip install openvino`` for its rows).

Entries are timed one after the other, not interleaved: interleaved, each row shares the CPU with the runtime that
ran just before (ONNX Runtime's threads spin after each run; the OpenVINO row right after an ONNX Runtime row took
72 ms for 58 ms alone: R-50 cpu-target INT8, 256x512, 2 threads, AMX CPU). ``--rows openvino-bf16`` opens no ONNX
Runtime session: PyTorch eager and OpenVINO bf16 only, the two rows ``danet-edge bench GRAPH -r CKPT --backend
openvino-bf16 --threads 2`` times.

How it compares with ``danet-edge bench``. This script (``--rows openvino-bf16 --graph NAME=GRAPH --checkpoint CKPT``), set
beside ``bench GRAPH -r CKPT --backend openvino-bf16 --threads 2`` (both with bench's default warm-up and window):
the same in both are the backends (``open_backend``: the eager reference at the graph's size, batch 1; the graph
on OpenVINO bf16), the threads (2: PyTorch's ``set_num_threads`` and OpenVINO's ``INFERENCE_NUM_THREADS``; bench
leaves each library's default without ``--threads``, the script runs 2), denormals flushed (one process each),
the warm-up and the timed window (``BenchConfig``'s defaults), the median (bench's p50) of the timed runs, and the
speed-up (eager median / graph median).
What differs:

* nothing in the per-frame work: both time ``Backend.predict`` on one frame at the model size (normalise, the
  graph, argmax, labels to host); the script resizes its 128x160 scene to that size once, before timing (timed
  per frame, OpenCV's resize and its thread pool cost the eager row 5 % here);
* order: none: both open each entry just before its runs and close it after, the reference first;
* the pixels: other synthetic scenes (the time does not depend on them once denormals are flushed). Both open each
  backend kind once before timing (``bench.run.prime_backends``: without it eager ran 5 % slower).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings
from pathlib import Path

# As the danet-edge CLI does (danet_edge/cli/__init__.py), before PyTorch loads its OpenMP runtime: idle OpenMP
# threads sleep. Spinning, they take the cores from the row timed next (OpenVINO bf16 after eager: 60 vs 56 ms),
# and bench, which runs under the CLI, would not see the same machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_table import random_checkpoint  # noqa: E402

from danet_edge.data.calib import fill_calib_dir, load_calibration_set  # noqa: E402
from danet_edge.export.export import ExportConfig, export_model  # noqa: E402
from danet_edge.bench.config import BenchConfig  # noqa: E402
from danet_edge.bench.measure import time_runs  # noqa: E402
from danet_edge.bench.run import prime_backends  # noqa: E402
from danet_edge.runtime.backends import fit_frame, open_backend, segment_frames  # noqa: E402


BENCH = BenchConfig()  # bench's defaults: the warm-up (runs and seconds) and the timed window's seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", type=int, nargs=2, default=(256, 512))
    ap.add_argument("--checkpoint", type=Path, help="a trained checkpoint (default: random weights)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=BenchConfig.default("runs"),
                    help="timed runs, at least (bench's default; bench's --duration and warm-up apply too)")
    ap.add_argument("--calib", type=int, default=8, help="calibration images (synthetic scenes)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "cpu_runtimes")
    ap.add_argument("--calib-dir", type=Path, help="a calibration folder (default: synthetic scenes)")
    ap.add_argument("--rows", default="all", choices=("all", "fast", "openvino-bf16"),
                    help="'all'; 'fast' (the INT8 graphs on the fastest backends only); 'openvino-bf16' (PyTorch "
                         "eager and the cpu-target INT8 graph, or the --graph files instead, on OpenVINO bf16 "
                         "only: what `danet-edge bench --backend openvino-bf16` is set beside)")
    ap.add_argument("--graph", action="append", default=[], metavar="NAME=PATH",
                    help="one more exported graph to time on ONNX Runtime and OpenVINO bf16 (repeatable), "
                         "e.g. a budgeted export")
    args = ap.parse_args()
    out, size = args.out, tuple(args.size)
    ckpt = args.checkpoint or out / f"{args.backbone}_{size[0]}x{size[1]}.pt"
    if not ckpt.is_file():
        random_checkpoint(ckpt, args.backbone, size, 19)
    calib = args.calib_dir or out / "calib"
    if not (calib / "calib.txt").is_file() and args.calib_dir is None:
        fill_calib_dir("synthetic", None, args.calib, calib)
    graphs = {"fp32": out / "plain" / "model.onnx", "int8 cpu": out / "plain" / "model_int8_cpu.onnx",
              "int8 cpu, logits graph": out / "logits" / "model_int8_cpu.onnx",
              "int8 cpu + attention": out / "att" / "model_int8_cpu.onnx",
              "int8 + fp16 (tensorrt target)": out / "trt" / "model_int8_trt.onnx"}
    only_ov = args.rows == "openvino-bf16"  # no ONNX Runtime session: its threads spin after a run, slow the next
    if only_ov:
        graphs = {} if args.graph else {"int8 cpu": graphs["int8 cpu"]}  # nothing else exported
    common = dict(imgsz=size, int8=True, calib=calib, calib_size=args.calib, verify_images=1, reference_images=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, extra in (("int8 cpu", {"target": "cpu", "out": out / "plain"}),
                           ("int8 cpu, logits graph", {"target": "cpu", "out": out / "logits", "fused_io": False}),
                           ("int8 cpu + attention", {"target": "cpu", "out": out / "att", "include_attention": True}),
                           ("int8 + fp16 (tensorrt target)", {"target": "tensorrt", "out": out / "trt"})):
            if key in graphs and not graphs[key].is_file():
                export_model(ckpt, ExportConfig(**common, **extra), log=print)
    frame = np.asarray(next(load_calibration_set(calib).frames()))
    entries = [("PyTorch eager FP32", ckpt, "torch", {"image_size": size})]
    for name, path in graphs.items():
        fast = args.rows == "fast"
        if fast and name != "int8 cpu" and not name.startswith("int8 + fp16"):
            continue
        if not fast and not only_ov:
            entries.append((f"ONNX Runtime {name}", path, "onnxruntime", {"threads": args.threads}))
            entries.append((f"OpenVINO {name}", path, "openvino", {"threads": args.threads}))
        entries.append((f"OpenVINO {name}, bf16 outside INT8", path, "openvino-bf16", {"threads": args.threads}))
    if args.rows == "fast":
        entries.insert(1, ("ONNX Runtime int8 cpu", graphs["int8 cpu"], "onnxruntime", {"threads": args.threads}))
    for spec in args.graph:
        name, _, path = spec.partition("=")
        if not path or not Path(path).is_file():
            ap.error(f"--graph {spec!r}: give NAME=PATH of an exported .onnx")
        if not only_ov:
            entries.append((f"ONNX Runtime {name}", Path(path), "onnxruntime", {"threads": args.threads}))
        entries.append((f"OpenVINO {name}, bf16 outside INT8", Path(path), "openvino-bf16", {"threads": args.threads}))
    import torch

    torch.set_num_threads(args.threads)
    prime_backends([(path, backend) for _, path, backend, _ in entries])  # as bench does
    refs, times, providers = {}, {}, {}
    for label, path, backend, opts in entries:  # one entry at a time, opened just before its runs and closed after,
        # with bench's own loop and defaults (warm-up, runs, duration). Interleaved, each row paid for the threads the row
        # before left spinning (ONNX Runtime's took the OpenVINO row after it from 58 to 72 ms); opened together, the
        # idle OpenVINO pool slowed eager by 5 % (760 vs 720 ms, R-50 256x512, 2 threads)
        try:
            b = open_backend(path, backend=backend, **opts)
        except Exception as e:  # noqa: BLE001 - a missing runtime is a row, not a crash
            print(f"{label}: skipped ({e})")
            continue
        with b:
            refs[label], providers[label] = segment_frames(b, [frame])[0], b.provider
            fitted = fit_frame(frame, b.manifest.image_size, False)[0][None]  # resized once, as bench's input is
            timed = time_runs(lambda b=b, x=fitted: b.predict(x) and None, warmup=BENCH.warmup,
                              warmup_s=BENCH.warmup_s, runs=args.runs, duration_s=BENCH.duration_s)
        times[label] = [ms / 1e3 for ms in timed.e2e_ms]
    base = statistics.median(times["PyTorch eager FP32"]) if "PyTorch eager FP32" in times else None
    ref = refs.get("PyTorch eager FP32")
    print(f"\n{args.backbone} {size[0]}x{size[1]}, batch 1, {args.threads} threads, median of at least {args.runs} "
          f"runs and {BENCH.duration_s:g} s (one entry after the other), agreement with PyTorch on one synthetic "
          "scene\n")
    print("| entry | runs on | p50 ms | vs eager FP32 | agreement % |\n|---|---|---|---|---|")
    for label in times:
        med = statistics.median(times[label]) * 1e3
        agree = 100.0 * float((refs[label] == ref).mean()) if ref is not None else float("nan")
        speed = f"{base * 1e3 / med:.2f}x" if base else "-"
        print(f"| {label} | {providers[label]} | {med:.0f} | {speed} | {agree:.2f} |")


if __name__ == "__main__":
    main()
