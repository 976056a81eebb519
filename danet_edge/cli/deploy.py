"""``danet-edge deploy``: an exported artifact -> a DeepStream nvinfer config and/or a Triton repository entry."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core.errors import ConfigError
from ._common import console, info


def register(app: typer.Typer) -> None:
    """Add ``deploy`` to the app. Defaults are read from the config dataclasses."""
    from ..deploy.deepstream import DeepStreamConfig
    from ..deploy.triton import TritonConfig

    dc, tc = DeepStreamConfig(), TritonConfig()

    @app.command(epilog="\b\nExamples:\n  danet-edge deploy export/m/model.onnx --triton models/ --name danet\n  "
                        "danet-edge deploy export/m/model_fp16.onnx --deepstream ds/  (export --logits)\n  "
                        "danet-edge deploy model_int8_trt.engine --triton models/")
    def deploy(
        artifact: Path = typer.Argument(..., help="An exported .onnx graph or .engine/.plan (with its manifest)."),
        deepstream: Optional[Path] = typer.Option(None, "--deepstream", help="Write a Gst-nvinfer config, labels "
                                                  "and graph into this folder (needs a logits graph)."),
        triton: Optional[Path] = typer.Option(None, "--triton", help="Add the model to this Triton model repository."),
        name: Optional[str] = typer.Option(tc.name, "--name", help="Triton model name (default: the artifact's stem)."),
        model_version: int = typer.Option(tc.version, "--model-version", help="Triton model version folder."),
        gpu_id: int = typer.Option(dc.gpu_id, "--gpu-id", help="DeepStream gpu-id."),
        segmentation_threshold: float = typer.Option(dc.segmentation_threshold, "--segmentation-threshold",
                                                     help="DeepStream segmentation-threshold on the softmax scores."),
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
        ds_cfg = DeepStreamConfig(gpu_id=gpu_id, segmentation_threshold=segmentation_threshold)
        tr_cfg = TritonConfig(name=name, version=model_version)
        if deepstream is not None:
            res = write_nvinfer_config(artifact, deepstream, ds_cfg)
            for note in res.notes:
                info(f"note: {note}")
            console.print(f"DeepStream: {res.config}", markup=False, highlight=False)
        if triton is not None:
            folder = write_model_repository(artifact, triton, tr_cfg)
            console.print(f"Triton: {folder}", markup=False, highlight=False)
