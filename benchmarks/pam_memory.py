"""Peak memory and time of DANet's position attention (PAM): SDPA path against the explicit one.

Each configuration runs in a fresh subprocess so that its peak RSS (CPU) or peak CUDA allocation (GPU)
is its own. PAM alone at the head's width (C = 512 for ResNet-50/101), feature map (H/8, W/8).

    python benchmarks/pam_memory.py [--device cpu|cuda] [--sizes 512x1024 1024x2048]

Prints a table: input size, N = (H/8)(W/8), implementation, peak memory (MiB), time (ms).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
from danet_edge.model import PAM
h, w, impl, device, channels, dtype = sys.argv[1:7]
h, w, channels = int(h), int(w), int(channels)
dt = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
torch.manual_seed(0)
pam = PAM(channels, impl).to(device, dt).eval()
pam.gamma.data.fill_(0.5)
x = torch.randn(1, channels, h // 8, w // 8, device=device, dtype=dt)
with torch.inference_mode():
    pam(x)  # warm-up (kernel selection)
    if device == "cuda":
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    y = pam(x)
    if device == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - t) * 1e3
if device == "cuda":
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB, whole process
print(json.dumps({"peak_mib": peak, "ms": ms, "finite": bool(torch.isfinite(y).all())}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sizes", nargs="+", default=["512x1024", "1024x2048"])
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    args = ap.parse_args()
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    print(f"PAM (C={args.channels}, batch 1, {args.dtype}) on {args.device}; peak = "
          + ("CUDA allocation above the input" if args.device == "cuda" else "process max RSS"))
    print(f"{'input':>10} {'N':>6} {'attention map MiB':>17} {'impl':>9} {'peak MiB':>9} {'ms':>9}")
    for size in args.sizes:
        h, w = (int(v) for v in size.split("x"))
        n = (h // 8) * (w // 8)
        for impl in ("explicit", "sdpa"):
            out = subprocess.run([sys.executable, "-c", CHILD, str(h), str(w), impl, args.device,
                                  str(args.channels), args.dtype], capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(f"{size:>10} {n:>6} {'':>17} {impl:>9} failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{size:>10} {n:>6} {n * n * 4 / 2**20:>17.0f} {impl:>9} {r['peak_mib']:>9.0f} {r['ms']:>9.1f}")


if __name__ == "__main__":
    main()
