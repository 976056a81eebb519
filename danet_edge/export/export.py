"""Export a checkpoint to static-shape ONNX (FP32), then FP16 and INT8 Q/DQ graphs, each verified.

``export_model(checkpoint, ExportConfig)`` is a plan and its steps, each a function from artifact to artifact:

    plan_export        checks every option and input, writes nothing                         (plan.py)
    choose_attention   PAM's form by the memory model, traced                               (attention.py)
    export_onnx        PyTorch -> FP32 ``model.onnx`` verified against PyTorch                (fp32.py)
    make_bundle        the reference bundle for ``check`` on a device without PyTorch        (reference.py)
    derive             one step per precision recipe (recipes.py): FP16, INT8 Q/DQ, ...; each graph verified
                       against FP32 on the same images, INT8 fitted to the accuracy budget   (here)
    fuse_artifacts     uint8 NHWC in, int32 class map out, verified against the logits form  (here)
    build engines      ``trt.build.build_engine`` with ``--engine``

Every graph is checked (``onnx.checker`` full check, ``trtcheck``), carries its manifest in
``metadata_props['danet_edge_manifest']`` and in a ``.json`` sidecar, and is verified against the
PyTorch model on real images (the calibration set when given, else synthetic street scenes).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..core.compare import OutputComparison, cohen_kappa
from ..core.errors import ExportError, Interrupted
from ..core.manifest import Manifest, manifest_path, read_manifest, write_manifest
from ..core.progress import track
from ..core.runfolder import previous_kept, remove_stale_temporaries, run_lock
from ..graph.precision import format_report, precision_report, verify_precision
from .attention import choose_attention
from .budget import apply_budget
from .config import REFERENCE_IMAGES, ExportConfig
from .fp32 import (MIN_FUSED_AGREEMENT, export_onnx, finalize, fused_manifest, ort_session, run_graph,
                   verification_session)
from .graph_io import fuse_io
from .limits import check_sizes, check_verification_memory
from .plan import ExportPlan, plan_export
from .recipes import AGREEMENT_BEYOND_DOUBT, PrecisionRecipe, RecipeInput, RecipeOptions
from .results import Artifact, ExportResult

__all__ = ["ExportConfig", "export_model"]

Log = Callable[[str], None]


def fuse_artifacts(artifacts: list[Artifact], frames: list[np.ndarray], target: str, log: Log) -> list[Artifact]:
    """Rewrite each ONNX artifact to fused I/O in place (``graph_io.fuse_io``), after calibration and the budget,
    and verify its class maps against the logits graph it came from (at least 99.9 % of pixels agree; only the
    grouping of the normalisation's arithmetic changes)."""
    done = []
    for a in artifacts:
        before = (a.outputs if a.outputs is not None else
                  run_graph(verification_session(a.path, a.manifest)[0], a.manifest, frames)
                  ).argmax(1)  # the logits form's outputs, kept from its own verification (same numerics)
        model = fuse_io(onnx.load(str(a.path)), a.manifest.mean, a.manifest.std)
        manifest = fused_manifest(a.manifest)
        report = precision_report(model)
        manifest.precision_report = report.to_dict()
        after = run_graph(verification_session(model, manifest)[0], manifest, frames)
        agree = float((after == before).mean())
        if agree < MIN_FUSED_AGREEMENT:
            raise ExportError(f"{a.path.name}: fused-I/O class maps agree with the logits graph on {agree:.4%} "
                              "of pixels (< 99.9 %)")
        ver = {**(a.verification or {}), "fused_io_label_agreement": agree}
        manifest.extra = {**manifest.extra, "verification": ver}
        finalize(model, a.path, manifest, str(manifest.target or target))
        log(f"fused I/O {a.path.name}: uint8 NHWC in, int32 class map out; agreement with its logits form {agree:.4%}")
        done.append(Artifact(a.path, manifest, a.seconds, report.to_dict(), ver))
    return done


def _compare(path: Path, manifest: Manifest, frames: list[np.ndarray], ref: np.ndarray,
             what: str) -> tuple[dict[str, float], np.ndarray]:
    """The derived graph against the FP32 graph on the verification images, through the comparison
    ``check`` uses (``compare.OutputComparison``); with the graph's outputs.

    A graph with a fusible PAM (heads or attention-op in FP16) is judged as TensorRT's fused kernel computes it
    (``fp32.verification_session``; ``attention_numerics`` in the record says so), and the graph run unfused, as
    ONNX Runtime runs it here, is recorded beside it (``unfused_*``): what a device gives if the build does not fuse.
    """
    session, numerics = verification_session(path, manifest)
    ver, got = _agreement(run_graph(session, manifest, frames), ref, manifest, f"{what} graph {path.name}")
    if numerics is not None:
        from ..runtime.ort_backend import holds_fp16

        unfused, _ = _agreement(run_graph(ort_session(path, manifest.precision, holds_fp16(manifest)), manifest,
                                          frames), ref, manifest, f"{what} graph {path.name} (unfused)")
        ver = {**ver, "attention_numerics": numerics, **{f"unfused_{k}": v for k, v in unfused.items()}}
    return ver, got


def _agreement(got: np.ndarray, ref: np.ndarray, manifest: Manifest, what: str) -> tuple[dict[str, Any], np.ndarray]:
    """Agreement, kappa and (logits) relative L2 of ``got`` against ``ref``.

    Raises:
        ExportError: ``got`` holds inf / NaN."""
    c = OutputComparison()
    labels, ref_labels = (got, ref) if manifest.output_kind == "labels" else (got.argmax(1), ref.argmax(1))
    c.update(labels, ref_labels, *((None, None) if manifest.output_kind == "labels" else (got, ref)))
    if c.nonfinite:
        raise ExportError(f"{what} outputs inf/NaN on verification images")
    ver = {"label_agreement_vs_fp32": c.agreement, "label_kappa_vs_fp32": cohen_kappa(labels, ref_labels)}
    return ({"rel_l2_vs_fp32": c.rel_l2, **ver} if c.has_logits else ver), got


def _derived(fp32: Artifact, path: Path, precision: str, extra_manifest: dict[str, Any],
             include_attention: bool) -> tuple[onnx.ModelProto, Manifest, Any]:
    """Load a derived graph, check its precision is what was asked, build its manifest from FP32's."""
    model = onnx.load(str(path))
    report = precision_report(model)
    verify_precision(report, precision, include_attention)
    manifest = replace(fp32.manifest, precision=precision, precision_report=report.to_dict(), **extra_manifest)
    return model, manifest, report


def _verification_problem(plan: ExportPlan, recipe: PrecisionRecipe, ver: dict[str, float]) -> str | None:
    """Why a derived graph fails its export verification against FP32, or None: relative L2 above the recipe's
    limit (``ExportPlan.rel_l2_limit``), or class maps below the recipe's agreement floor, in chance-corrected
    agreement (Cohen's kappa, ``PrecisionRecipe.min_label_kappa``: raw agreement cannot tell a broken graph
    from a good one when one class covers most pixels), unless they agree on at least
    ``recipes.AGREEMENT_BEYOND_DOUBT`` of the pixels."""
    limit = plan.rel_l2_limit(recipe)
    if limit is not None and ver.get("rel_l2_vs_fp32", 0.0) > limit:
        return f"{recipe.name} graph differs from FP32 by relative L2 {ver['rel_l2_vs_fp32']:.3g} (limit {limit:g})"
    kappa, agree = ver.get("label_kappa_vs_fp32"), ver.get("label_agreement_vs_fp32", 0.0)
    if kappa is not None and kappa < recipe.min_label_kappa and agree < AGREEMENT_BEYOND_DOUBT:
        return (f"{recipe.name} class maps agree with FP32 on {ver['label_agreement_vs_fp32']:.3%} of the "
                f"verification pixels, kappa {kappa:.3f} (floor {recipe.min_label_kappa:g}: 0 is chance): the graph "
                "is broken, not a lower-precision copy (a calibration cache from elsewhere? delete the calib_*.json "
                "beside it)")
    return None


def derive(plan: ExportPlan, recipe: PrecisionRecipe, fp32: Artifact, ref: np.ndarray, options: RecipeOptions,
           evaluator: Any, artifacts: list[Artifact], log: Log) -> dict[str, Any] | None:
    """One recipe's step: FP32 graph -> the recipe's graph (+ the accuracy budget for INT8), checked, verified
    against FP32's outputs ``ref`` on ``plan.frames``, its manifest written and the artifact appended to
    ``artifacts``. Returns the calibration record the recipe made (None when it did not calibrate).

    Raises:
        ExportError: the graph is outside the recipe's limits against FP32 (relative L2, the agreement floor) or
            outputs inf / NaN; it is then removed and the graph that was there before, if any, put back.
    """
    cfg = plan.cfg
    t0 = time.perf_counter()
    final = plan.out_dir / recipe.file_name
    with previous_kept([final, manifest_path(final)]):  # a graph that fails verification is never left behind
        # as if it were a result, and a re-export that fails keeps the graph that was there
        made = recipe.convert(RecipeInput(fp32.path, final, plan.calib_set, options))
        budget = apply_budget(cfg, fp32.path, made.path, evaluator, plan.warnings, log) \
            if evaluator is not None and recipe.precision == "int8" else None
        model, manifest, report = _derived(fp32, made.path, recipe.precision, made.manifest_fields,
                                           cfg.include_attention and recipe.attention_quantized)
        manifest.target = recipe.target or manifest.target
        manifest.extra = {**manifest.extra, "recipe": recipe.name, **({"budget": budget} if budget else {})}
        finalize(model, made.path, manifest, str(manifest.target or cfg.target))
        ver, outputs = _compare(made.path, manifest, plan.frames, ref, recipe.name)
        problem = _verification_problem(plan, recipe, ver)
        if problem is not None:
            raise ExportError(f"{made.path.name}: {problem}; not kept")
    manifest.extra = {**manifest.extra, "verification": ver}
    write_manifest(made.path, manifest)
    artifacts.append(Artifact(made.path, manifest, time.perf_counter() - t0, report.to_dict(), ver, outputs))
    log(f"wrote {made.path} ({artifacts[-1].seconds:.1f} s) verification {_fmt(ver)}")
    for line in made.log:
        log(line)
    log(format_report(report, recipe.precision))
    return made.manifest_fields.get("calibration")


def _build_engines(build_engine: Callable[..., Any], artifacts: list[Artifact], log: Log) -> list[Artifact]:
    """An engine beside each graph (``trt.build.build_engine`` with the default ``EngineConfig``)."""
    from ..trt.build import EngineConfig

    engines = []
    for src in artifacts:
        t0 = time.perf_counter()
        engine = Path(build_engine(src.path, src.path.with_suffix(".engine"), EngineConfig(), log=log))
        engines.append(Artifact(engine, read_manifest(engine), time.perf_counter() - t0))
        log(f"wrote {engine} ({engines[-1].seconds:.1f} s) from {src.path.name}")
    return engines


def _write_fp32(plan: ExportPlan, artifacts: list[Artifact], log: Log) -> Artifact:
    """The FP32 step, with logits (calibration, the budget and the checks work on them); appended to
    ``artifacts`` as soon as it is written, so an interruption while logging still counts it."""
    cfg = plan.cfg
    choice = choose_attention(plan, log)
    check_verification_memory(plan, choice.estimate)  # ONNX Runtime and PyTorch here: refused if above what is free
    fp32 = export_onnx(plan.loaded, plan.out_dir / "model.onnx", plan.size, cfg.batch, cfg.opset, False, plan.frames,
                       cfg.tolerance, cfg.target, choice.form, choice.chunks, choice.graph, choice.record(),
                       board=cfg.jetson)
    artifacts.append(fp32)
    log(f"wrote {fp32.path} ({fp32.seconds:.1f} s) verification {_fmt(fp32.verification)}")
    log(f"PAM energy: {fp32.manifest.extra['attention']['energy']['reason']}")
    log(format_report(precision_report(onnx.load(str(fp32.path))), "fp32"))
    return fp32


def _write_bundle(plan: ExportPlan, fp32: Artifact, log: Log) -> Path | None:
    """The reference bundle step (None without ``--reference-images``)."""
    if plan.bundle_set is None:
        return None
    from .reference import make_bundle

    s = plan.bundle_set
    bundle = make_bundle(plan.checkpoint, fp32.manifest, s.frames, s.labels, s.ignore_index, s.source,
                         plan.out_dir / "reference")
    fewer = "" if plan.cfg.reference_images is not None or len(s.frames) >= REFERENCE_IMAGES else \
        f"; {len(s.frames)} images at {plan.size[0]}x{plan.size[1]} hold the pixels of {REFERENCE_IMAGES} at 512x1024" \
        ", --reference-images sets the count"
    log(f"wrote {bundle} (reference bundle: {s.source}, for check on a device without PyTorch{fewer})")
    return bundle


def export_model(checkpoint: str | os.PathLike[str], cfg: ExportConfig, log: Log | None = None) -> ExportResult:
    """Checkpoint -> FP32 ONNX (+ FP16, INT8 Q/DQ, engine as asked), each verified, with manifests.

    Everything the user gave is checked before anything is written (:func:`.plan.plan_export`): a bad option,
    checkpoint, size or calibration folder leaves the output folder untouched.

    Raises:
        ConfigError, CheckpointError, CalibrationError, MissingDependencyError: bad input (before writing), a
            form whose attention map TensorRT refuses (2^31 elements), a graph this machine cannot verify
            (``limits``).
        ExportError, CompatibilityError, PrecisionError: a graph that does not meet its contract.
        Interrupted: Ctrl-C; the message lists the artifacts complete so far (nothing is half-written).
        RunLocked: another run is writing into the output folder.
        StorageError: the disk filled (the artifacts written before stay; none is half-written).
    """
    log = log or (lambda _msg: None)
    plan = plan_export(checkpoint, cfg)
    check_sizes(plan)  # TensorRT's 2^31-element limit on PAM's map, before anything is traced (limits.py)
    with run_lock(plan.out_dir, "export"):  # a second export into the folder is refused in one line
        remove_stale_temporaries(plan.out_dir, plan.output_names()[0])  # what a killed export left
        return _export(plan, log)


def _export(plan: ExportPlan, log: Log) -> ExportResult:
    """:func:`export_model`'s steps, once the output folder is held."""
    cfg = plan.cfg  # as resolved (a QAT checkpoint fixes its recipe and target)
    artifacts: list[Artifact] = []
    try:
        fp32 = _write_fp32(plan, artifacts, log)
        ref = fp32.outputs if fp32.outputs is not None else run_graph(ort_session(fp32.path), fp32.manifest, plan.frames)
        bundle = _write_bundle(plan, fp32, log)
        evaluator = None
        if plan.budget_set is not None:
            evaluator = plan.budget_set.evaluator(fp32.path, fp32.manifest)
            log(f"accuracy budget measured on {plan.budget_set.source}")
        options = RecipeOptions(tuple(fp32.manifest.mean), tuple(fp32.manifest.std), cfg.calib_method,
                                cfg.include_attention, cfg.target, plan.loaded.qat)
        calibration = None
        for recipe in track(plan.recipes, "derived graphs"):
            calibration = derive(plan, recipe, fp32, ref, options, evaluator, artifacts, log) or calibration
        if cfg.fused_io:
            artifacts = fuse_artifacts(artifacts, plan.frames, cfg.target, log)
        if plan.build_engine is not None:
            artifacts += _build_engines(plan.build_engine, list(artifacts), log)
        return ExportResult(artifacts, fp32.manifest.extra["attention"], plan.warnings, calibration, bundle)
    except KeyboardInterrupt as e:
        if isinstance(e, Interrupted):
            raise
        done = [a.path.name for a in artifacts]
        raise Interrupted(f"interrupted: {len(done)} artifact(s) complete in {plan.out_dir}"
                          + (f" ({', '.join(done)})" if done else "") + ", nothing half-written") from None


def _fmt(ver: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" if isinstance(v, str) else f"{k} {v:.3g}" if "l2" in k else
                     f"{k} {v:.3f}" if "kappa" in k else f"{k} {v:.4%}" for k, v in ver.items())
