"""Export figures: time per precision, graph size, agreement with FP32 and mIoU on CamVid val, and ONNX
Runtime CPU latency against PyTorch eager FP32, in one run; then DANet R-50 256x512 PyTorch FP32 vs ORT
INT8 (cpu target).

    nice -n 10 .venv/bin/python benchmarks/export_bench.py --limit 20 > runs/export_bench.txt 2>&1

Uses runs/camvid_r18/best.pt when present, else a random-weight ResNet-18 DANet with 11 classes (said in
the output). Latency: median of ``--runs`` timed runs after one warm-up, batch 1, preprocessing excluded.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from danet_edge.data.calib import fill_calib_dir, load_calibration_set  # noqa: E402
from danet_edge.export.quantize import quantize_int8  # noqa: E402
from danet_edge.model.checkpoint import load_model  # noqa: E402
from danet_edge.data.datasets import build_dataset  # noqa: E402
from danet_edge.export.export import ExportConfig, export_model  # noqa: E402
from danet_edge.export.fp32 import export_onnx, ort_session as _ort_session  # noqa: E402
from danet_edge.core.metrics import ConfusionMatrix  # noqa: E402
from danet_edge.data.preprocess import preprocess, resize_labels  # noqa: E402

CAMVID = ROOT.parent / "shared" / "datasets" / "camvid"


def median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=20, help="CamVid val images for agreement / mIoU")
    ap.add_argument("--calib-count", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--skip-r50", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="export-bench-"))
    ckpt = ROOT / "runs" / "camvid_r18" / "best.pt"
    if ckpt.is_file():
        print(f"checkpoint: {ckpt} (trained on CamVid)")
    else:
        from conftest import make_tiny_checkpoint

        ckpt = make_tiny_checkpoint(work / "r18_random.pt", num_classes=11, image_size=(360, 480))
        print("checkpoint: random-weight DANet ResNet-18, 11 classes (runs/camvid_r18/best.pt not there yet)")
    size = (360, 480)
    calib = fill_calib_dir("camvid", CAMVID, args.calib_count, work / "calib")
    rows = []
    t = time.perf_counter()
    res = export_model(ckpt, ExportConfig(imgsz=size, fp16=True, int8=True, calib=calib, out=work / "out"))
    rows += [(a.manifest.precision + ("/trt" if a.manifest.precision == "int8" else ""), a) for a in res.artifacts]
    cpu = export_model(ckpt, ExportConfig(imgsz=size, int8=True, calib=calib, target="cpu", out=work / "out"))
    rows.append(("int8/cpu", cpu.artifacts[-1]))
    print(f"total export time (FP32+FP16+INT8 trt): {time.perf_counter() - t:.1f} s; "
          f"CPU target: {cpu.artifacts[-1].seconds:.1f} s for its INT8 step")

    loaded = load_model(ckpt)
    val = build_dataset("camvid", CAMVID, "val", limit=args.limit)
    sessions = {name: _ort_session(a.path, optimize=a.manifest.precision != "fp16") for name, a in rows}
    cms = {name: ConfusionMatrix(11, 11) for name in ["torch"] + list(sessions)}
    agree = {name: [] for name in sessions}
    for i in range(len(val)):
        image, mask = val[i]
        x = preprocess([image], size)
        target = resize_labels(mask, size)
        with torch.no_grad():
            ref = loaded.model(torch.from_numpy(x)).numpy().argmax(1)
        cms["torch"].update(ref, target[None])
        fp32 = None
        for name, sess in sessions.items():
            pred = sess.run(None, {"images": x})[0].argmax(1)
            fp32 = pred if name == "fp32" else fp32
            cms[name].update(pred, target[None])
            agree[name].append(float((pred == fp32).mean()))

    x = preprocess([val[0][0]], size)
    with torch.no_grad():
        torch_ms = median_ms(lambda: loaded.model(torch.from_numpy(x)), args.runs)
    print(f"\nDANet R-18 at {size[0]}x{size[1]}, CamVid val {len(val)} images, 2 CPU threads")
    print(f"{'graph':10s} {'export s':>9s} {'MiB':>7s} {'agree %':>8s} {'mIoU %':>7s} {'dmIoU':>7s} {'ORT ms':>8s} {'vs torch':>8s}")
    print(f"{'torch fp32':10s} {'-':>9s} {'-':>7s} {'-':>8s} {cms['torch'].miou() * 100:7.2f} {'-':>7s} {torch_ms:8.0f} {1.0:7.2f}x")
    base = cms["fp32"].miou()
    for name, a in rows:
        ms = median_ms(lambda s=sessions[name]: s.run(None, {"images": x}), args.runs)
        print(f"{name:10s} {a.seconds:9.1f} {a.path.stat().st_size / 2**20:7.1f} {np.mean(agree[name]) * 100:8.3f} "
              f"{cms[name].miou() * 100:7.2f} {(cms[name].miou() - base) * 100:+7.2f} {ms:8.0f} {torch_ms / ms:7.2f}x")

    if args.skip_r50:
        return
    from danet_edge.model.checkpoint import save_checkpoint
    from danet_edge.model.config import ModelConfig
    from danet_edge.model.danet import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet50", num_classes=19)
    model = build_model(cfg).eval()
    save_checkpoint(work / "r50.pt", {"model": model.state_dict(), "model_config": cfg.to_dict(),
                                      "data": {"image_size": [256, 512]}})
    r50 = load_model(work / "r50.pt")
    fp32 = export_onnx(r50, work / "r50" / "model.onnx", (256, 512)).path
    small = load_calibration_set(calib, count=8)
    q = quantize_int8(fp32, small, work / "r50" / "model_int8_cpu.onnx", "cpu", "minmax")
    x = preprocess([val[0][0]], (256, 512))
    with torch.no_grad():
        t_ms = median_ms(lambda: r50.model(torch.from_numpy(x)), 3)
    s32, s8 = _ort_session(fp32), _ort_session(q.path)
    o_ms = median_ms(lambda: s32.run(None, {"images": x}), 3)
    q_ms = median_ms(lambda: s8.run(None, {"images": x}), 3)
    print(f"\nDANet R-50 256x512 random weights, 19 classes: PyTorch FP32 {t_ms:.0f} ms, ORT FP32 {o_ms:.0f} ms, "
          f"ORT INT8 cpu target {q_ms:.0f} ms -> {t_ms / q_ms:.2f}x vs PyTorch")


if __name__ == "__main__":
    main()
