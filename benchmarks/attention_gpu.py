"""PAM's forms in PyTorch on a GPU: DANet R-50, FP32 / FP16, explicit vs SDPA vs chunked (vs heads), peak CUDA
memory and latency of one frame, and each form's error against the explicit FP32 reference: one table.

Prepared for a machine with a CUDA GPU and PyTorch but no TensorRT, lent rarely and briefly: the whole run is
under 5 minutes on one H100 / H200. On a CPU it runs tiny (R-18, 64x128), so that it is tested:

    .venv/bin/python benchmarks/attention_gpu.py                 # CUDA: 512x1024 and 1024x2048
    .venv/bin/python benchmarks/attention_gpu.py --tiny          # CPU smoke

Latency: median of ``--runs`` after ``--warmup`` (CUDA events on a GPU). Peak: ``torch.cuda.max_memory_allocated``
over one forward less the memory held before it (weights and input); on a CPU, the peak RSS growth is not
measured (``-``). A form that runs out of memory is listed as ``OOM`` and the run goes on.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch

    from danet_edge.model.config import ModelConfig
    from danet_edge.model.danet import build_model
    from danet_edge.model.forms import reference_chunks

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="R-18 at 64x128 (a CPU smoke run)")
    p.add_argument("--sizes", nargs="+", default=None, help="HxW, e.g. 512x1024 1024x2048")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args()
    cuda = torch.cuda.is_available() and not a.tiny
    device = torch.device("cuda" if cuda else "cpu")
    backbone = "resnet50" if cuda else "resnet18"
    sizes = [tuple(int(v) for v in s.split("x")) for s in (a.sizes or (["512x1024", "1024x2048"] if cuda else
                                                                       ["64x128"]))]
    runs, warmup = (a.runs, a.warmup) if cuda else (1, 0)
    dtypes = [("fp32", torch.float32), ("fp16", torch.float16)] if cuda else [("fp32", torch.float32)]
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, num_classes=19)).eval().to(device)
    model.head.sa.gamma.data.fill_(0.5)
    model.head.sc.gamma.data.fill_(0.3)
    rows = []
    for h, w in sizes:
        x = torch.randn(1, 3, h, w, device=device)
        positions = (h // 8) * (w // 8)
        forms = [("explicit", None), ("sdpa", None), ("chunked", reference_chunks(1, positions)), ("heads", None)]
        ref = None
        for dname, dtype in dtypes:
            for form, chunks in forms:
                model.set_attention(form, chunks)
                net = model.to(dtype)
                try:
                    with torch.inference_mode():
                        xin = x.to(dtype)
                        for _ in range(warmup):
                            net(xin)
                        if cuda:
                            torch.cuda.synchronize()
                            torch.cuda.reset_peak_memory_stats()
                            before = torch.cuda.memory_allocated()
                        times = []
                        for _ in range(runs):
                            if cuda:
                                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                                start.record()
                                out = net(xin)
                                end.record()
                                torch.cuda.synchronize()
                                times.append(start.elapsed_time(end))
                            else:
                                t0 = time.perf_counter()
                                out = net(xin)
                                times.append((time.perf_counter() - t0) * 1e3)
                        peak = (torch.cuda.max_memory_allocated() - before) / 2**20 if cuda else None
                        out = out.float()
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    rows.append((f"{h}x{w}", dname, form, chunks, "OOM", None, None, None))
                    continue
                if ref is None:
                    ref = out
                err = float((out - ref).norm() / ref.norm())
                agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
                rows.append((f"{h}x{w}", dname, form, chunks, peak, statistics.median(times), err, agree))
                del out
        model.to(torch.float32)
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"DANet {backbone} (random weights), PyTorch {torch.__version__} on {name}, batch 1, "
          f"median of {runs} after {warmup} warm-up")
    print(f"{'size':>10s} {'dtype':>5s} {'form':>9s} {'chunks':>6s} {'peak MiB':>9s} {'ms':>9s} {'rel L2':>9s} "
          f"{'agree %':>8s}")
    for size, dname, form, chunks, peak, ms, err, agree in rows:
        if peak == "OOM":
            print(f"{size:>10s} {dname:>5s} {form:>9s} {chunks or '-':>6} {'OOM':>9s}")
            continue
        print(f"{size:>10s} {dname:>5s} {form:>9s} {chunks or '-':>6} {'-' if peak is None else f'{peak:.0f}':>9s} "
              f"{ms:9.1f} {err:9.2e} {100 * agree:8.3f}")
    print("rel L2 / agree: logits against the explicit FP32 form at the same size (class maps equal, %)")


if __name__ == "__main__":
    main()
