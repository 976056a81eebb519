"""PAM's forms in ONNX Runtime (CPU): measured peak memory and latency of one frame beside the memory model.

For one DANet (random weights) and size, traces the FP32 graph (logits) in each form asked, then runs each in
a fresh process: peak resident memory of that process (``VmHWM``), less what the process held once ONNX Runtime
was imported (the baseline), against ``graph.memory.memory_estimate`` (weights + activation peak), and the
latency of one frame (median of ``--runs``, after one untimed run unless ``--runs 1``). The frame is a synthetic
street scene (real-looking inputs leave PAM's map mostly denormal; ONNX Runtime is set to flush them, as every
backend here), and the session runs without ONNX Runtime's memory pattern, as export's verification does.

    nice .venv/bin/python benchmarks/attention_memory.py --backbone resnet50 --imgsz 512 1024 --runs 3
    nice .venv/bin/python benchmarks/attention_memory.py --backbone resnet50 --imgsz 1024 2048 --runs 1

``chunked`` takes the chunk count ``export --attention auto`` would choose for ``--jetson`` (at least ``forms.MIN_AUTO_CHUNKS``, 4),
``chunked:K`` K chunks. Prints one table; forms side by side in one run.
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
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, sys, time
import numpy as np

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024.0
    return 0.0

import onnxruntime as ort
from danet_edge.runtime.ort_backend import session_options
base = status("VmRSS")
path, runs, image = sys.argv[1], int(sys.argv[2]), sys.argv[3]
# denormals flushed, as every backend; no memory pattern, as export's verification
s = ort.InferenceSession(path, session_options("fp32", mem_pattern=False), providers=["CPUExecutionProvider"])
session = status("VmRSS")
inp = s.get_inputs()[0]
x = np.load(image)  # one synthetic street scene, normalised as the model expects
times = []
for i in range(runs + (1 if runs > 1 else 0)):
    t0 = time.perf_counter()
    s.run(None, {inp.name: x})
    times.append((time.perf_counter() - t0) * 1e3)
times = times[1:] if runs > 1 else times
print(json.dumps({"base_mib": base, "session_mib": session, "peak_mib": status("VmHWM"),
                  "ms": float(np.median(times))}))
"""


def main() -> None:
    import torch

    from danet_edge.export.attention import chunks_needed
    from danet_edge.export.fp32 import trace_onnx
    from danet_edge.export.config import ExportConfig
    from danet_edge.graph.boards import DEFAULT_BOARD
    from danet_edge.model.forms import MAX_CHUNKS, MIN_AUTO_CHUNKS
    from danet_edge.graph.memory import memory_estimate
    import numpy as np

    from danet_edge.data.frames import model_inputs
    from danet_edge.export.fp32 import synthetic_frames
    from danet_edge.model.checkpoint import checkpoint_manifest, load_model, save_checkpoint
    from danet_edge.model.config import ModelConfig
    from danet_edge.model.danet import build_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--imgsz", type=int, nargs=2, default=[512, 1024])
    p.add_argument("--forms", nargs="+", default=["explicit", "chunked"],
                   help="explicit, heads, chunked (the count export picks for --jetson) or chunked:K")
    p.add_argument("--jetson", default=DEFAULT_BOARD)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    h, w = a.imgsz
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=a.backbone, num_classes=19))
    model.head.sa.gamma.data.fill_(0.5)
    model.head.sc.gamma.data.fill_(0.3)
    rows = []
    with tempfile.TemporaryDirectory(prefix="danet-att-") as tmp:
        ckpt = save_checkpoint(Path(tmp) / "m.pt", {"model": model.state_dict(), "model_config": model.config.to_dict(),
                                                    "data": {"image_size": [h, w]}})
        loaded = load_model(ckpt)
        positions = (h // 8) * (w // 8)
        image = Path(tmp) / "scene.npy"
        manifest = checkpoint_manifest(loaded, (h, w), 1)
        np.save(image, next(iter(model_inputs(synthetic_frames(1, (h, w), 0), manifest, fused=False))))
        for spec in a.forms:
            t0 = time.perf_counter()
            form, _, given = spec.partition(":")
            k = int(given) if given else None
            if form == "chunked" and k is None:  # what export --attention auto picks for --jetson
                budget = ExportConfig(jetson=a.jetson).memory_budget_mib()
                probe = memory_estimate(trace_onnx(loaded, (h, w), 1, 17, "explicit"))
                k = max(MIN_AUTO_CHUNKS, chunks_needed(probe, 1, positions, budget) or MAX_CHUNKS)
            graph = trace_onnx(loaded, (h, w), 1, 17, form, k)
            trace_s = time.perf_counter() - t0
            est = memory_estimate(graph)
            path = Path(tmp) / f"{form}.onnx"
            import onnx

            onnx.save(graph, str(path))
            del graph
            out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(a.runs), str(image)], capture_output=True,
                                 text=True,
                                 cwd=ROOT, check=True)
            m = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((form, k or 1, est, m, trace_s))
            print(f"# {form}: traced in {trace_s:.0f} s", file=sys.stderr, flush=True)
    print(f"DANet {a.backbone} FP32 {h}x{w}, N = {positions} positions, ONNX Runtime CPU, one frame")
    print(f"{'form':9s} {'chunks':>6s} {'map MiB':>8s} {'est. act.':>9s} {'run MiB':>8s} {'run/est':>7s} "
          f"{'est. total':>10s} {'measured':>9s} {'meas/est':>8s} {'session':>8s} {'peak RSS':>9s} {'ms':>8s}")
    for form, k, est, m, _ in rows:
        measured = m["peak_mib"] - m["base_mib"]
        run = m["peak_mib"] - m["session_mib"]
        print(f"{form:9s} {k:6d} {est.attention.map_mib:8.0f} {est.activations_mib:9.0f} {run:8.0f} "
              f"{run / est.activations_mib:7.2f} {est.total_mib:10.0f} {measured:9.0f} {measured / est.total_mib:8.2f} "
              f"{m['session_mib'] - m['base_mib']:8.0f} {m['peak_mib']:9.0f} {m['ms']:8.0f}")
    if len(rows) > 1:
        ref = rows[0]
        for form, _, _, m, _ in rows[1:]:
            print(f"{form} vs {ref[0]}: peak {(m['peak_mib'] - m['base_mib']) / (ref[3]['peak_mib'] - ref[3]['base_mib']):.2f}x, "
                  f"latency {m['ms'] / ref[3]['ms']:.3f}x")
    print("est. act. / est. total = graph.memory.memory_estimate's activation peak / weights + activations; run = peak "
          "RSS less RSS once the session was made (what running the frame added); measured = peak RSS less RSS after "
          "importing ONNX Runtime; session = what making the session added (weights, as ONNX Runtime holds them)")


if __name__ == "__main__":
    main()
