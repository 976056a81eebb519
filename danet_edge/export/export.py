"""Export a checkpoint to static-shape ONNX (FP32), then FP16 and INT8 Q/DQ graphs, each verified.

``export_model(checkpoint, ExportConfig)`` runs the stages and returns an ``ExportResult``; each stage
is its own function from artifact to artifact: ``export_onnx`` (here), ``precision.convert_fp16``,
``quantize.quantize_int8`` (through the precision recipes of ``recipes.py``), ``engine.build_engine``.

FP32 graph choices (torch 2.15):

* ``torch.onnx.export(..., dynamo=False)`` (TorchScript path): the dynamo path needs onnxscript and
  gives nothing the static graph needs; the TorchScript path with fixed input shapes, then onnxslim's
  constant folding, leaves no ``Shape`` arithmetic and no symbolic dimension.
* PAM exported with ``set_attention("explicit")``: MatMul -> Softmax -> (Transpose) -> MatMul, the
  pattern TensorRT fuses; the SDPA path adds scale Muls around the MatMuls.
* eval mode: only the fused logits (auxiliary heads and Dropout are not in the graph).
* input ``images`` ``(N, 3, H, W) float32`` normalised, output ``logits`` ``(N, K, H, W) float32``;
  with ``fused_io``: input ``images`` ``(N, H, W, 3) uint8`` RGB (Cast, Transpose, Sub, Mul in the graph)
  and output ``labels`` ``(N, H, W) int32`` (ArgMax, Cast in the graph).

Every graph is checked (``onnx.checker`` full check, ``trtcheck``), carries its manifest in
``metadata_props['danet_edge_manifest']`` and in a ``.json`` sidecar, and is verified against the
PyTorch model on real images (the calibration set when given, else synthetic street scenes).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ..data.calib import CalibrationSet, load_calibration_set
from ..core.config import CALIB_DIR, CALIB_IMAGES
from .config import ExportConfig
from ..model.checkpoint import LoadedModel, checkpoint_manifest, load_model
from ..core.compare import OutputComparison, relative_l2  # noqa: F401 - relative_l2 is API here too
from ..core.errors import CheckpointError, ConfigError, ExportError, Interrupted, MissingDependencyError
from ..core.onnx_meta import METADATA_KEY
from ..core.manifest import Manifest, manifest_json, manifest_path, read_manifest, write_manifest
from ..graph.precision import format_report, precision_report, verify_precision
from ..core.progress import track
from .recipes import PrecisionRecipe, RecipeInput, RecipeOptions, get_recipe
from .budget import apply_budget, budget_images, export_images
from ..data.frames import model_inputs
from .graph_io import fuse_io
from ..graph.trtcheck import enforce_tensorrt_compat
from ..core.utils import atomic_path

#: Least share of equal class maps a fused-I/O graph must give against the graph or model it came from.
MIN_FUSED_AGREEMENT = 0.999

__all__ = ["ExportConfig", "MIN_FUSED_AGREEMENT", "Artifact", "ExportResult", "export_model", "export_onnx", "attention_memory_mib",
           "relative_l2", "METADATA_KEY"]

Log = Callable[[str], None]


@dataclass
class Artifact:
    """One written file: path, manifest, seconds it took, precision report and verification figures."""

    path: Path
    manifest: Manifest
    seconds: float
    report: dict[str, Any] | None = None
    verification: dict[str, float] = field(default_factory=dict)


@dataclass
class ExportResult:
    """Artifacts written (FP32 first, engines last with --engine), the PAM attention-map memory (MiB) per
    precision, warnings, the calibration record and the reference bundle folder (None with 0 images)."""

    artifacts: list[Artifact]
    attention_mib: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    reference_bundle: Path | None = None


def attention_memory_mib(h: int, w: int, output_stride: int, batch: int = 1, bytes_per_value: int = 4) -> float:
    """PAM's attention map size in MiB: ``N^2 * bytes * batch`` with ``N = (H/OS) * (W/OS)``."""
    n = (h // output_stride) * (w // output_stride)
    return n * n * bytes_per_value * batch / 2**20


# ------------------------------------------------------------------------------------------- checks
def _resolve_size(cfg: ExportConfig, loaded: LoadedModel) -> tuple[int, int]:
    size = cfg.imgsz or loaded.data.get("image_size")
    if size is None:
        raise ConfigError(f"{loaded.path}: the checkpoint records no image size; give --imgsz H W")
    h, w = int(size[0]), int(size[1])
    os_ = loaded.config.output_stride
    if h % os_ or w % os_:
        raise ConfigError(f"image size {h}x{w} is not divisible by the output stride {os_}: use e.g. "
                          f"--imgsz {max(os_, round(h / os_) * os_)} {max(os_, round(w / os_) * os_)}")
    return h, w


def _engine_builder() -> Callable[..., Any]:
    """``danet_edge.trt.build.build_engine``, imported lazily, or a clear MissingDependencyError."""
    from ..core.optional import import_tensorrt

    import_tensorrt()  # raises MissingDependencyError naming what to install
    try:
        from ..trt.build import build_engine
    except ImportError as e:
        raise MissingDependencyError(f"--engine needs danet_edge.trt.build (the TensorRT builder): {e}") from None
    return build_engine


# ------------------------------------------------------------------------------------------- FP32
def _fused_manifest(m: Manifest) -> Manifest:
    """The manifest of ``graph_io.fuse_io``'s graph: uint8 ``(N, H, W, 3)`` in, int32 ``(N, H, W)`` labels out."""
    n, (h, w) = m.batch_size, m.image_size
    return replace(m, input_shape=[n, h, w, 3], input_dtype="uint8", output_name="labels", output_shape=[n, h, w],
                   output_dtype="int32", output_kind="labels")


def _fuse_artifacts(artifacts: list[Artifact], frames: list[np.ndarray], target: str, log: Log) -> list[Artifact]:
    """Rewrite each ONNX artifact to fused I/O in place (``graph_io.fuse_io``), after calibration and the budget,
    and verify its class maps against the logits graph it came from (at least 99.9 % of pixels agree; only the
    grouping of the normalisation's arithmetic changes)."""
    from ..runtime.ort_backend import holds_fp16

    done = []
    for a in artifacts:
        logits_form = _ort_session(a.path, a.manifest.precision, holds_fp16(a.manifest))
        before = _run(logits_form, a.manifest, frames).argmax(1)
        model = fuse_io(onnx.load(str(a.path)), a.manifest.mean, a.manifest.std)
        manifest = _fused_manifest(a.manifest)
        report = precision_report(model)
        manifest.precision_report = report.to_dict()
        after = _run(_ort_session(model, manifest.precision, holds_fp16(manifest)), manifest, frames)
        agree = float((after == before).mean())
        if agree < MIN_FUSED_AGREEMENT:
            raise ExportError(f"{a.path.name}: fused-I/O class maps agree with the logits graph on {agree:.4%} "
                              "of pixels (< 99.9 %)")
        ver = {**(a.verification or {}), "fused_io_label_agreement": agree}
        manifest.extra = {**manifest.extra, "verification": ver}
        _finalize(model, a.path, manifest, str(manifest.target or target))
        log(f"fused I/O {a.path.name}: uint8 NHWC in, int32 class map out; agreement with its logits form {agree:.4%}")
        done.append(Artifact(a.path, manifest, a.seconds, report.to_dict(), ver))
    return done


def _synthetic_frames(n: int, size: tuple[int, int], seed: int) -> list[np.ndarray]:
    """``n`` synthetic street scenes ``(H, W, 3) uint8`` RGB (``danet_edge.data.synthetic``), seeded."""
    from ..data.synthetic import render_scene

    rng = np.random.default_rng([seed, 7])
    return [render_scene(rng, size[0], size[1])[0] for _ in range(n)]


def _ort_session(model: onnx.ModelProto | str | os.PathLike[str], precision: str = "fp32",
                 fp16_inside: bool = False):
    """CPU session with the session options every backend uses for ``precision``
    (``runtime.ort_backend.session_options``: FP16 graphs unoptimised, so FP16 overflow is not hidden)."""
    import onnxruntime as ort

    from ..runtime.ort_backend import session_options

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, session_options(precision, 0, fp16_inside), providers=["CPUExecutionProvider"])


def _run(session, manifest: Manifest, frames: list[np.ndarray]) -> np.ndarray:
    outs = [session.run(None, {manifest.input_name: x})[0] for x in model_inputs(frames, manifest)]
    return np.concatenate(outs)[:len(frames)]


def _finalize(model: onnx.ModelProto, path: Path, manifest: Manifest, target: str) -> None:
    """Validate and embed the manifest, run the full checker and the TensorRT rules, write graph + sidecar.

    The manifest is validated first by the rules every reader applies (``manifest.manifest_json``), so export
    never writes a sidecar that ``infer`` refuses. Both files are written to temporary names beside their
    targets; then the graph is renamed, then the sidecar. Two renames are never one atomic step: a kill
    between them leaves the new graph beside the old sidecar. Readers close that window by detection:
    ``manifest.read_manifest`` compares the sidecar with the manifest embedded here
    (``metadata_props[METADATA_KEY]``) and refuses a mismatch in one line, instead of running with the old
    normalisation.
    """
    sidecar = manifest_path(path)
    sidecar_text = manifest_json(manifest, str(sidecar))
    enforce_tensorrt_compat(model, target)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(manifest.to_dict())
    model.producer_name = "danet-edge"
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{path.name}: ONNX checker failed: {str(e).splitlines()[0]}") from None
    with atomic_path(sidecar) as tmp_sidecar, atomic_path(path) as tmp_graph:
        tmp_sidecar.write_text(sidecar_text)
        onnx.save(model, str(tmp_graph))
    # leaving the block renames the graph (inner), then the sidecar (outer)


def export_onnx(loaded: LoadedModel, out: str | os.PathLike[str], size: tuple[int, int], batch: int | None = None,
                opset: int | None = None, fused_io: bool = False, frames: list[np.ndarray] | None = None,
                tolerance: float | None = None, target: str | None = None) -> Artifact:
    """PyTorch model -> verified static-shape FP32 ONNX at ``out`` (+ ``out.json``).

    Args:
        loaded: ``checkpoint.load_model`` result.
        size: ``(H, W)``, multiples of the output stride.
        batch, opset, tolerance, target: None = :class:`~danet_edge.export.config.ExportConfig`'s defaults.
        frames: verification images ``(H, W, 3) uint8 RGB`` (any size); default synthetic.
        tolerance: ONNX Runtime vs PyTorch logits relative L2 limit (fused I/O: label agreement >= 99.9 %).

    Raises:
        ExportError: export, checker or verification failure (says by how much).
        CompatibilityError: TensorRT rule broken (``target="tensorrt"``).
    """
    import onnxslim

    batch = ExportConfig.default("batch") if batch is None else batch
    opset = ExportConfig.default("opset") if opset is None else opset
    tolerance = ExportConfig.default("tolerance") if tolerance is None else tolerance
    target = ExportConfig.default("target") if target is None else target
    t0 = time.perf_counter()
    out = Path(out)
    h, w = size
    model = loaded.model.eval()
    old_impl = model.head.sa.impl
    model.set_attention("explicit")
    base = checkpoint_manifest(loaded, (h, w), batch)
    net, dummy = model, torch.zeros(batch, 3, h, w)
    manifest = replace(base, kind="onnx", opset=opset, target=target)
    try:
        with tempfile.TemporaryDirectory(prefix="danet-edge-export-") as tmp:
            raw = Path(tmp) / "raw.onnx"
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript path is chosen on purpose
                torch.onnx.export(net, (dummy,), str(raw), input_names=[manifest.input_name],
                                  output_names=[manifest.output_name], opset_version=opset, dynamo=False,
                                  do_constant_folding=True, training=torch.onnx.TrainingMode.EVAL)
            graph = onnxslim.slim(onnx.load(str(raw)))
    except (RuntimeError, ValueError, torch.onnx.errors.OnnxExporterError) as e:
        raise ExportError(f"torch.onnx.export failed: {str(e).splitlines()[0]}") from None
    finally:
        model.set_attention(old_impl)
    graph.graph.name = "danet"
    if fused_io:
        graph = fuse_io(graph, manifest.mean, manifest.std)
        manifest = _fused_manifest(manifest)
    # verification against PyTorch on real (or synthetic) images
    frames = frames or _synthetic_frames(2, (h, w), 0)
    session = _ort_session(graph)
    got = _run(session, manifest, frames)
    with torch.no_grad():
        ref = torch.cat([model(torch.from_numpy(x)) for x in model_inputs(frames, manifest, fused=False)]
                        ).numpy()[:len(frames)]
    if fused_io:
        agree = float((got == ref.argmax(1)).mean())
        verification = {"label_agreement": agree}
        if agree < MIN_FUSED_AGREEMENT:
            raise ExportError(f"fused-I/O ONNX labels agree with PyTorch on {agree:.4%} of pixels (< 99.9 %)")
    else:
        err = relative_l2(got, ref)
        verification = {"rel_l2_vs_torch": err, "label_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}
        if not err < tolerance:
            raise ExportError(f"FP32 ONNX differs from PyTorch by relative L2 {err:.3g} (limit {tolerance:g}) "
                              f"on {len(frames)} images")
    report = precision_report(graph)
    verify_precision(report, "fp32")
    manifest.precision_report = report.to_dict()
    manifest.extra = {**manifest.extra, "verification": verification}
    _finalize(graph, out, manifest, target)
    return Artifact(out, manifest, time.perf_counter() - t0, report.to_dict(), verification)


# ------------------------------------------------------------------------------------------ stages
def _compare(path: Path, manifest: Manifest, frames: list[np.ndarray], ref: np.ndarray, what: str) -> dict[str, float]:
    """The derived graph against the FP32 graph on the verification images, through the comparison
    ``check`` uses (``compare.OutputComparison``)."""
    from ..runtime.ort_backend import holds_fp16

    got = _run(_ort_session(path, manifest.precision, holds_fp16(manifest)), manifest, frames)
    c = OutputComparison()
    if manifest.output_kind == "labels":
        c.update(got, ref)
    else:
        c.update(got.argmax(1), ref.argmax(1), got, ref)
    if c.nonfinite:
        raise ExportError(f"{what} graph {path.name} outputs inf/NaN on verification images")
    if not c.has_logits:
        return {"label_agreement_vs_fp32": c.agreement}
    return {"rel_l2_vs_fp32": c.rel_l2, "label_agreement_vs_fp32": c.agreement}


def _derived(fp32: Artifact, path: Path, precision: str, extra_manifest: dict[str, Any],
             include_attention: bool) -> tuple[onnx.ModelProto, Manifest, Any]:
    """Load a derived graph, check its precision is what was asked, build its manifest from FP32's."""
    model = onnx.load(str(path))
    report = precision_report(model)
    verify_precision(report, precision, include_attention)
    manifest = replace(fp32.manifest, precision=precision, precision_report=report.to_dict(), **extra_manifest)
    return model, manifest, report


def _recipes(cfg: ExportConfig) -> list[PrecisionRecipe]:
    """The recipes asked for (``ExportConfig.recipe_names``), as registry rows."""
    return [get_recipe(n) for n in cfg.recipe_names()]


def export_model(checkpoint: str | os.PathLike[str], cfg: ExportConfig, log: Log | None = None) -> ExportResult:
    """Checkpoint -> FP32 ONNX (+ FP16, INT8 Q/DQ, engine as asked), each verified, with manifests.

    Everything the user gave is checked before anything is written: a bad option, checkpoint, size
    or calibration folder leaves the output folder untouched.

    Raises:
        ConfigError, CheckpointError, CalibrationError, MissingDependencyError: bad input (before writing).
        ExportError, CompatibilityError, PrecisionError: a graph that does not meet its contract.
    """
    log = log or (lambda _msg: None)
    cfg.validate()
    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise CheckpointError(f"checkpoint {ckpt} does not exist")
    loaded = load_model(ckpt)
    h, w = _resolve_size(cfg, loaded)
    calib_set: CalibrationSet | None = None
    calibrated = any(r.needs_calibration for r in _recipes(cfg))
    calib_dir = cfg.calib if cfg.calib is not None else (CALIB_DIR if calibrated else None)
    if calib_dir is not None:
        count = cfg.calib_size if cfg.calib_size is not None else (CALIB_IMAGES if calibrated else cfg.verify_images)
        calib_set = load_calibration_set(calib_dir, count, cfg.seed)
    budget_set = budget_images(cfg, calib_set, loaded.data)
    bundle_set = export_images(cfg, calib_set, loaded.data, cfg.reference_images) \
        if cfg.reference_images else None
    build_engine = _engine_builder() if cfg.engine else None
    out_dir = cfg.out_dir(ckpt)
    warnings: list[str] = []

    os_ = loaded.config.output_stride
    n_pos = (h // os_) * (w // os_)
    att = {"fp32": attention_memory_mib(h, w, os_, cfg.batch, 4), "fp16": attention_memory_mib(h, w, os_, cfg.batch, 2)}
    log(f"PAM attention map: N = {n_pos} positions ({h}x{w} / OS {os_}), N^2 x batch {cfg.batch} = "
        f"{att['fp32']:.1f} MiB in FP32 (kept FP32 in every graph here), {att['fp16']:.1f} MiB if FP16")
    if att["fp32"] > cfg.memory_limit_mib:
        msg = (f"PAM attention map needs {att['fp32']:.0f} MiB at {h}x{w}, above --memory-limit-mib "
               f"{cfg.memory_limit_mib:g}: use a smaller --imgsz or output stride 16")
        warnings.append(msg)
        log("warning: " + msg)

    frames = list(calib_set.frames())[:cfg.verify_images] if calib_set is not None else \
        _synthetic_frames(cfg.verify_images, (h, w), cfg.seed)
    artifacts: list[Artifact] = []
    try:
        fp32 = export_onnx(loaded, out_dir / "model.onnx", (h, w), cfg.batch, cfg.opset, False, frames,
                           cfg.tolerance, cfg.target)  # logits: calibration, budget and checks work on them
        artifacts.append(fp32)
        log(f"wrote {fp32.path} ({fp32.seconds:.1f} s) verification {_fmt(fp32.verification)}")
        log(format_report(precision_report(onnx.load(str(fp32.path))), "fp32"))
        ref = _run(_ort_session(fp32.path), fp32.manifest, frames)
        bundle = None
        if bundle_set is not None:
            from .reference import make_bundle

            bundle = make_bundle(ckpt, fp32.manifest, bundle_set.frames, bundle_set.labels, bundle_set.ignore_index,
                                 bundle_set.source, out_dir / "reference")
            log(f"wrote {bundle} (reference bundle: {bundle_set.source}, for check on a device without PyTorch)")

        evaluator = budget_set.evaluator(fp32.path, fp32.manifest) if budget_set is not None else None
        if budget_set is not None:
            log(f"accuracy budget measured on {budget_set.source}")
        calibration = None
        options = RecipeOptions(tuple(fp32.manifest.mean), tuple(fp32.manifest.std), cfg.calib_method,
                                cfg.include_attention, cfg.target)
        for recipe in track(_recipes(cfg), "derived graphs"):
            if recipe.needs_calibration and calib_set is None:  # pragma: no cover - loaded above or refused
                raise ConfigError(f"the {recipe.name} recipe needs calibration images (--calib)")
            t0 = time.perf_counter()
            made = recipe.convert(RecipeInput(fp32.path, out_dir / recipe.file_name, calib_set, options))
            calibration = made.manifest_fields.get("calibration", calibration)
            budget = apply_budget(cfg, fp32.path, made.path, evaluator, warnings, log) \
                if evaluator is not None and recipe.precision == "int8" else None
            model, manifest, report = _derived(fp32, made.path, recipe.precision, made.manifest_fields,
                                               cfg.include_attention and recipe.attention_quantized)
            manifest.target = recipe.target or manifest.target
            manifest.extra = {**manifest.extra, "recipe": recipe.name, **({"budget": budget} if budget else {})}
            _finalize(model, made.path, manifest, str(manifest.target or cfg.target))
            ver = _compare(made.path, manifest, frames, ref, recipe.name)
            limit = cfg.fp16_tolerance if cfg.fp16_tolerance is not None and recipe.precision == "fp16" \
                else recipe.max_rel_l2
            if limit is not None and ver.get("rel_l2_vs_fp32", 0.0) > limit:
                raise ExportError(f"{recipe.name} graph differs from FP32 by relative L2 {ver['rel_l2_vs_fp32']:.3g} "
                                  f"(limit {limit:g})")
            manifest.extra = {**manifest.extra, "verification": ver}
            write_manifest(made.path, manifest)
            artifacts.append(Artifact(made.path, manifest, time.perf_counter() - t0, report.to_dict(), ver))
            log(f"wrote {made.path} ({artifacts[-1].seconds:.1f} s) verification {_fmt(ver)}")
            for line in made.log:
                log(line)
            log(format_report(report, recipe.precision))

        if cfg.fused_io:
            artifacts = _fuse_artifacts(artifacts, frames, cfg.target, log)
        if build_engine is not None:
            from ..trt.build import EngineConfig

            for src in list(artifacts):
                t0 = time.perf_counter()
                engine = Path(build_engine(src.path, src.path.with_suffix(".engine"), EngineConfig(), log=log))
                artifacts.append(Artifact(engine, read_manifest(engine), time.perf_counter() - t0))
                log(f"wrote {engine} ({artifacts[-1].seconds:.1f} s) from {src.path.name}")
        return ExportResult(artifacts, att, warnings, calibration, bundle)
    except KeyboardInterrupt as e:
        if isinstance(e, Interrupted):
            raise
        done = [a.path.name for a in artifacts]
        raise Interrupted(f"interrupted: {len(done)} artifact(s) complete in {out_dir}"
                          + (f" ({', '.join(done)})" if done else "") + ", nothing half-written") from None


def _fmt(ver: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3g}" if "l2" in k else f"{k} {v:.4%}" for k, v in ver.items())
