"""Run any ``danet-edge`` command against the real TensorRT bindings and the stand-in, on a CPU.

    python tests/trt_standin/cli.py --trt 10.3.0 build export/model_fp16.onnx
    python tests/trt_standin/cli.py --trt 11.4.0.106 infer export/model_fp16.engine clip.mp4
    python tests/trt_standin/cli.py --trt 10.3.0 benchmarks/engine_vs_onnx.py ...   # a script instead

For developers and reviewers without a GPU: engines "built" here carry the ONNX graph and run it with
ONNX Runtime (see ``library.py`` for what that can and cannot show). They are not TensorRT engines;
a real TensorRT refuses them. The simulated GPU is sm_87 ("Stand-in GPU (host memory)"), the same in
every process, so an engine built by one call runs in the next.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _child(args: list[str]) -> None:
    sys.path.insert(0, os.environ["DANET_EDGE_TRT_SITE"])
    sys.path.insert(0, str(TESTS))
    import tensorrt_bindings

    sys.modules["tensorrt"] = tensorrt_bindings
    from trt_standin import cuda_fakes, library

    library.install(tensorrt_bindings)
    cuda_fakes.install({"pycuda"})
    if args and args[0].endswith(".py"):  # a script (a benchmark) run in this process
        import runpy

        sys.argv = list(args)
        runpy.run_path(args[0], run_name="__main__")
        return
    from danet_edge.cli import main

    sys.argv = ["danet-edge", *args]
    main()


def main() -> None:
    argv = sys.argv[1:]
    if os.environ.get("DANET_EDGE_TRT_STANDIN_CHILD"):
        _child(argv)
        return
    version = "10.3.0"
    if argv[:1] == ["--trt"]:
        version, argv = argv[1], argv[2:]
    sys.path.insert(0, str(TESTS))
    from trt_standin.env import Unavailable, prepare

    try:
        site = prepare(version)
    except Unavailable as e:
        sys.exit(f"error: {e}")
    env = site.env()
    env["DANET_EDGE_TRT_STANDIN_CHILD"] = "1"
    print(f"[stand-in] TensorRT {version} bindings (real) + danet-edge stand-in, CPU only", file=sys.stderr)
    os.execve(sys.executable, [sys.executable, __file__, *argv], env)  # LD_LIBRARY_PATH needs a new process


if __name__ == "__main__":
    main()
