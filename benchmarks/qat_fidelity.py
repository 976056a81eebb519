"""How exactly QAT's fake-quantized PyTorch model computes what the recipe's Q/DQ graph computes.

For each INT8 recipe: the QAT record of the checkpoint's PTQ graph (``export.qat_train.prepare_qat``) is attached
to the float model, and the logits of three things are compared with the graph's (ONNX Runtime, optimisations off,
as every danet-edge command runs it) on calibration images:

* the simulated model (fake quantization where the graph has Q/DQ),
* the float model (no quantization: what a missing simulation would leave),
* the same graph run with ONNX Runtime's optimisations on against off (the graph's own arithmetic noise floor;
  meaningless for the FP16 TensorRT form, which ONNX Runtime's optimiser breaks: docs/precision.md).

The ``int8-tensorrt`` recipe's graph computes FP16 outside its Q/DQ; its FP32-rest twin (the same Q/DQ, made from
the same ranges) is reported too, to separate placement from FP16 rounding.

    python benchmarks/qat_fidelity.py runs/camvid_r18/best.pt calib/ --images 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from danet_edge.data.calib import load_calibration_set  # noqa: E402
from danet_edge.data.preprocess import preprocess  # noqa: E402
from danet_edge.export.fp32 import ort_session  # noqa: E402
from danet_edge.export.qat import learned_ranges  # noqa: E402
from danet_edge.export.qat_train import prepare_qat  # noqa: E402
from danet_edge.export.quantize import quantize_int8  # noqa: E402
from danet_edge.export.recipes import get_recipe  # noqa: E402
from danet_edge.model.checkpoint import load_model  # noqa: E402
from danet_edge.model.fakequant import attach_qat  # noqa: E402


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("calib")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--calib-size", type=int, default=32)
    args = ap.parse_args()
    frames = list(load_calibration_set(args.calib, args.images, 1).frames())
    print("| graph | simulated vs graph (rel L2, agreement %) | float vs graph | graph, ORT optimisations on vs off |")
    print("|---|---|---|---|")
    for recipe in ("int8-tensorrt", "int8-cpu"):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            record = prepare_qat(args.checkpoint, recipe, args.calib, args.calib_size, work_dir=work)
            graphs = [(recipe, work / get_recipe(recipe).file_name, recipe == "int8-tensorrt")]
            if recipe == "int8-tensorrt":
                twin = work / "fp32_rest.onnx"
                quantize_int8(work / "model.onnx", None, twin, "tensorrt", high_precision="fp32",
                              ranges=learned_ranges(record))
                graphs.append(("int8-tensorrt, FP32 rest", twin, False))
            loaded, float_model = load_model(args.checkpoint), load_model(args.checkpoint).model
            attach_qat(loaded.model, record)
            loaded.model.eval()
            size = tuple(record["image_size"])
            for name, path, fp16 in graphs:
                import onnxruntime as ort

                plain = ort_session(path, "int8", fp16)  # as every danet-edge command runs it
                levels = []
                for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
                    opts = ort.SessionOptions()
                    opts.graph_optimization_level = level
                    levels.append(ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]))
                rows = []
                for frame in frames:
                    x = preprocess([frame], size, loaded.data["mean"], loaded.data["std"])
                    g = plain.run(None, {plain.get_inputs()[0].name: x})[0]
                    off, on = (sess.run(None, {sess.get_inputs()[0].name: x})[0] for sess in levels)
                    with torch.no_grad():
                        s, f = loaded.model(torch.from_numpy(x)).numpy(), float_model(torch.from_numpy(x)).numpy()
                    rows.append([(_rel(s, g), float((s.argmax(1) == g.argmax(1)).mean())),
                                 (_rel(f, g), float((f.argmax(1) == g.argmax(1)).mean())),
                                 (_rel(on, off), float((on.argmax(1) == off.argmax(1)).mean()))])
                m = np.mean(np.array(rows), axis=0)
                print(f"| {name} | " + " | ".join(f"{r:.4f}, {100 * a:.2f}" for r, a in m) + " |")


if __name__ == "__main__":
    main()
