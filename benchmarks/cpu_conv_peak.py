"""The ceiling of INT8 on this CPU: DANet's largest convolution alone, FP32 eager against INT8 Q/DQ, side by side.

DANet R-50's head opens with two 3x3 convolutions 2048 -> 512 (``conv5a``, ``conv5c``: 38.7 GOP each at
256x512 with output stride 8, a third of the model's compute). This times one of them, on the feature-map
size of the issue-9 configuration, as PyTorch eager FP32 (the reference's kernel), as the INT8 Q/DQ graph
ONNX Runtime's quantizer writes for the cpu target (uint8 activations, per-channel int8 weights) on
OpenVINO and on ONNX Runtime, and in OpenVINO f32 / bf16: medians of ``--runs`` alternating runs, 2 threads.
The INT8 / eager ratio of this one layer is what the whole model can reach when its time is convolution
(VNNI executes four times the multiply-adds of an FP32 FMA per instruction; eager FP32 is near its own
peak on a layer this large), so a model-level speed-up target above it cannot be met by placement.

Run: ``nice .venv/bin/python benchmarks/cpu_conv_peak.py [--size 32 64] [--threads 2] [--runs 9]``
(needs torch, onnxruntime and openvino: the ``[all]`` extra).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=2, default=(32, 64), help="feature map H W (256x512 / 8)")
    ap.add_argument("--channels", type=int, nargs=2, default=(2048, 512), help="in, out channels")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()

    import onnxruntime as ort
    import openvino as ov
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    torch.set_num_threads(args.threads)
    cin, cout = args.channels
    h, w = args.size
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False).eval()
    x = torch.randn(1, cin, h, w)
    tmp = Path(tempfile.mkdtemp())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(conv, x, str(tmp / "conv.onnx"), input_names=["x"], dynamo=False)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.data = iter([{"x": x.numpy()}])

            def get_next(self):  # noqa: ANN201 - ORT's interface
                return next(self.data, None)

        quantize_static(str(tmp / "conv.onnx"), str(tmp / "conv_int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    core = ov.Core()

    def ov_model(name: str, precision: str):
        return core.compile_model(core.read_model(str(tmp / name)), "CPU",
                                  {"INFERENCE_NUM_THREADS": args.threads, "INFERENCE_PRECISION_HINT": precision})

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(str(tmp / "conv_int8.onnx"), so, providers=["CPUExecutionProvider"])
    xn = x.numpy()
    entries = {"PyTorch eager FP32": lambda: conv(x),
               "OpenVINO f32": (lambda m: lambda: m(xn))(ov_model("conv.onnx", "f32")),
               "OpenVINO bf16": (lambda m: lambda: m(xn))(ov_model("conv.onnx", "bf16")),
               "OpenVINO INT8 Q/DQ": (lambda m: lambda: m(xn))(ov_model("conv_int8.onnx", "f32")),
               "ONNX Runtime INT8 Q/DQ": lambda: sess.run(None, {"x": xn})}
    times: dict[str, list[float]] = {k: [] for k in entries}
    with torch.inference_mode():
        for f in entries.values():
            f(), f()
        for _ in range(args.runs):
            for k, f in entries.items():
                t = time.perf_counter()
                f()
                times[k].append((time.perf_counter() - t) * 1e3)
    gop = 2 * 9 * cin * cout * h * w / 1e9
    base = statistics.median(times["PyTorch eager FP32"])
    print(f"3x3 conv {cin}->{cout} at {h}x{w}: {gop:.2f} GOP (multiply-add = 2), {args.threads} threads, "
          f"median of {args.runs}")
    print("| entry | p50 ms | TOPS | vs eager FP32 |\n|---|---|---|---|")
    for k, v in times.items():
        m = statistics.median(v)
        print(f"| {k} | {m:.1f} | {gop / m:.3f} | {base / m:.2f}x |")


if __name__ == "__main__":
    main()
