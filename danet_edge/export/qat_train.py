"""Quantization-aware fine-tuning from an INT8 recipe, three steps, each from artifact to artifact:

    prepare_qat       float checkpoint -> the recipe's PTQ graph (``export_model``, calibrated as export does, on
                      ``--calib`` or else on images drawn from the run's own training set: :func:`training_calibration`)
                      -> a QAT record (``qat.qat_plan``): every Q/DQ of that graph as a PyTorch site, its scale
    train             ``train.train`` with the record: fake quantization at those sites (``model.fakequant``),
                      the scales learned, BatchNorm frozen -> a QAT checkpoint (``qat`` entry: the learned record)
    export            ``export_model`` of the QAT checkpoint: the recipe's graph again, by the same code, with the
                      learned scales in place of calibration (``qat.learned_ranges``; ``quantize_int8(ranges=)``)

Because the graph is made by the same ``quantize_int8`` as a PTQ graph, it has the same Q/DQ placement, FP16
islands and fused I/O and passes the same TensorRT rule check; export verifies that every tensor the record
quantized is quantized again, nothing more (``qat.check_placement``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import onnx

from ..core.choices import QAT_RECIPES
from ..core.errors import ConfigError
from .qat import qat_plan, ranges_file

__all__ = ["prepare_qat", "qat_train", "training_calibration"]


def prepare_qat(checkpoint: str | os.PathLike[str], recipe: str, calib: str | os.PathLike[str] | None = None,
                calib_size: int | None = None, calib_method: str | None = None,
                imgsz: tuple[int, int] | None = None, log: Callable[[str], None] | None = None,
                work_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Float checkpoint -> the QAT record of ``recipe``'s PTQ graph (:func:`qat_plan`), initial scales from
    calibration. The graph is made by ``export_model`` (FP32 logits graph, then the recipe, in ``work_dir``, by
    default a temporary folder), so its placement is exactly the one export writes.

    Raises:
        ConfigError: ``recipe`` is not one QAT starts from; the errors of ``export_model``.
    """
    from ..model.checkpoint import load_model
    from .config import ExportConfig
    from .export import export_model
    from .recipes import get_recipe

    if recipe not in QAT_RECIPES:
        raise ConfigError(f"--qat takes an INT8 recipe: {', '.join(QAT_RECIPES)}; got {recipe!r}")
    rec = get_recipe(recipe)
    loaded = load_model(checkpoint)
    with tempfile.TemporaryDirectory(prefix="danet-edge-qat-") as scratch:
        tmp = Path(work_dir) if work_dir is not None else Path(scratch)
        cfg = ExportConfig(imgsz=imgsz, recipes=(recipe,), target=rec.target or "tensorrt", calib=calib,
                           calib_size=calib_size, calib_method=calib_method, fused_io=False, reference_images=0,
                           verify_images=1, out=Path(tmp))
        log = log or (lambda _msg: None)
        log(f"QAT: making the {recipe} graph export would write (calibrated), to read its Q/DQ back as fake "
            "quantization")
        result = export_model(checkpoint, cfg, log=log)
        int8 = next(a for a in result.artifacts if a.path.name == rec.file_name)
        calibration = dict(int8.manifest.calibration or {})
        ranges = ranges_file(Path(tmp) / calibration["ranges_cache"])
        size = (int(int8.manifest.input_shape[2]), int(int8.manifest.input_shape[3]))
        keep = {k: calibration[k] for k in ("method", "count", "seed", "root", "residual_add", "high_precision")
                if k in calibration}
        record = qat_plan(onnx.load(str(int8.path)), onnx.load(str(Path(tmp) / "model.onnx")), recipe,
                          rec.target or "tensorrt", ranges, size, loaded.sha256, keep)
        log(f"QAT: {len(record['activations'])} activation quantizers (scales learned), {len(record['weights'])} "
            "INT8 Conv weights (per channel), BatchNorm frozen")
        return record


def training_calibration(train_cfg: Any, count: int | None, folder: Path) -> tuple[Path, str]:
    """Calibration images for a QAT run given no ``--calib``: ``count`` (default
    :data:`~danet_edge.train.config.QAT_CALIB_IMAGES`) images of the run's own training set (its data set, folder,
    options and ``--limit-train``), drawn class-balanced by ``calib fill``'s rule (``data.calib.fill_calib_dir``)
    into ``folder`` and read back as export reads any calibration folder (the same transforms). Returns the
    folder and where its images came from, for the log and the record.

    Raises:
        ConfigError, DataError: the training set's (the same errors ``train`` gives).
    """
    from ..core.config import check_range
    from ..data.calib import fill_calib_dir
    from ..train.config import QAT_CALIB_IMAGES

    cfg = train_cfg
    count = QAT_CALIB_IMAGES if count is None else count
    check_range("--calib-size", count, 1, 100_000)
    fill_calib_dir(cfg.dataset, cfg.data_root, count, folder, "train", cfg.seed,
                   {**cfg.data_options, "limit": cfg.limit_train})
    taken = len(json.loads((folder / "calib.json").read_text())["images"])
    where = f"{cfg.dataset} train split" + (f" of {cfg.data_root}" if cfg.data_root else "")
    return folder, f"{taken} images drawn class-balanced from the training set ({where})"


def qat_train(checkpoint: str | os.PathLike[str], recipe: str, train_cfg: Any, calib: str | os.PathLike[str] | None = None,
              calib_size: int | None = None, calib_method: str | None = None, imgsz: tuple[int, int] | None = None,
              log: Callable[[str], None] | None = None) -> Path:
    """Quantization-aware fine-tuning of a float checkpoint for ``recipe``: :func:`prepare_qat` (skipped when
    ``train_cfg.resume``: the record is in ``last.pt``), then ``train.train`` with it. The initial scales are
    calibrated on ``calib`` (``calib_size`` images of it), or, without it, on ``calib_size`` images of the training
    set (:func:`training_calibration`; the record's ``calibration.source`` and the log say so). Returns ``best.pt``
    (the QAT checkpoint with the best simulated-INT8 val mIoU); ``danet-edge export`` of it writes the graph.

    Raises:
        ConfigError, CheckpointError, DataError, CalibrationError: bad input, before anything is written.
    """
    from dataclasses import replace

    from ..model.checkpoint import load_model
    from ..train.train import check_run_dir, train

    loaded = load_model(checkpoint)  # a QAT checkpoint is refused here, in one line
    cfg = replace(train_cfg, model=loaded.config, weights=str(checkpoint), qat=recipe)
    cfg.validate()
    check_run_dir(cfg)  # before calibration: a folder that holds a run is refused at once
    record = None
    if not cfg.resume:
        size = imgsz or (tuple(loaded.data["image_size"]) if loaded.data.get("image_size") else None)
        with tempfile.TemporaryDirectory(prefix="danet-edge-qat-calib-") as tmp:
            source = None
            if calib is None:  # the training set it is about to fine-tune on is at hand: calibrate on a draw of it
                calib, source = training_calibration(cfg, calib_size, Path(tmp) / "calib")
                if log is not None:
                    log(f"QAT: no --calib: initial scales calibrated on {source}")
            record = prepare_qat(checkpoint, recipe, calib, calib_size, calib_method, size, log)
        if source is not None:  # where the scales came from, not the temporary folder they were read from
            record["calibration"] = {**{k: v for k, v in record["calibration"].items() if k != "root"},
                                     "source": source}
    return train(cfg, record)
