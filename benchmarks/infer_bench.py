"""End-to-end FPS of ``danet-edge infer`` against model-only FPS (ONNX Runtime, CPU) on a CamVid sequence.

The CamVid val frames (360x480, name order) are written to a temporary mp4; the model is
``runs/camvid_r18/best.pt`` exported with ``danet_edge.export.export`` when it exists, else a ResNet-18
DANet with random weights (11 classes) exported here. Model-only = ``backend.predict`` on frames
already at the model size (no decode, resize, overlay or encode). End-to-end = the threaded
pipeline with decode, resize in and out, overlay and mp4 encode. The pipeline hides decode and
encode when end-to-end FPS is close to model-only FPS.

Run: ``nice -n 10 .venv/bin/python benchmarks/infer_bench.py [--frames 60] [--size 192 256]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from danet_edge.model.checkpoint import load_model  # noqa: E402
from danet_edge.export.fp32 import export_onnx  # noqa: E402
from danet_edge.data.preprocess import resize_image  # noqa: E402
from danet_edge.runtime.backends import open_backend  # noqa: E402
from danet_edge.infer.config import InferConfig
from danet_edge.infer.pipeline import run_pipeline
from danet_edge.infer.sources import open_source  # noqa: E402

CAMVID = ROOT.parent / "shared" / "datasets" / "camvid"


def camvid_mp4(out: Path, n: int) -> tuple[Path, int]:
    files = sorted((CAMVID / "val").glob("*.png"))[:n]
    if not files:
        raise SystemExit(f"no CamVid val frames under {CAMVID / 'val'}")
    first = cv2.imread(str(files[0]))
    h, w = first.shape[:2]
    wr = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (w, h))
    for f in files:
        wr.write(cv2.imread(str(f)))
    wr.release()
    return out, len(files)


def model_onnx(tmp: Path, size: tuple[int, int]) -> tuple[Path, str]:
    best = ROOT / "runs" / "camvid_r18" / "best.pt"
    if best.is_file():
        lm = load_model(best)
        hw = tuple(lm.data.get("image_size") or size)
        what = f"runs/camvid_r18/best.pt exported at {hw[0]}x{hw[1]}"
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import make_tiny_checkpoint

        ckpt = make_tiny_checkpoint(tmp / "r18.pt", num_classes=11, image_size=size)
        lm, hw = load_model(ckpt), size
        what = f"ResNet-18 DANet, random weights, 11 classes, exported here at {hw[0]}x{hw[1]}"
    out = tmp / "model.onnx"
    export_onnx(lm, out, hw, batch=1, tolerance=1e-3)
    return out, what


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", type=int, nargs=2, default=(192, 256), metavar=("H", "W"))
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = default)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="infer-bench-") as tmp_s:
        tmp = Path(tmp_s)
        video, n = camvid_mp4(tmp / "camvid_val.mp4", args.frames)
        onnx, what = model_onnx(tmp, tuple(args.size))
        frames = list(open_source(video))
        with open_backend(onnx, providers=["cpu"], threads=args.threads) as b:
            fitted = [resize_image(f, b.manifest.image_size) for f in frames]
            for f in fitted[:3]:
                b.predict(f[None])  # warm-up

            def model_only() -> float:
                t0 = time.perf_counter()
                for f in fitted:
                    b.predict(f[None])
                return len(fitted) / (time.perf_counter() - t0)

            before = model_only()
            run_pipeline(b, open_source(video), InferConfig(out_dir=tmp / "warm", max_frames=3))
            s = run_pipeline(b, open_source(video), InferConfig(out_dir=tmp / "out", save_video=True),
                             model_name=str(onnx))
            after = model_only()  # measured on both sides of the pipeline run: the machine is shared
            model_fps = (before + after) / 2
    print(f"model: {what}; source: {n} CamVid val frames 360x480 as mp4; ONNX Runtime CPU, batch 1")
    print(f"{'':24s} {'FPS':>8s}")
    print(f"{'model only (predict)':24s} {model_fps:8.2f}   (before {before:.2f}, after {after:.2f})")
    print(f"{'end to end (pipeline)':24s} {s.fps:8.2f}   ({100 * s.fps / model_fps:.1f} % of model-only)")
    print(f"{'stage':12s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for name, st in [*s.stages.items(), ("end-to-end", s.end_to_end)]:
        print(f"{name:12s} {st['p50_ms']:8.2f} {st['p99_ms']:8.2f}")


if __name__ == "__main__":
    main()
