"""Class maps of each TensorRT engine against its ONNX graph (ONNX Runtime) on a data set's images.

    python benchmarks/engine_vs_onnx.py --dataset camvid --data CAMVID ENGINE [ENGINE ...]

Each ENGINE is compared with the ONNX it was built from (``tensorrt.source_onnx_sha256`` in its
manifest names it; the ONNX is looked for beside the engine). Prints one row per engine: images, pixel
agreement (%), pixels that differ, the engine's precision read from its layers and the layer counts.
On a device this measures TensorRT against ONNX Runtime; under ``tests/trt_standin/cli.py`` (no GPU)
the "engine" runs the same graph in ONNX Runtime, so the table checks the plumbing (buffers, dtypes,
addresses, pre/post-processing), not TensorRT's numerics.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from danet_edge.data.datasets import build_dataset
from danet_edge.core.manifest import read_manifest
from danet_edge.runtime.backends import open_backend, segment_frames
from danet_edge.core.utils import sha256_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engines", nargs="+", type=Path)
    ap.add_argument("--dataset", default="camvid")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--split", default="val")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    ds = build_dataset(args.dataset, args.data, args.split, limit=args.limit)
    n = len(ds)
    frames = [np.asarray(ds[i][0]) for i in range(n)]  # (H, W, 3) uint8 RGB
    print(f"{'engine':32s} {'TensorRT':10s} {'images':>6s} {'agreement %':>12s} {'differ px':>10s} "
          f"{'precision':>9s}  layers (int8/fp16/fp32/other)  s")
    for eng in args.engines:
        m = read_manifest(eng)
        want = m.tensorrt["source_onnx_sha256"]
        onnx = next((p for p in eng.parent.glob("*.onnx") if sha256_file(p) == want), None)
        if onnx is None:
            print(f"{eng.name:32s} source ONNX (sha256 {want[:12]}) not found beside it")
            continue
        t0 = time.perf_counter()
        with open_backend(eng) as be, open_backend(onnx) as bo:
            le, lo = segment_frames(be, frames), segment_frames(bo, frames)
        same = sum(int((a == b).sum()) for a, b in zip(le, lo))
        total = sum(a.size for a in le)
        c = m.precision_report["counts"]
        print(f"{eng.name:32s} {m.tensorrt['version']:10s} {n:6d} {100 * same / total:12.4f} {total - same:10d} "
              f"{m.precision:>9s}  {c['int8']}/{c['fp16']}/{c['fp32']}/{c['other']}  {time.perf_counter() - t0:.0f}")


if __name__ == "__main__":
    main()
