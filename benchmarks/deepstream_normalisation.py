"""DeepStream's graph against the fused-I/O graph on CamVid val: the in-graph normalisation is exact.

Gst-nvinfer computes ``net-scale-factor * (x - offsets_c)`` with ONE scale for the three channels
(https://docs.nvidia.com/metropolis/deepstream/dev-guide/text/DS_plugin_gst-nvinfer.html), so
``danet-edge deploy --deepstream`` tells it ``net-scale-factor=1/255``, ``offsets=0;0;0`` and puts the per-channel
normalisation in the graph (danet_edge/deploy/deepstream.py). This exports the checkpoint's logits graph and
fused-I/O graph (ONNX Runtime verified, FP32, static batch 1), deploys the logits graph for DeepStream, then runs
on each CamVid val image (resized to the checkpoint's size, as ``infer`` does):

* the DeepStream graph on nvinfer's input, emulated by ``nvinfer_input`` with the net-scale-factor and offsets
  read back from the written config; its class map is the argmax of its scores (nvinfer's parser);
* the fused-I/O graph on the uint8 frame (its own Cast and normalisation, ArgMax in the graph);

and prints the share of pixels with equal class maps, the largest logit difference (both graphs' logits tensors
exposed as outputs), and each one's pixel accuracy against the labels. CamVid in the SegNet layout
(``val.txt`` lists "image label" pairs; ``data.datasets.build_dataset("camvid", ...)`` reads it).

    python benchmarks/deepstream_normalisation.py best.pt ../shared/datasets/camvid --out /tmp/ds_bench
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def _session(path: Path, also: str, threads: int):
    """ONNX Runtime CPU session (the project's session options) with the inner tensor ``also`` as a 2nd output."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from danet_edge.runtime.ort_backend import session_options

    model = onnx.load(str(path))
    model.graph.output.append(helper.make_tensor_value_info(also, TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString(), session_options("fp32", threads),
                                providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path, help="a danet-edge checkpoint (its data image size is used)")
    ap.add_argument("camvid", type=Path, help="CamVid in the SegNet layout (val.txt, val/, valannot/)")
    ap.add_argument("--out", type=Path, default=None, help="folder for the graphs (default: a temporary one)")
    ap.add_argument("--images", type=int, default=None, help="only the first N val images (default: all)")
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    args = ap.parse_args()

    from danet_edge.core.manifest import read_manifest
    from danet_edge.data.datasets import build_dataset
    from danet_edge.data.preprocess import resize_image, resize_labels
    from danet_edge.deploy.deepstream import nvinfer_input, parse_nvinfer_config, write_nvinfer_config
    from danet_edge.export.fp32 import export_onnx
    from danet_edge.model.checkpoint import load_model

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        lm = load_model(args.checkpoint)
        size = tuple(int(v) for v in lm.data["image_size"])
        logits_path, fused_path = out / "model.onnx", out / "model_fused.onnx"
        export_onnx(lm, logits_path, size, batch=1)
        export_onnx(lm, fused_path, size, batch=1, fused_io=True)
        res = write_nvinfer_config(logits_path, out / "ds")
        props = parse_nvinfer_config(res.config)["property"]
        scale, offsets = float(props["net-scale-factor"]), [float(v) for v in props["offsets"].split(";")]
        m = read_manifest(logits_path)
        ds = _session(res.folder / props["onnx-file"], m.output_name, args.threads)
        fused = _session(fused_path, m.output_name, args.threads)

        data = build_dataset("camvid", args.camvid, "val", limit=args.images)
        equal = total = right_ds = right_fused = labelled = 0
        max_abs, max_rel, bit_equal = 0.0, 0.0, 0
        for i in range(len(data)):
            image, labels = data[i]
            frame = resize_image(image, m.image_size)[None]
            labels = resize_labels(labels, m.image_size)
            scores, ds_logits = ds.run(None, {m.input_name: nvinfer_input(frame, scale, offsets)})
            fused_labels, fused_logits = fused.run(None, {m.input_name: frame})
            a, b = scores.argmax(1)[0], fused_labels[0]
            equal += int((a == b).sum())
            total += a.size
            d = float(np.abs(ds_logits - fused_logits).max())
            max_abs, max_rel = max(max_abs, d), max(max_rel, d / float(np.abs(fused_logits).max()))
            bit_equal += int(np.array_equal(ds_logits, fused_logits))
            valid = labels != m.ignore_index
            right_ds += int((a == labels)[valid].sum())
            right_fused += int((b == labels)[valid].sum())
            labelled += int(valid.sum())

    print(f"checkpoint {args.checkpoint} ({size[0]}x{size[1]}, {m.num_classes} classes), {len(data)} CamVid val "
          f"images, ONNX Runtime CPU")
    print(f"nvinfer config: net-scale-factor {props['net-scale-factor']}, offsets {props['offsets']}")
    print(f"class maps equal, DeepStream graph vs fused graph: {100 * equal / total:.4f} % "
          f"({total - equal} of {total} pixels differ)")
    print(f"max |logit difference| {max_abs:.3e} ({max_rel:.3e} of max |logits|); "
          f"logits bit-identical on {bit_equal}/{len(data)} images")
    print(f"pixel accuracy vs labels: DeepStream {100 * right_ds / labelled:.3f} %, "
          f"fused {100 * right_fused / labelled:.3f} %")


if __name__ == "__main__":
    main()
