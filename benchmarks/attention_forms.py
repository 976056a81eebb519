"""Exactness of PAM's forms end to end: each form's FP32, FP16 and INT8 graphs (``danet-edge export --attention``)
on real images in ONNX Runtime, against the explicit (paper's) form: one table.

    nice .venv/bin/python benchmarks/attention_forms.py --checkpoint runs/camvid_r18/best.pt \
        --data ../shared/datasets/camvid --imgsz 360 480
    nice .venv/bin/python benchmarks/attention_forms.py --backbone resnet101 --imgsz 360 480 --limit 16 --fp32-only

Per form and precision: relative L2 of the logits and the share of equal class maps against the explicit form's
FP32 graph, and (FP16 / INT8) the agreement with the form's own FP32 graph beside the explicit form's figure
(the drop must stay within 0.05 points). Images: CamVid val (``--data``) resized to the graph's size, else
synthetic street scenes; calibration: CamVid train (class-balanced, ``calib fill``) or synthetic scenes.

A graph whose PAM a fused kernel takes (heads / attention-op in FP16) gets a second row, ``+fused``: the same graph
with its attention computed as TensorRT's fused kernel does (``graph.fused_attention``: Q K^T and the softmax in
FP32, P in FP16, P V accumulated in FP32; modelled from TensorRT's documents), what a device runs when the build
fuses it. ``--islanded`` adds the heads form's FP16 graph with PAM's energy and softmax kept in FP32 (the form
before issue 30, which TensorRT cannot fuse). The measured PAM energy per form is printed from the manifests.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch

    from danet_edge.core.manifest import read_manifest
    from danet_edge.data.calib import fill_calib_dir
    from danet_edge.data.datasets import build_dataset
    from danet_edge.data.frames import model_inputs
    from danet_edge.data.preprocess import resize_image
    from danet_edge.export.export import ExportConfig, export_model
    from danet_edge.export.fp32 import ort_session
    from danet_edge.model.checkpoint import save_checkpoint
    from danet_edge.model.config import ModelConfig
    from danet_edge.model.danet import build_model
    from danet_edge.model.forms import EXPORT_FORMS
    from danet_edge.runtime.ort_backend import holds_fp16

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="default: random weights of --backbone")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--data", type=Path, default=None, help="CamVid folder (val images, train for calibration)")
    p.add_argument("--imgsz", type=int, nargs=2, default=[360, 480])
    p.add_argument("--limit", type=int, default=None, help="images (default: all of CamVid val, or 16 synthetic)")
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--fp32-only", action="store_true")
    p.add_argument("--no-int8", action="store_true", help="FP32 and FP16 only (no calibration)")
    p.add_argument("--islanded", action="store_true", help="add the heads FP16 graph with PAM's energy in FP32")
    p.add_argument("--verify-images", type=int, default=None, help="export's verification images (PAM energy)")
    p.add_argument("--forms", nargs="+", default=list(EXPORT_FORMS), choices=EXPORT_FORMS,
                   help="forms beside explicit (the reference, always run)")
    a = p.parse_args()
    size = tuple(a.imgsz)
    with tempfile.TemporaryDirectory(prefix="danet-forms-") as tmp:
        root = Path(tmp)
        ckpt = a.checkpoint
        if ckpt is None:
            torch.manual_seed(0)
            model = build_model(ModelConfig(backbone=a.backbone, num_classes=11))
            model.head.sa.gamma.data.fill_(0.5)
            model.head.sc.gamma.data.fill_(0.3)
            ckpt = save_checkpoint(root / "random.pt", {"model": model.state_dict(),
                                                        "model_config": model.config.to_dict(),
                                                        "data": {"image_size": list(size)}})
        if a.data is not None:
            ds = build_dataset("camvid", a.data, "val", a.limit)
            frames, source = [ds[i][0] for i in range(len(ds))], f"CamVid val ({len(ds)} images)"
            calib = fill_calib_dir("camvid", a.data, 64, root / "calib") if not (a.fp32_only or a.no_int8) else None
        else:
            from danet_edge.data.synthetic import render_scene

            n = a.limit or 16
            frames = [render_scene(np.random.default_rng(i), *size)[0] for i in range(n)]
            source = f"synthetic street scenes ({n})"
            calib = fill_calib_dir("synthetic", None, 32, root / "calib") if not (a.fp32_only or a.no_int8) else None
        frames = [resize_image(f, size) for f in frames]
        graphs: dict[tuple[str, str], Path] = {}
        for form in dict.fromkeys(["explicit", *a.forms]):
            res = export_model(ckpt, ExportConfig(imgsz=size, attention=form, fused_io=False, reference_images=0,
                                                  attention_chunks=a.chunks if form == "chunked" else None,
                                                  fp16=not a.fp32_only, int8=calib is not None, calib=calib,
                                                  calib_size=None if calib is None else (64 if a.data is not None else 32),
                                                  verify_images=a.verify_images,
                                                  memory_limit_mib=1e6, out=root / form))
            for art in res.artifacts:
                graphs[(form, art.manifest.precision)] = art.path
            energy = res.artifacts[0].manifest.extra["attention"]["energy"]
            print(f"# exported {form}: PAM energy {energy['max_abs']} on {energy['images']} images; {energy['reason']}",
                  file=sys.stderr, flush=True)
        if a.islanded and ("heads", "fp32") in graphs and not a.fp32_only:
            import shutil

            import onnx

            from danet_edge.export.fp16 import convert_fp16
            from danet_edge.graph.precision import default_fp32_islands

            src = graphs[("heads", "fp32")]
            out = root / "heads-islanded" / "model_fp16.onnx"
            out.parent.mkdir()
            convert_fp16(src, out, fp32_nodes=default_fp32_islands(onnx.load(str(src)), pam_energy=True))
            islanded = onnx.load(str(out))  # the heads FP16 graph's manifest, embedded and beside it
            del islanded.metadata_props[:]
            islanded.metadata_props.extend(onnx.load(str(graphs[("heads", "fp16")])).metadata_props)
            onnx.save(islanded, str(out))
            shutil.copy(graphs[("heads", "fp16")].with_suffix(".onnx.json"), out.with_suffix(".onnx.json"))
            graphs[("heads-isl", "fp16")] = out

        def run(path: Path, fused: bool = False) -> np.ndarray:
            import onnx

            from danet_edge.graph.fused_attention import fused_attention_numerics

            m = read_manifest(path)
            graph = fused_attention_numerics(onnx.load(str(path))) if fused else path
            s = ort_session(graph, m.precision, holds_fp16(m))
            return np.concatenate([s.run(None, {m.input_name: x})[0] for x in model_inputs(frames, m)])[:len(frames)]

        from danet_edge.graph.fused_attention import fusible_attentions

        outs = {}
        for (form, prec), path in graphs.items():
            outs[(form, prec)] = run(path)
            if prec != "fp32" and fusible_attentions(__import__("onnx").load(str(path))):
                outs[(form + "+fused", prec)] = run(path, fused=True)
        for (form, prec) in list(outs):
            if (form, "fp32") not in outs:
                outs[(form, "fp32")] = outs[(form.split("+")[0].replace("-isl", ""), "fp32")]
    ref = outs[("explicit", "fp32")]
    print(f"PAM forms, {Path(str(ckpt)).name if a.checkpoint else a.backbone + ' random weights'}, {size[0]}x{size[1]}, "
          f"{source}, ONNX Runtime CPU (chunked: {a.chunks} chunks)")
    print(f"{'form':12s} {'prec':5s} {'rel L2 vs explicit FP32':>24s} {'equal maps %':>13s} {'agree w/ own FP32 %':>20s} "
          f"{'explicit same prec %':>21s} {'drop (points)':>14s}")
    for (form, prec), out in outs.items():
        rel = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
        equal = 100.0 * float((out.argmax(1) == ref.argmax(1)).mean())
        own = 100.0 * float((out.argmax(1) == outs[(form, "fp32")].argmax(1)).mean())
        base = 100.0 * float((outs[("explicit", prec)].argmax(1) == ref.argmax(1)).mean())
        if prec == "fp32" and ("+" in form or "-isl" in form):
            continue
        drop = f"{base - own:14.4f}" if prec != "fp32" else f"{'-':>14s}"
        print(f"{form:12s} {prec:5s} {rel:24.3e} {equal:13.4f} {own:20.4f} {base:21.4f} {drop}")


if __name__ == "__main__":
    main()
