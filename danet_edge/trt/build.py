"""TensorRT engine build: ONNX (precision baked in) -> plain serialized engine + ``.engine.json`` manifest.

The default is a strongly typed network: the precision comes from the ONNX graph (FP32, FP16 from
``precision.convert_fp16``, INT8 from explicit Q/DQ). That is the only mode on TensorRT 11.x, where
``BuilderFlag.FP16/INT8`` and ``int8_calibrator`` are gone. On TensorRT 10.x (JetPack 6 ships 10.3)
the deprecated weakly typed paths stay available: ``fp16=True`` (``BuilderFlag.FP16``) and implicit
INT8 calibration with an ``IInt8EntropyCalibrator2`` reading images through ``preprocess.preprocess``.

:func:`plan_build` is pure (no TensorRT): it decides flags, refusals and the equivalent ``trtexec``
command for a given TensorRT version. :func:`build_engine` executes the plan.

TensorRT calls here are NOT EXECUTED on the development machine (TensorRT cannot be installed
there); written against the TensorRT Python API reference, 10.x and 11.x:
- Builder / ``create_network`` / ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (deprecated and
  ignored in 11.0, always on): https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html
  and .../11.0.0/_static/python-api/infer/Core/Builder.html
- OnnxParser ``parse_from_file``, ``num_errors``, ``get_error`` and ``IParserError.node_name /
  node_operator / desc``: .../python-api/parsers/Onnx/pyOnnx.html, c-api classnvonnxparser_1_1_i_parser_error
- IBuilderConfig ``set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)``, ``builder_optimization_level``,
  ``default_device_type = DeviceType.DLA``, ``DLA_core``, ``set_flag(BuilderFlag.GPU_FALLBACK / FP16 / INT8)``,
  ``int8_calibrator``, ``create_timing_cache``, ``set_timing_cache``, ``get_timing_cache``:
  .../python-api/infer/Core/BuilderConfig.html; timing cache usage: .../performance/builder-performance.html
- ``ITimingCache.serialize``: .../python-api/infer/Core/TimingCache.html
- ``IInt8EntropyCalibrator2`` (``get_batch_size``, ``get_batch``, ``read_calibration_cache``,
  ``write_calibration_cache``): .../python-api/infer/Int8/EntropyCalibrator2.html
- ``Builder.build_serialized_network``: .../python-api/infer/Core/Builder.html
- trtexec flags (``--stronglyTyped``, ``--memPoolSize=workspace:NM``, ``--builderOptimizationLevel``,
  ``--timingCacheFile``, ``--useDLACore``, ``--allowGPUFallback``, ``--fp16``, ``--int8 --calib``):
  https://docs.nvidia.com/deeplearning/tensorrt/latest/reference/command-line-programs.html
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

from .inspector import check_engine_compat  # noqa: F401 - part of this module's API
from .plan import (BuildPlan, EngineConfig, board_dla, engine_path, no_tensorrt_hint, plan_build,  # noqa: F401
                   trt_major, trt_version_tuple)
from ..core.errors import (CalibrationError, ConfigError, DataError, EngineError, Interrupted,
                     MissingDependencyError)
from ..core.manifest import Manifest, manifest_json, manifest_path, read_manifest
from ..core.utils import atomic_path, sha256_file
from ..core.io_contract import TensorSpec, check_io
from .attention import AUX_STREAMS_WHY, engine_memory, judge_attention, pin_islands
from .inspector import attention_fused, trt_dtype_name

__all__ = ["EngineConfig", "BuildPlan", "plan_build", "build_engine", "check_engine_compat", "trt_major",
           "trt_version_tuple", "make_progress_monitor"]



def _attach_timing_cache(trt: Any, config: Any, path: Path | None, log: Callable[[str], None]) -> str:
    """Attach the timing cache read from ``path`` (or a new one); returns its status for the manifest.

    A cache from another GPU or TensorRT version is rejected by ``set_timing_cache`` (returns False) and
    a corrupt one by ``create_timing_cache`` (returns None): both are replaced by a fresh cache, which the
    build then fills and :func:`build_engine` writes back (TensorRT docs, "Optimizing Builder Performance").
    """
    blob = path.read_bytes() if path is not None and path.is_file() else b""
    status = "reused" if blob else "new"
    cache = config.create_timing_cache(blob)
    if cache is None or not config.set_timing_cache(cache, False):
        why = "is unreadable" if cache is None else "was made on another GPU or TensorRT version"
        status = f"rejected: {why}; started a new one"
        log(f"warning: timing cache {path} {why}: starting a fresh one (written back after the build)")
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, False):
            raise EngineError("TensorRT refused a new, empty timing cache")
    return status


def _inspect(trt: Any, logger: Any, serialized: Any, dla_core: int | None, attention: set[str]) -> Any:
    """Deserialize the fresh engine and read each layer's precision from the engine inspector; with the engine's
    activation memory in bytes (``ICudaEngine.device_memory_size_v2``, 10.1+; ``device_memory_size`` before)."""
    from .inspector import parse_layer_info, summarize_layers

    try:
        runtime = trt.Runtime(logger)
    except TypeError as e:  # pybind11: "factory function returned nullptr"
        raise EngineError(f"TensorRT could not create a runtime to inspect the engine ({e})") from None
    if dla_core is not None:
        runtime.DLA_core = dla_core
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise EngineError("TensorRT could not deserialize the engine it just built (see the TensorRT log)")
    text = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    layers = parse_layer_info(text)
    memory = getattr(engine, "device_memory_size_v2", None)
    return layers, summarize_layers(layers, attention), int(memory if memory is not None else engine.device_memory_size)


def make_progress_monitor(trt: Any, sink: Callable[[str, str, int], None] | None) -> Any:
    """An ``IProgressMonitor`` (TensorRT 10+) that reports the builder's phases to ``sink(event, phase,
    value)``: ``("start", phase, num_steps)``, ``("step", phase, step)``, ``("finish", phase, 0)``
    (``sink`` None: report nothing, the monitor still serves Ctrl-C).

    TensorRT's Python wrapper reads an exception from ``step_complete`` as "cancel the build" and prints and
    drops one from ``phase_start`` / ``phase_finish`` (``PyProgressMonitor`` in ``python/src/infer/pyCore.cpp``,
    10.3 tag), so nothing may escape these methods unnoticed: the first exception (a display error, or the
    ``KeyboardInterrupt`` of a Ctrl-C, which Python delivers inside the next callback) is kept in
    ``monitor.error`` and the build is cancelled at the next step; :func:`build_engine` then names it.
    Source: TensorRT Python API, ``IProgressMonitor``.
    """

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.error: BaseException | None = None

        def _report(self, event: str, phase: str, value: int) -> None:
            if sink is None or self.error is not None:
                return
            try:
                sink(event, phase, value)
            except BaseException as e:  # noqa: BLE001 - kept, named after the cancelled build
                self.error = e

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._report("start", phase_name, int(num_steps))

        def step_complete(self, phase_name: str, step: int) -> bool:
            self._report("step", phase_name, int(step))
            return self.error is None  # False cancels the build

        def phase_finish(self, phase_name: str) -> None:
            self._report("finish", phase_name, 0)

    return Monitor()


def _cancelled(monitor: Any, onnx_path: Path) -> None:
    """Name why the builder returned nothing when the progress monitor cancelled it (see
    :func:`make_progress_monitor`).

    Raises:
        Interrupted: Ctrl-C during the build. EngineError: the progress display raised.
    """
    err = getattr(monitor, "error", None)
    if err is None:
        return
    if isinstance(err, KeyboardInterrupt):
        raise Interrupted(f"engine build of {onnx_path.name} interrupted: no engine written") from None
    raise EngineError(f"engine build of {onnx_path.name} cancelled: the progress display failed "
                      f"({type(err).__name__}: {err}); no engine written (run with -q to build without it)") from None


def build_engine(onnx_path: str | os.PathLike[str], out_path: str | os.PathLike[str] | None = None,
                 cfg: EngineConfig | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Build a TensorRT engine from a static-shape ONNX graph; writes ``out`` and ``out.json``.

    The engine file is the plain serialized engine (no header: trtexec and DeepStream load it). The
    manifest is the ONNX's with ``kind="engine"``, ``precision`` and ``precision_report`` read from the
    built engine's layers (engine inspector), and ``tensorrt = {version, gpu_name, compute_capability,
    flags, dla_core, layers (per-layer precision, type, formats, tactic), timing_cache, calibration,
    trtexec}``. Engine and manifest are written together at the end (both or neither).

    Args:
        out_path: engine file (``.engine`` / ``.plan``), or a folder to put ``<onnx stem>.engine`` in;
            default: the ONNX path with suffix ``.engine``.
        log: where warnings and progress go (default: nowhere).

    Returns:
        The engine path.

    Raises:
        DataError: ONNX file missing. ManifestError: its manifest missing or not matching the graph.
        ConfigError: options refused for this TensorRT version (see :func:`plan_build`).
        MissingDependencyError: tensorrt or a CUDA Python API missing (says where to build instead).
        CalibrationError: calibration folder unusable, or an image failed during calibration.
        EngineError: no GPU, ONNX parser errors (with node names), build failure, or an FP16 / INT8 graph
            whose engine has no FP16 / INT8 layer.
    """
    cfg = cfg or EngineConfig()
    log = log or (lambda msg: None)
    onnx_path = Path(onnx_path)
    out_path = engine_path(onnx_path, out_path)
    if not onnx_path.is_file():
        raise DataError(f"{onnx_path}: ONNX file not found")
    if onnx_path.suffix != ".onnx":
        raise ConfigError(f"{onnx_path}: build takes an .onnx graph, not {onnx_path.suffix or 'a file without suffix'}")
    if out_path.suffix not in (".engine", ".plan"):
        raise ConfigError(f"{out_path}: engine files end in .engine or .plan (the runtime picks the backend by suffix)")
    manifest = read_manifest(onnx_path)
    refused = board_dla(onnx_path.name, cfg.dla_core, manifest)[0] if cfg.dla_core is not None else []
    if refused:  # the board's DLA facts need no TensorRT: refused here too, not only where TensorRT is
        raise ConfigError("; ".join(refused))

    from ..core.optional import import_tensorrt

    try:
        trt = import_tensorrt()
    except MissingDependencyError as e:
        plan = plan_build(onnx_path, cfg, "10.3.0", out_path, manifest)
        raise MissingDependencyError(f"{e}; or {no_tensorrt_hint(onnx_path, plan)}") from None
    calib_set = calib_key = None
    if cfg.int8_calib is not None and trt_major(trt.__version__) < 11:
        from ..data.calib import load_calibration_set
        from .calibrator import calibration_key, default_cache_path

        calib_set = load_calibration_set(cfg.int8_calib, cfg.calib_images, cfg.calib_seed)
        if len(calib_set) < manifest.batch_size:
            raise CalibrationError(f"{cfg.int8_calib}: {len(calib_set)} images, fewer than one batch of "
                                   f"{manifest.batch_size}")
        calib_key = calibration_key(onnx_path, calib_set, manifest.batch_size)
        cfg = dataclasses.replace(cfg, calib_cache=Path(cfg.calib_cache or default_cache_path(onnx_path, calib_key)))
    plan = plan_build(onnx_path, cfg, trt.__version__, out_path, manifest)
    if plan.refusals:
        raise ConfigError("; ".join(plan.refusals))
    for w in plan.warnings:
        if "no calibration cache yet" not in w:  # build_engine writes that cache itself
            log(f"warning: {w}")
    from .cuda import open_device

    cuda, device = open_device(hint=no_tensorrt_hint(onnx_path, plan))
    logger = trt.Logger(trt.Logger.VERBOSE if cfg.verbose else trt.Logger.WARNING)
    builder, network, _parser = _parse(trt, logger, onnx_path, manifest, plan)
    config, timing_status = _configure(trt, builder, cfg, plan, log)
    pinned = pin_islands(trt, network, config, plan, onnx_path) if "FP16" in plan.flags else []
    log(f"building {out_path.name} with TensorRT {trt.__version__} on {device.name} (this can take minutes)")
    serialized, calibration = _build(trt, cuda, builder, network, config, plan, manifest, onnx_path,
                                     calib_set, calib_key)
    matmuls, pam = _attention(onnx_path)
    layers, summary, device_bytes = _inspect(trt, logger, serialized, cfg.dla_core, matmuls)
    fused = attention_fused(layers, pam)
    memory = engine_memory(manifest, device_bytes, len(bytes(serialized)), fused)
    kept = plan.fp32_islands if "FP16" in plan.flags else (manifest.precision_report or {}).get("fp32_islands") or []
    judge_attention(onnx_path, manifest, fused, memory, log, plan.precision, tuple(g[0] for g in pam if len(g) == 3),
                    tuple(kept))
    asked = plan.precision
    if asked in ("fp16", "int8") and summary.counts.get(asked, 0) == 0 and summary.reduced == 0:
        raise EngineError(f"{onnx_path.name} asked for {asked.upper()} but the engine TensorRT built runs every "
                          f"layer in FP32 ({summary.total} layers): check the graph's precision "
                          "(danet-edge check) or the build flags; nothing written")
    final_plan = plan_build(onnx_path, cfg, trt.__version__, out_path, manifest) if calibration else plan
    trt_entry = {"version": str(trt.__version__), "gpu_name": device.name,
                 "compute_capability": f"{device.compute_capability[0]}.{device.compute_capability[1]}",
                 "flags": plan.flags, "dla_core": cfg.dla_core, "workspace_mib": cfg.workspace_mib,
                 "opt_level": cfg.opt_level, "timing_cache": {"path": str(cfg.timing_cache) if cfg.timing_cache
                                                              else None, "status": timing_status},
                 "layers": [layer.to_dict() for layer in layers], "attention_fused": fused, "memory": memory,
                 **({"pinned_fp32": pinned} if pinned else {}),
                 **({"max_aux_streams": 0, "max_aux_streams_why": AUX_STREAMS_WHY} if plan.max_aux_streams == 0 else {}),
                 "source_onnx_sha256": sha256_file(onnx_path), "trtexec": final_plan.trtexec_command}
    if calibration:
        trt_entry["calibration"] = calibration
    engine_manifest = dataclasses.replace(manifest, kind="engine", precision=summary.precision,
                                          precision_report=summary.to_dict(), tensorrt=trt_entry)
    _write(out_path, serialized, engine_manifest, trt_entry, config if cfg.timing_cache is not None else None,
           cfg.timing_cache)
    log(f"engine layers: {summary.counts} (attention: {sorted(set(summary.attention.values())) or 'none found'}; "
        f"PAM as one fused attention kernel: {fused}); memory: activations {memory['device_mib']:.0f} MiB"
        + (f" (model {memory['estimate_mib']:.0f} MiB)" if isinstance(memory["estimate_mib"], (int, float)) else "")
        + f", engine {memory['engine_mib']:.0f} MiB")
    return out_path



def _parse(trt: Any, logger: Any, onnx_path: Path, manifest: Manifest, plan: BuildPlan) -> tuple[Any, Any, Any]:
    """Step 1, parse: a builder and the network parsed from the graph (strongly typed unless the plan says),
    its inputs and outputs checked against the manifest; the parser is returned too (it owns weights the
    network refers to, so it must live until the build is done).

    Raises:
        EngineError: no builder (no GPU or driver), or the ONNX parser's errors with node names.
        ManifestError: the network's I/O is not the manifest's.
    """
    try:
        builder = trt.Builder(logger)
    except TypeError as e:  # pybind11 raises TypeError when libnvinfer returns no builder
        raise EngineError(f"TensorRT could not create a builder ({e}): is the GPU visible and the driver "
                          f"loaded? {no_tensorrt_hint(onnx_path, plan)}") from None
    net_flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(net_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            errs.append(f"node {err.node_name() or err.node()} ({err.node_operator() or '?'}): {err.desc()}")
        raise EngineError(f"{onnx_path}: TensorRT's ONNX parser failed: " + "; ".join(errs[:5])
                          + (f" (and {len(errs) - 5} more)" if len(errs) > 5 else ""))
    _check_network_io(trt, network, manifest, onnx_path)
    return builder, network, parser


def _configure(trt: Any, builder: Any, cfg: EngineConfig, plan: BuildPlan, log: Callable[[str], None]
               ) -> tuple[Any, str]:
    """Step 2, configure: workspace, DETAILED profiling (per-layer precision in the inspector), optimisation
    level, timing cache, DLA and the plan's weak-typing flags. Returns the config and the timing cache status.

    Raises:
        EngineError: a DLA core the device does not have, or a timing cache TensorRT refuses.
    """
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mib << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if cfg.opt_level is not None:
        config.builder_optimization_level = cfg.opt_level
    timing_status = _attach_timing_cache(trt, config, cfg.timing_cache, log)
    if cfg.dla_core is not None:
        if builder.num_DLA_cores <= cfg.dla_core:
            raise EngineError(f"DLA core {cfg.dla_core} asked for, this device has {builder.num_DLA_cores} DLA cores")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = cfg.dla_core
        if cfg.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if "FP16" in plan.flags:
        config.set_flag(trt.BuilderFlag.FP16)
    if plan.max_aux_streams is not None:
        config.max_aux_streams = plan.max_aux_streams  # chunked PAM: one chunk at a time (AUX_STREAMS_WHY)
    return config, timing_status


def _build(trt: Any, cuda: Any, builder: Any, network: Any, config: Any, plan: BuildPlan, manifest: Manifest,
           onnx_path: Path, calib_set: Any, calib_key: dict[str, Any] | None) -> tuple[Any, dict[str, Any] | None]:
    """Step 3, build: the serialized engine (implicit INT8 through a calibrator when the plan says so), with a
    progress monitor attached so that Ctrl-C or a failing display cancels it with its cause named. Returns the
    serialized engine and the calibration record (None without implicit INT8).

    Raises:
        Interrupted, EngineError: cancelled (:func:`_cancelled`) or failed. CalibrationError: a calibration batch
            failed.
    """
    calibrator = None
    try:
        if "INT8" in plan.flags:
            from .calibrator import make_calibrator

            config.set_flag(trt.BuilderFlag.INT8)
            calibrator = make_calibrator(trt, cuda, calib_set, manifest, plan.calib_cache, calib_key)
            config.int8_calibrator = calibrator
        from ..core import progress

        monitor = None
        with progress.phases() as sink:
            if hasattr(trt, "IProgressMonitor"):  # also without bars: Ctrl-C cancels at the next step
                monitor = make_progress_monitor(trt, sink)
                config.progress_monitor = monitor
            serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            _cancelled(monitor, onnx_path)
        if calibrator is not None and calibrator.error is not None:
            raise CalibrationError(f"calibration stopped after {calibrator.batches} batches: {calibrator.error}; "
                                   "no engine and no calibration cache written")
    finally:
        if calibrator is not None:
            calibrator.close()
    if serialized is None:
        raise EngineError(f"{onnx_path}: TensorRT build failed (see the TensorRT log above); "
                          f"equivalent command: {plan.trtexec_command}")
    calibration = None
    if calibrator is not None:
        calibration = {"method": "EntropyCalibration2 (implicit, TensorRT 10)", "batches": calibrator.batches,
                       "images": [rel for rel, _ in calib_key["images"]], "seed": calib_set.seed,
                       "cache": str(plan.calib_cache), "cache_reused": calibrator.cache_reused, "key": calib_key["key"],
                       **({"cache_refused": calibrator.cache_refused} if calibrator.cache_refused else {})}
    return serialized, calibration


def _attention(onnx_path: Path) -> tuple[set[str], list[tuple[str, ...]]]:
    """The graph's attention MatMuls by ONNX node name (to find them among the engine's layers) and PAM's
    attentions, each as its ONNX nodes (``(energy MatMul, Softmax, output MatMul)`` or ``(Attention,)``)."""
    import onnx

    from ..graph.precision import attention_nodes

    att = attention_nodes(onnx.load(str(onnx_path), load_external_data=False))
    return set(att.matmuls), list(zip(att.pam_energy, att.pam_softmax, att.pam_out)) + [(a,) for a in att.pam_op]


def _write(out_path: Path, serialized: Any, engine_manifest: Manifest, trt_entry: dict[str, Any], config: Any,
           timing_cache: Path | None) -> None:
    """Step 4, write: engine and sidecar together (both or neither), then the timing cache the build filled.

    The sidecar records the engine's size and SHA-256 (read_manifest checks them on every load: 0.06 s per
    100 MiB here, small beside deserialisation). The block renames the sidecar (inner), then the engine: a kill
    between the two renames leaves an old engine beside the new sidecar, which that check refuses.
    """
    timing_blob = None
    if config is not None:
        tc = config.get_timing_cache()
        timing_blob = bytes(tc.serialize()) if tc is not None else None
    with atomic_path(out_path) as tmp_engine, atomic_path(manifest_path(out_path)) as tmp_manifest:
        with open(tmp_engine, "wb") as f:
            f.write(serialized)
        trt_entry["engine_bytes"] = tmp_engine.stat().st_size
        trt_entry["engine_sha256"] = sha256_file(tmp_engine)
        tmp_manifest.write_text(manifest_json(engine_manifest, str(manifest_path(out_path))))
    if timing_blob is not None and timing_cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(timing_blob)


def _check_network_io(trt: Any, network: Any, manifest: Manifest, onnx_path: Path) -> None:
    """The parsed network's inputs and outputs must be the manifest's (the one I/O contract)."""
    def spec(t: Any) -> TensorSpec:
        return TensorSpec.of(t.name, list(t.shape), trt_dtype_name(trt, t.dtype))

    check_io(onnx_path, manifest, [spec(network.get_input(i)) for i in range(network.num_inputs)],
             [spec(network.get_output(i)) for i in range(network.num_outputs)], kind="network")
