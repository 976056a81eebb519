"""Host work per frame around a TensorRT engine: a logits graph against a fused-I/O graph.

What the TensorRT backend does on the CPU for each frame besides ``execute_async_v3`` (runtime/trt_backend.py,
runtime/trt_runner.py), with the package's own functions, side by side in one run:

* logits graph (input ``(1, 3, H, W) float32``, output ``(1, K, H, W) float32``): ``frames.model_inputs``
  (normalise, HWC -> CHW), the copy into the page-locked input buffer, the copy of the logits out of the output
  buffer, and the argmax over K classes (``TrtBackend._forward``);
* fused-I/O graph (input ``(1, H, W, 3) uint8``, output ``(1, H, W) int32``, normalisation and ArgMax in the
  graph): ``frames.model_inputs`` (a stack), the copy in, the class map out and its cast to int64.

The resize to the model size is the same for both and is left out. Device transfers are not timed (on a
Jetson the page-locked buffers are shared memory). Prints a table; medians of ``--runs`` frames.

    python benchmarks/host_io.py --size 512 1024 --classes 19
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import numpy as np

from danet_edge.data.frames import model_inputs


def _median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"))
    ap.add_argument("--classes", type=int, default=19)
    ap.add_argument("--runs", type=int, default=30)
    a = ap.parse_args()
    h, w, k = a.size[0], a.size[1], a.classes
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (h, w, 3), np.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    logits_m = SimpleNamespace(image_size=(h, w), batch_size=1, input_dtype="float32", mean=mean, std=std)
    fused_m = SimpleNamespace(image_size=(h, w), batch_size=1, input_dtype="uint8", mean=mean, std=std)
    in_f32, out_f32 = np.empty((1, 3, h, w), np.float32), rng.standard_normal((1, k, h, w), dtype=np.float32)
    in_u8, out_i32 = np.empty((1, h, w, 3), np.uint8), rng.integers(0, k, (1, h, w), dtype=np.int32)

    rows = []
    for name, m, buf_in, buf_out, post in (
            ("logits graph", logits_m, in_f32, out_f32, lambda o: o.astype(np.float32, copy=False).argmax(1)),
            ("fused-I/O graph", fused_m, in_u8, out_i32, lambda o: o.astype(np.int64, copy=False))):
        pre = _median_ms(lambda: np.copyto(buf_in, model_inputs([frame], m)[0], casting="unsafe"), a.runs)
        out = _median_ms(lambda: buf_out.copy(), a.runs)
        arg = _median_ms(lambda: post(buf_out.copy()), a.runs) - out
        rows.append((name, pre, out, max(arg, 0.0), buf_in.nbytes / 2**20, buf_out.nbytes / 2**20))
    print(f"host work per frame at {h}x{w}, {k} classes (ms, median of {a.runs}; CPU: this machine)")
    print(f"| graph | input prep + copy in | copy out | argmax / cast | total ms | in MiB | out MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, pre, out, arg, mi, mo in rows:
        print(f"| {name} | {pre:.2f} | {out:.2f} | {arg:.2f} | {pre + out + arg:.2f} | {mi:.1f} | {mo:.1f} |")
    t0, t1 = (sum(r[1:4]) for r in rows)
    print(f"fused I/O saves {t0 - t1:.1f} ms of host time per frame ({t0 / max(t1, 1e-9):.0f}x less)")


if __name__ == "__main__":
    main()
