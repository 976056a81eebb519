"""PAM's own output under each numerics a device may run, against FP32: one table (PyTorch, CPU).

    nice .venv/bin/python benchmarks/pam_numerics.py --checkpoint runs/camvid_r18/best.pt \
        --data ../shared/datasets/camvid --imgsz 360 480 --limit 24

The class maps of a whole graph hide PAM's numerics behind everything after it; this compares PAM's output
``V softmax(Q^T K)^T`` (before ``gamma``) directly, on the features the checkpoint computes for real images:

* ``fp16 unfused``: Q, K, V rounded to FP16, the energy stored in FP16 (an unfused FP16 engine writes it so), the
  softmax in FP32 of that, P rounded to FP16, P V in FP32 rounded to FP16;
* ``fp16 fused kernel``: the same but the energy kept in FP32 (TensorRT's fused attention accumulates ``Q K^T`` and
  the softmax in FP32 inside the kernel: developer guide, "Multi-Head Attention Fusion"; a model, not the kernel);
  The pre-issue-30 FP16 graph (energy and softmax an FP32 island from FP16 inputs, P cast to FP16) computes the same
  values as the fused kernel's model here.

Per row: relative L2 of PAM's output against FP32 and the share of its positions whose largest channel agrees;
the largest ``|Q^T K|`` seen, against FP16's 65504.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch

    from danet_edge.data.datasets import build_dataset
    from danet_edge.data.preprocess import preprocess
    from danet_edge.model.checkpoint import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="CamVid folder (val images)")
    p.add_argument("--imgsz", type=int, nargs=2, default=[360, 480])
    p.add_argument("--limit", type=int, default=24)
    a = p.parse_args()
    model = load_model(a.checkpoint).model.eval()
    ds = build_dataset("camvid", a.data, "val", a.limit)
    pam = model.head.sa
    feats: list[torch.Tensor] = []
    handle = pam.register_forward_hook(lambda m, args, out: feats.append(args[0].detach()))
    with torch.no_grad():
        for i in range(len(ds)):
            model(torch.from_numpy(preprocess([ds[i][0]], tuple(a.imgsz))))
    handle.remove()
    h16 = torch.float16

    def pam_out(x: torch.Tensor, mode: str) -> torch.Tensor:
        q = pam.query_conv(x).flatten(2).transpose(1, 2)  # (N, L, d)
        k = pam.key_conv(x).flatten(2)  # (N, d, L)
        v = pam.value_conv(x).flatten(2)  # (N, C, L)
        if mode == "fp32":
            return torch.bmm(v, torch.softmax(torch.bmm(q, k), -1).transpose(1, 2))
        q, k, v = (t.to(h16).float() for t in (q, k, v))
        energy = torch.bmm(q, k)
        if mode == "unfused":
            energy = energy.to(h16).float()
        p_ = torch.softmax(energy, -1).to(h16).float()
        out = torch.bmm(v, p_.transpose(1, 2))
        return out.to(h16).float()

    rows: dict[str, list[np.ndarray]] = {"fp32": [], "unfused": [], "fused": []}
    top = 0.0
    with torch.no_grad():
        for x in feats:
            q = pam.query_conv(x).flatten(2).transpose(1, 2)
            top = max(top, float(torch.bmm(q, pam.key_conv(x).flatten(2)).abs().max()))
            for mode in rows:
                rows[mode].append(pam_out(x, mode).numpy())
    ref = np.concatenate(rows["fp32"])
    print(f"PAM output vs FP32, {a.checkpoint.name}, {a.imgsz[0]}x{a.imgsz[1]}, CamVid val ({len(ds)} images); "
          f"largest |Q^T K| {top:.1f} (FP16 max 65504, {65504 / top:.0f}x)")
    print(f"{'numerics':22s} {'rel L2':>10s} {'argmax agree %':>15s}")
    names = {"unfused": "fp16 unfused", "fused": "fp16 fused kernel"}
    for mode, label in names.items():
        got = np.concatenate(rows[mode])
        rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        agree = 100.0 * float((got.argmax(1) == ref.argmax(1)).mean())
        print(f"{label:22s} {rel:10.3e} {agree:15.4f}")


if __name__ == "__main__":
    main()
