"""``danet-edge build``: an ONNX graph -> a TensorRT engine on this device (``trt.build.build_engine``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..trt.plan import EngineConfig
from ._common import console, info, opt, verbose


def register(app: typer.Typer) -> None:
    """Add ``build`` to ``app``. Defaults and help come from ``EngineConfig``."""

    @app.command(epilog="\b\nExamples:\n  danet-edge build export/best/model_int8_trt.onnx\n  "
                        "danet-edge build model_fp16.onnx --dla-core 0 --timing-cache timing.cache\n  "
                        "danet-edge build model.onnx --int8-calib calib/ (TensorRT 10 only)")
    def build(
        model: Path = typer.Argument(..., help="static-shape ONNX graph (with its .onnx.json manifest)"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="engine path (default MODEL with .engine)"),
        workspace_mib: int = opt(EngineConfig, "workspace_mib", "--workspace-mib"),
        opt_level: Optional[int] = opt(EngineConfig, "opt_level", "--opt-level"),
        timing_cache: Optional[Path] = opt(EngineConfig, "timing_cache", "--timing-cache"),
        dla_core: Optional[int] = opt(EngineConfig, "dla_core", "--dla-core"),
        gpu_fallback: bool = opt(EngineConfig, "gpu_fallback", "--gpu-fallback/--no-gpu-fallback"),
        fp16: bool = opt(EngineConfig, "fp16", "--fp16"),
        int8_calib: Optional[Path] = opt(EngineConfig, "int8_calib", "--int8-calib"),
        calib_images: int = opt(EngineConfig, "calib_images", "--calib-size", "--calib-images"),
        calib_seed: int = opt(EngineConfig, "calib_seed", "--seed"),
        calib_cache: Optional[Path] = opt(EngineConfig, "calib_cache", "--calib-cache"),
    ) -> None:
        """Build a TensorRT engine (plain file + .json manifest) on this device.

        Strongly typed by default: the precision comes from the graph (FP16 / INT8 Q/DQ from export).
        `-v` gives TensorRT's verbose log.
        """
        from ..trt.build import build_engine
        from ..core.manifest import read_manifest

        cfg = EngineConfig.from_options(locals(), verbose=verbose())
        from ..core.utils import ensure_output_dir, ensure_output_file, ensure_output_names

        from ..trt.plan import engine_path

        target = engine_path(model, out)
        if out is not None and target != out:  # a folder: build_engine puts <stem>.engine in it
            ensure_output_dir(out, "--out")
        else:
            ensure_output_file(target, "--out")
        ensure_output_names(target.parent, "--out", [target.name, target.name + ".json"])  # engine, sidecar: no link
        for option, path in (("--timing-cache", timing_cache), ("--calib-cache", calib_cache)):
            if path is not None:
                ensure_output_file(path, option)  # read if there, written back after the build
                if option == "--calib-cache":  # its fixed-name record (trt.calibrator); the file named is the user's
                    ensure_output_names(path.parent, option, [path.name + ".json"])  # own, a link to it is theirs
        path = build_engine(model, out, cfg, log=info)
        trt_info = read_manifest(path).tensorrt or {}
        console.print(f"engine: {path}", markup=False, highlight=False, soft_wrap=True)
        console.print(f"equivalent: {trt_info.get('trtexec')}", markup=False, highlight=False, soft_wrap=True)
