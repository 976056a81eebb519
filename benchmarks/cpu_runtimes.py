"""CPU runtimes side by side: the same ONNX files on ONNX Runtime and OpenVINO, beside PyTorch eager FP32.

DANet (random weights unless ``--checkpoint``) exported to FP32 and to the cpu-target INT8 graph (uint8
activations, int8 per-channel weights) with fused I/O (the export default), as logits graphs (``--logits``),
with quantized attention MatMuls, and the tensorrt-target INT8 + FP16 graph (Q/DQ also on residual skips);
every entry timed in one run, alternating, with the same thread count, medians of ``--runs``; each entry's
time is ``segment_frames`` on one frame: resize, normalise, the graph, argmax, labels back to frame size. Answers issue 9's question:
which CPU runtime is the honest fast route, and how far INT8 goes against eager FP32.

Run: ``nice -n 10 .venv/bin/python benchmarks/cpu_runtimes.py [--backbone resnet50] [--size 256 512]
[--threads 2] [--runs 7] [--out runs/cpu_runtimes] [--graph NAME=PATH ...]`` (needs ``pip install openvino`` for its rows).

Alternating runs share the CPU with the runtime that ran just before: ONNX Runtime's threads spin after each run,
and the OpenVINO row right after an ONNX Runtime row took 72 ms for 58 ms alone (R-50 cpu-target INT8, 256x512,
2 threads, AMX CPU). ``--rows openvino-bf16`` opens no ONNX Runtime session: PyTorch eager and OpenVINO bf16 only,
the two rows ``danet-edge bench GRAPH -r CKPT --backend openvino-bf16 --threads 2`` times (each entry alone, one
after the other); ``danet_edge/bench/run.py`` says what else differs.

How it compares with ``danet-edge bench``. This script (``--rows openvino-bf16 --graph NAME=GRAPH --checkpoint CKPT``), set
beside ``bench GRAPH -r CKPT --backend openvino-bf16 --threads 2 --warmup 2 --warmup-s 0 --runs 7 --duration 0``:
the same in both are the backends (``open_backend``: the eager reference at the graph's size, batch 1; the graph
on OpenVINO bf16), the threads (2: PyTorch's ``set_num_threads`` and OpenVINO's ``INFERENCE_NUM_THREADS``; bench
leaves each library's default without ``--threads``, the script runs 2), denormals flushed (one process each),
2 untimed runs, the median (bench's p50) of the timed runs, and the speed-up (eager median / graph median).
What differs:

* per-frame work: the script times ``segment_frames`` on one 128x160 calibration scene (resize to the model size,
  ``predict``, labels resized back), bench ``predict`` on a scene at the model size; the resize and the label
  restore bench leaves out took 0.17 ms a frame (0.3 % of the 56 ms OpenVINO row of the R-50 256x512 INT8 graph
  on a 2-core AMX Xeon; nothing next to eager's 700+ ms);
* order: the script keeps every entry open and alternates them run by run, so each row pays what the runtime
  before it leaves spinning (PyTorch's OpenMP threads: a few % on that OpenVINO row; ONNX Runtime's, in its
  other ``--rows``: 58 -> 72 ms); bench opens one entry at a time and times all its runs before the next (the
  reference first), so drift in the machine's load hits the rows unevenly: compare on a quiet machine;
* the pixels: other synthetic scenes (the time does not depend on them once denormals are flushed); bench also
  opens each backend kind once before timing (``_prime``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_table import random_checkpoint  # noqa: E402

from danet_edge.data.calib import fill_calib_dir, load_calibration_set  # noqa: E402
from danet_edge.export.export import ExportConfig, export_model  # noqa: E402
from danet_edge.runtime.backends import open_backend, segment_frames  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", type=int, nargs=2, default=(256, 512))
    ap.add_argument("--checkpoint", type=Path, help="a trained checkpoint (default: random weights)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
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
    opened, refs = {}, {}
    for label, path, backend, opts in entries:
        try:
            opened[label] = open_backend(path, backend=backend, **opts)
        except Exception as e:  # noqa: BLE001 - a missing runtime is a row, not a crash
            print(f"{label}: skipped ({e})")
    for label, b in opened.items():
        refs[label] = segment_frames(b, [frame])[0]
        segment_frames(b, [frame])  # warm-up
    times: dict[str, list[float]] = {k: [] for k in opened}
    for _ in range(args.runs):  # alternate so drift in machine load hits every entry alike
        for label, b in opened.items():
            t0 = time.perf_counter()
            segment_frames(b, [frame])
            times[label].append(time.perf_counter() - t0)
    base = statistics.median(times["PyTorch eager FP32"]) if "PyTorch eager FP32" in times else None
    ref = refs.get("PyTorch eager FP32")
    print(f"\n{args.backbone} {size[0]}x{size[1]}, batch 1, {args.threads} threads, median of {args.runs} "
          f"(alternating), agreement with PyTorch on one synthetic scene\n")
    print("| entry | runs on | p50 ms | vs eager FP32 | agreement % |\n|---|---|---|---|---|")
    for label, b in opened.items():
        med = statistics.median(times[label]) * 1e3
        agree = 100.0 * float((refs[label] == ref).mean()) if ref is not None else float("nan")
        speed = f"{base * 1e3 / med:.2f}x" if base else "-"
        print(f"| {label} | {b.provider} | {med:.0f} | {speed} | {agree:.2f} |")
        b.close()


if __name__ == "__main__":
    main()
