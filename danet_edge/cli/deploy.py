"""``danet-edge deploy``: an exported artifact -> a DeepStream nvinfer config and/or a Triton repository entry."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core.errors import ConfigError
from ._common import console, info, opt


def register(app: typer.Typer) -> None:
    """Add ``deploy`` to the app. Defaults are read from the config dataclasses."""
    from ..deploy.deepstream import DeepStreamConfig as DC
    from ..deploy.triton import TritonConfig as TC

    @app.command(epilog="\b\nExamples:\n  danet-edge deploy export/m/model.onnx --triton models/ --name danet\n  "
                        "danet-edge deploy export/m/model_fp16.onnx --deepstream ds/  (export --logits)\n  "
                        "danet-edge deploy model_int8_trt.engine --triton models/")
    def deploy(
        artifact: Path = typer.Argument(..., help="An exported .onnx graph or .engine/.plan (with its manifest)."),
        deepstream: Optional[Path] = typer.Option(None, "--deepstream", help="Write a Gst-nvinfer config, labels "
                                                  "and graph into this folder (needs a logits graph)."),
        triton: Optional[Path] = typer.Option(None, "--triton", help="Add the model to this Triton model repository."),
        name: Optional[str] = opt(TC, "name", "--name"),
        model_version: int = opt(TC, "version", "--model-version"),
        gpu_id: int = opt(DC, "gpu_id", "--gpu-id"),
        segmentation_threshold: float = opt(DC, "segmentation_threshold", "--segmentation-threshold"),
    ) -> None:
        """Deployment files for DeepStream (nvinfer) and Triton Inference Server from an exported artifact."""
        from ..deploy.deepstream import write_nvinfer_config
        from ..deploy.triton import write_model_repository

        from ..core.utils import ensure_output_dir

        if deepstream is None and triton is None:
            raise ConfigError("deploy needs --deepstream DIR and/or --triton REPO")
        for option, folder in (("--deepstream", deepstream), ("--triton", triton)):
            if folder is not None:
                ensure_output_dir(folder, option)  # before any work: a bad path is one line now
        ds_cfg = DC(gpu_id=gpu_id, segmentation_threshold=segmentation_threshold)
        tr_cfg = TC(name=name, version=model_version)
        if deepstream is not None:
            res = write_nvinfer_config(artifact, deepstream, ds_cfg)
            for note in res.notes:
                info(f"note: {note}")
            console.print(f"DeepStream: {res.config}", markup=False, highlight=False)
        if triton is not None:
            folder = write_model_repository(artifact, triton, tr_cfg)
            console.print(f"Triton: {folder}", markup=False, highlight=False)
