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
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CalibrationError, ConfigError, EngineError, ManifestError, MissingDependencyError
from .manifest import Manifest, read_manifest, write_manifest
from .utils import atomic_path, sha256_file

__all__ = ["EngineConfig", "BuildPlan", "plan_build", "build_engine", "check_engine_compat",
           "calibration_files", "trt_major", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass
class EngineConfig:
    """How to build an engine.

    Attributes:
        workspace_mib: builder workspace memory pool limit (MiB).
        opt_level: builder optimisation level 0..5 (None = TensorRT's default, 3).
        timing_cache: timing cache file, read when present and written back after the build.
        dla_core: DLA core index (Jetson Orin/Xavier); None = GPU only.
        gpu_fallback: with DLA, run layers DLA cannot take on the GPU.
        fp16: TensorRT 10.x only: weakly typed build that may pick FP16 kernels (``BuilderFlag.FP16``).
        int8_calib: TensorRT 10.x only: folder of calibration images for implicit INT8
            (``IInt8EntropyCalibrator2``); the graph must be FP32 without Q/DQ.
        calib_images: how many images of ``int8_calib`` to use (sorted by name).
        calib_cache: calibration cache file (default ``<onnx>.<sha8>.calib.cache`` beside the ONNX).
        verbose: TensorRT logger at VERBOSE instead of WARNING.
    """

    workspace_mib: int = 1024
    opt_level: int | None = None
    timing_cache: Path | None = None
    dla_core: int | None = None
    gpu_fallback: bool = True
    fp16: bool = False
    int8_calib: Path | None = None
    calib_images: int = 500
    calib_cache: Path | None = None
    verbose: bool = False

    @property
    def strongly_typed(self) -> bool:
        return not (self.fp16 or self.int8_calib is not None)


@dataclass
class BuildPlan:
    """What :func:`build_engine` will do, decided without TensorRT.

    Attributes:
        trt_version: the TensorRT version planned for.
        strongly_typed: network created with ``STRONGLY_TYPED`` (always true on 11.x).
        flags: builder flags by name, e.g. ``["STRONGLY_TYPED"]`` or ``["FP16", "INT8", "GPU_FALLBACK"]``.
        precision: precision recorded in the engine's manifest.
        calib_cache: calibration cache path (implicit INT8 only).
        trtexec: the equivalent ``trtexec`` command line (argv list).
        refusals: reasons the build cannot go ahead (empty when it can).
        warnings: things the user should know (DLA with an FP32 graph...).
    """

    trt_version: str
    strongly_typed: bool
    flags: list[str]
    precision: str
    calib_cache: Path | None
    trtexec: list[str]
    refusals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def trtexec_command(self) -> str:
        return shlex.join(self.trtexec)


def trt_major(version: str) -> int:
    """``"10.3.0.30"`` -> 10. Raises ConfigError on a malformed version string."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise ConfigError(f"cannot read a TensorRT version from {version!r}") from None


def _default_calib_cache(onnx_path: Path) -> Path:
    digest = sha256_file(onnx_path)[:8] if onnx_path.is_file() else "nohash"
    return onnx_path.with_name(f"{onnx_path.stem}.{digest}.calib.cache")


def plan_build(onnx_path: str | os.PathLike[str], cfg: EngineConfig, trt_version: str,
               out_path: str | os.PathLike[str] | None = None, manifest: Manifest | None = None) -> BuildPlan:
    """Decide flags, refusals and the trtexec command for ``trt_version`` (pure; no TensorRT).

    Rules: TensorRT < 10 is refused; on 11.x ``fp16`` and ``int8_calib`` are refused (weak typing and
    implicit calibration were removed: bake the precision into the ONNX); implicit INT8 on a graph
    that already is FP16 or INT8 (Q/DQ) is refused, as is FP16 on an INT8 graph; option ranges are checked.
    """
    onnx_path = Path(onnx_path)
    out_path = Path(out_path) if out_path is not None else onnx_path.with_suffix(".engine")
    major = trt_major(trt_version)
    refusals: list[str] = []
    warnings: list[str] = []
    if major < 10:
        refusals.append(f"TensorRT {trt_version} is not supported: danet-edge needs 10.x (JetPack 6) or 11.x")
    if major >= 11 and cfg.fp16:
        refusals.append(f"--fp16 is a weakly typed build, removed in TensorRT 11 (this is {trt_version}): "
                        "export an FP16 graph (danet-edge export --precision fp16) and build it as is")
    if major >= 11 and cfg.int8_calib is not None:
        refusals.append(f"--int8-calib is implicit INT8 calibration, removed in TensorRT 11 (this is {trt_version}): "
                        "quantize the graph with Q/DQ (danet-edge export --precision int8) and build it as is")
    precision = manifest.precision if manifest is not None else "fp32"
    if manifest is not None and cfg.int8_calib is not None and manifest.precision != "fp32":
        refusals.append(f"--int8-calib needs an FP32 graph; {onnx_path.name} is {manifest.precision} "
                        "(its precision is already in the graph: build without --int8-calib)")
    if manifest is not None and cfg.fp16 and manifest.precision == "int8":
        refusals.append(f"--fp16 on an INT8 Q/DQ graph ({onnx_path.name}) is refused: build it strongly typed")
    if cfg.workspace_mib <= 0:
        refusals.append(f"workspace must be a positive number of MiB, got {cfg.workspace_mib}")
    if cfg.opt_level is not None and not 0 <= cfg.opt_level <= 5:
        refusals.append(f"builder optimisation level must be 0..5, got {cfg.opt_level}")
    if cfg.dla_core is not None and cfg.dla_core < 0:
        refusals.append(f"DLA core must be >= 0, got {cfg.dla_core}")
    if cfg.calib_images <= 0:
        refusals.append(f"calibration image count must be positive, got {cfg.calib_images}")

    strongly_typed = cfg.strongly_typed or major >= 11
    flags: list[str] = ["STRONGLY_TYPED"] if strongly_typed else []
    calib_cache = None
    if not strongly_typed:
        if cfg.fp16:
            flags.append("FP16")
            precision = "fp16" if precision == "fp32" else precision
        if cfg.int8_calib is not None:
            flags.append("INT8")
            precision = "int8"
            calib_cache = Path(cfg.calib_cache) if cfg.calib_cache else _default_calib_cache(onnx_path)
    if cfg.dla_core is not None:
        if cfg.gpu_fallback:
            flags.append("GPU_FALLBACK")
        if precision == "fp32" and strongly_typed:
            warnings.append("DLA runs FP16 and INT8 only: an FP32 graph will fall back to the GPU layer by layer "
                            "(build an FP16 or INT8 graph for the DLA)")

    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={out_path}"]
    if strongly_typed and major == 10:
        cmd.append("--stronglyTyped")
    cmd.append(f"--memPoolSize=workspace:{cfg.workspace_mib}M")
    if cfg.opt_level is not None:
        cmd.append(f"--builderOptimizationLevel={cfg.opt_level}")
    if cfg.timing_cache is not None:
        cmd.append(f"--timingCacheFile={cfg.timing_cache}")
    if cfg.dla_core is not None:
        cmd.append(f"--useDLACore={cfg.dla_core}")
        if cfg.gpu_fallback:
            cmd.append("--allowGPUFallback")
    if "FP16" in flags:
        cmd.append("--fp16")
    if "INT8" in flags:
        cmd += ["--int8", f"--calib={calib_cache}"]  # trtexec reads the cache written by build_engine
    return BuildPlan(str(trt_version), strongly_typed, flags, precision, calib_cache, cmd, refusals, warnings)


def check_engine_compat(built: dict[str, Any] | None, trt_version: str, compute_capability: tuple[int, int],
                        gpu_name: str = "") -> None:
    """Refuse an engine built for another GPU or TensorRT version (engines are not portable).

    Args:
        built: the manifest's ``tensorrt`` entry (``version``, ``compute_capability`` as ``"8.7"``).
        trt_version: TensorRT here; compute_capability: this GPU's ``(major, minor)``.

    Raises:
        ManifestError: the manifest has no ``tensorrt`` entry.
        EngineError: e.g. "engine built for sm_87 with TensorRT 10.3.0, this GPU is sm_89 with
            TensorRT 10.7.0: rebuild on this device".
    """
    if not built or "version" not in built or "compute_capability" not in built:
        raise ManifestError("engine manifest has no 'tensorrt' entry with version and compute_capability "
                            "(build engines with danet-edge build)")
    try:
        b_cc = tuple(int(v) for v in str(built["compute_capability"]).split("."))
    except ValueError:
        raise ManifestError(f"engine manifest compute_capability {built['compute_capability']!r} is not 'major.minor'") \
            from None
    b_ver = ".".join(str(built["version"]).split(".")[:3])
    here_ver = ".".join(str(trt_version).split(".")[:3])
    here_cc = tuple(int(v) for v in compute_capability)
    if b_ver != here_ver or b_cc != here_cc:
        gpu = f" ({gpu_name})" if gpu_name else ""
        raise EngineError(f"engine built for sm_{''.join(map(str, b_cc))} with TensorRT {b_ver}, this GPU{gpu} is "
                          f"sm_{''.join(map(str, here_cc))} with TensorRT {here_ver}: rebuild on this device "
                          "(danet-edge build MODEL.onnx)")


def calibration_files(folder: str | os.PathLike[str], limit: int) -> list[Path]:
    """The first ``limit`` images (by name) of ``folder`` for calibration.

    Raises:
        CalibrationError: folder missing or without images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"{folder}: calibration folder not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise CalibrationError(f"{folder}: no calibration images ({', '.join(IMAGE_SUFFIXES)})")
    return files[:limit]


def _no_tensorrt_hint(onnx_path: Path, plan: BuildPlan) -> str:
    return (f"build it on the target (the Jetson) with {onnx_path.name} and {onnx_path.name}.json copied over: "
            f"`danet-edge build {onnx_path.name}` or `{plan.trtexec_command}`")


def _make_calibrator(trt: Any, cuda: Any, files: list[Path], manifest: Manifest, cache: Path) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``files`` through ``preprocess.preprocess`` (TensorRT 10.x only)."""
    import cv2

    from .preprocess import preprocess, resize_image

    batch = manifest.batch_size
    shape = tuple(manifest.input_shape)
    in_dtype = np.uint8 if manifest.input_dtype == "uint8" else np.float32

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.stream = cuda.create_stream()
            self.buf = cuda.alloc(shape, in_dtype)

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index + batch > len(files):
                return None
            frames = []
            for p in files[self.index:self.index + batch]:
                bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise CalibrationError(f"{p}: not a readable image")
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            self.index += batch
            if in_dtype == np.uint8:
                x = np.stack([resize_image(f, manifest.image_size) for f in frames])
            else:
                x = preprocess(frames, manifest.image_size, manifest.mean, manifest.std)
            np.copyto(self.buf.host, x.reshape(shape))
            cuda.h2d_async(self.buf, self.stream)
            cuda.synchronize(self.stream)
            return [self.buf.device]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            with atomic_path(cache) as tmp:
                tmp.write_bytes(bytes(data))

    return EntropyCalibrator()


def build_engine(onnx_path: str | os.PathLike[str], out_path: str | os.PathLike[str] | None = None,
                 cfg: EngineConfig | None = None) -> Path:
    """Build a TensorRT engine from a static-shape ONNX graph; writes ``out`` and ``out.json``.

    The engine file is the plain serialized engine (no header: trtexec and DeepStream load it). The
    manifest is the ONNX's, with ``kind="engine"`` and ``tensorrt = {version, gpu_name,
    compute_capability, flags, dla_core, trtexec}``.

    Args:
        out_path: engine file (``.engine`` / ``.plan``), or a folder to put ``<onnx stem>.engine`` in;
            default: the ONNX path with suffix ``.engine``.

    Returns:
        The engine path.

    Raises:
        DataError: ONNX file missing. ManifestError: its manifest missing or not matching the graph.
        ConfigError: options refused for this TensorRT version (see :func:`plan_build`).
        MissingDependencyError: tensorrt or a CUDA Python API missing (says where to build instead).
        EngineError: no GPU, ONNX parser errors (with node names), build failure.
    """
    from .errors import DataError

    cfg = cfg or EngineConfig()
    onnx_path = Path(onnx_path)
    if out_path is None:
        out_path = onnx_path.with_suffix(".engine")
    elif Path(out_path).is_dir() or not Path(out_path).suffix:
        out_path = Path(out_path) / f"{onnx_path.stem}.engine"  # a folder: <stem>.engine inside it
    out_path = Path(out_path)
    if not onnx_path.is_file():
        raise DataError(f"{onnx_path}: ONNX file not found")
    if onnx_path.suffix != ".onnx":
        raise ConfigError(f"{onnx_path}: build takes an .onnx graph, not {onnx_path.suffix or 'a file without suffix'}")
    if out_path.suffix not in (".engine", ".plan"):
        raise ConfigError(f"{out_path}: engine files end in .engine or .plan (the runtime picks the backend by suffix)")
    manifest = read_manifest(onnx_path)

    from ._optional import import_tensorrt

    try:
        trt = import_tensorrt()
    except MissingDependencyError as e:
        plan = plan_build(onnx_path, cfg, "10.3.0", out_path, manifest)
        raise MissingDependencyError(f"{e}; or {_no_tensorrt_hint(onnx_path, plan)}") from None
    plan = plan_build(onnx_path, cfg, trt.__version__, out_path, manifest)
    if plan.refusals:
        raise ConfigError("; ".join(plan.refusals))

    from .runtime.cuda import cuda_api

    cuda = cuda_api()
    try:
        device = cuda.device_info(0)
    except Exception as e:  # no driver / no GPU: the CUDA API raises its own error types
        raise EngineError(f"no usable CUDA GPU here ({e}); {_no_tensorrt_hint(onnx_path, plan)}") from None

    logger = trt.Logger(trt.Logger.VERBOSE if cfg.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise EngineError(f"TensorRT could not create a builder (no GPU?); {_no_tensorrt_hint(onnx_path, plan)}")
    net_flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(net_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            errs.append(f"node {err.node_name() or err.node()} ({err.node_operator() or '?'}): {err.desc()}")
        raise EngineError(f"{onnx_path}: TensorRT's ONNX parser failed: " + "; ".join(errs[:5]))
    _check_network_io(network, manifest, onnx_path)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mib << 20)
    if cfg.opt_level is not None:
        config.builder_optimization_level = cfg.opt_level
    cache_blob = cfg.timing_cache.read_bytes() if cfg.timing_cache and Path(cfg.timing_cache).is_file() else b""
    timing_cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(timing_cache, False)
    if cfg.dla_core is not None:
        if builder.num_DLA_cores <= cfg.dla_core:
            raise EngineError(f"DLA core {cfg.dla_core} asked for, this device has {builder.num_DLA_cores} DLA cores")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = cfg.dla_core
        if cfg.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if "FP16" in plan.flags:
        config.set_flag(trt.BuilderFlag.FP16)
    if "INT8" in plan.flags:
        config.set_flag(trt.BuilderFlag.INT8)
        files = calibration_files(cfg.int8_calib, cfg.calib_images)
        if len(files) < manifest.batch_size:
            raise CalibrationError(f"{cfg.int8_calib}: {len(files)} images, fewer than one batch "
                                   f"of {manifest.batch_size}")
        config.int8_calibrator = _make_calibrator(trt, cuda, files, manifest, plan.calib_cache)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"{onnx_path}: TensorRT build failed (see the TensorRT log above); "
                          f"equivalent command: {plan.trtexec_command}")
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb") as f:
            f.write(serialized)
    if cfg.timing_cache is not None:
        with atomic_path(cfg.timing_cache) as tmp:
            with open(tmp, "wb") as f:
                f.write(config.get_timing_cache().serialize())
    engine_manifest = dataclasses.replace(
        manifest, kind="engine", precision=plan.precision,
        tensorrt={"version": str(trt.__version__), "gpu_name": device.name,
                  "compute_capability": f"{device.compute_capability[0]}.{device.compute_capability[1]}",
                  "flags": plan.flags, "dla_core": cfg.dla_core, "workspace_mib": cfg.workspace_mib,
                  "opt_level": cfg.opt_level, "calib_cache": str(plan.calib_cache) if plan.calib_cache else None,
                  "source_onnx_sha256": sha256_file(onnx_path), "trtexec": plan.trtexec_command})
    write_manifest(out_path, engine_manifest)
    return out_path


def _check_network_io(network: Any, manifest: Manifest, onnx_path: Path) -> None:
    """The parsed network's single input/output names and shapes must be the manifest's."""
    if network.num_inputs != 1 or network.num_outputs != 1:
        raise ManifestError(f"{onnx_path}: network has {network.num_inputs} inputs and {network.num_outputs} "
                            "outputs, expected 1 and 1")
    for what, t, name, shape in (("input", network.get_input(0), manifest.input_name, manifest.input_shape),
                                 ("output", network.get_output(0), manifest.output_name, manifest.output_shape)):
        if t.name != name or list(t.shape) != list(shape):
            raise ManifestError(f"{onnx_path}: network {what} is {t.name!r} {list(t.shape)}, the manifest says "
                                f"{name!r} {shape}")
