"""TensorRT build planning, decided without TensorRT: flags, refusals, warnings, the trtexec command.

:func:`plan_build` applies the TensorRT 10.x / 11.x rules (``engine.build_engine`` executes the plan):
TensorRT 11 removed weak typing (``BuilderFlag.FP16/INT8``) and implicit calibration
(``int8_calibrator``), so there the precision must be in the ONNX graph; trtexec 11 dropped ``--fp16``,
``--int8``, ``--calib`` and made ``--stronglyTyped`` a no-op. Sources: TensorRT docs "Migrating from
TensorRT 10.x to 11.x" and the trtexec page
(https://docs.nvidia.com/deeplearning/tensorrt/latest/reference/command-line-programs.html).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ..core.choices import ATTENTION_TENSORRT
from ..core.config import CALIB_IMAGES, Config, check_range, option
from ..core.errors import ConfigError
from ..core.manifest import Manifest
from ..graph.boards import BOARDS, board_of

__all__ = ["EngineConfig", "BuildPlan", "board_dla", "plan_build", "trt_major", "trt_version_tuple", "no_tensorrt_hint",
           "DLA_TRT11", "engine_path"]

#: The one TensorRT 11 release whose "Working with DLA" page supports DLA on a Jetson (AGX Orin, JetPack 7.2.2+;
#: 11.0 to 11.4.0 and 11.5.0 have none; Jetson Thor has no DLA at all).
DLA_TRT11 = (11, 4, 1)


@dataclass
class EngineConfig(Config):
    """How to build an engine.

    Attributes:
        workspace_mib: builder workspace memory pool limit (MiB).
        opt_level: builder optimisation level 0..5 (None = TensorRT's default, 3).
        timing_cache: timing cache file, read when present and written back after the build.
        dla_core: DLA core index (Jetson Orin/Xavier); None = GPU only.
        gpu_fallback: with DLA, run layers DLA cannot take on the GPU.
        fp16: TensorRT 10.x only: weakly typed build that may pick FP16 kernels (``BuilderFlag.FP16``).
        int8_calib: TensorRT 10.x only: calibration folder for implicit INT8 (``IInt8EntropyCalibrator2``),
            read as ``danet-edge export`` reads it (``calib.txt`` or every image under it, a seeded draw of
            ``calib_images``: ``calib.load_calibration_set``); the graph must be FP32 without Q/DQ.
        calib_images: how many images of ``int8_calib`` to draw (default ``config.CALIB_IMAGES``, as export).
        calib_seed: seed of that draw.
        calib_cache: calibration cache file (default ``<onnx stem>.int8-calib.<key>.cache`` beside the ONNX,
            the key naming graph, images, batch and method; see ``engine_calib``).
        verbose: TensorRT logger at VERBOSE instead of WARNING.
    """

    workspace_mib: int = option(1024, "Builder workspace limit (MiB).")
    opt_level: int | None = option(None, "Builder optimisation level 0..5 (default: TensorRT's, 3).")
    timing_cache: Path | None = option(None, "Timing cache file: read when there, written back after the build.")
    dla_core: int | None = option(None, "Run on this DLA core, GPU fallback on (AGX Orin / Orin NX on TensorRT 10.3, "
                                        "AGX Orin on 11.4.1; Thor has no DLA).")
    gpu_fallback: bool = option(True, "With --dla-core: run the layers DLA cannot take on the GPU.")
    fp16: bool = option(False, "TensorRT 10 only: weakly typed build allowing FP16.")
    int8_calib: Path | None = option(None, "TensorRT 10 only: implicit INT8, calibration image folder.")
    calib_images: int = option(CALIB_IMAGES, "Images drawn from --int8-calib (as export draws them).")
    calib_seed: int = option(0, "Seed of the calibration draw.")
    calib_cache: Path | None = option(None, "Implicit INT8 cache file (default: keyed, beside MODEL).")
    verbose: bool = option(False, "TensorRT's logger at VERBOSE (the global -v).")

    def validate(self) -> None:
        check_range("workspace (MiB)", self.workspace_mib, 1, 1 << 20)
        check_range("builder optimisation level", self.opt_level, 0, 5, optional=True)
        check_range("DLA core", self.dla_core, 0, 7, optional=True)
        check_range("calibration image count", self.calib_images, 1, 100_000)

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
        trtexec: the equivalent ``trtexec`` command line (argv list); empty when trtexec cannot build
            the same engine (``trtexec_note`` says why).
        refusals: reasons the build cannot go ahead (empty when it can).
        warnings: things the user should know (DLA with an FP32 graph...).
        trtexec_note: why there is no equivalent trtexec command ("" when there is one).
        max_aux_streams: ``IBuilderConfig.max_aux_streams`` to set (0 for a chunked PAM: its chunks run one at a
            time on the main stream, ``trtexec --maxAuxStreams=0``), None to leave TensorRT's heuristics.
        fp32_islands: weakly typed ``--fp16``: the ONNX nodes pinned to FP32 (``graph.precision.default_fp32_islands``
            of the graph: CAM's energy chain always, PAM's where its measured energy needs it), with
            ``OBEY_PRECISION_CONSTRAINTS`` in ``flags``.
    """

    trt_version: str
    strongly_typed: bool
    flags: list[str]
    precision: str
    calib_cache: Path | None
    trtexec: list[str]
    refusals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    trtexec_note: str = ""
    max_aux_streams: int | None = None
    fp32_islands: list[str] = field(default_factory=list)

    @property
    def trtexec_command(self) -> str:
        """The trtexec command as one shell line, or the sentence saying why there is none."""
        return shlex.join(self.trtexec) if self.trtexec else self.trtexec_note


def engine_path(onnx_path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Where ``build`` writes the engine of ``onnx_path``: ``out`` when it is a file name, ``out/<stem>.engine``
    when ``out`` is a folder (existing, or a name without suffix), else the graph's path with ``.engine``."""
    onnx_path = Path(onnx_path)
    if out is None:
        return onnx_path.with_suffix(".engine")
    out = Path(out)
    return out / f"{onnx_path.stem}.engine" if out.is_dir() or not out.suffix else out


def trt_major(version: str) -> int:
    """``"10.3.0.30"`` -> 10. Raises ConfigError on a malformed version string."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise ConfigError(f"cannot read a TensorRT version from {version!r}") from None


def trt_version_tuple(version: str) -> tuple[int, ...]:
    """``"11.4.0.106"`` -> ``(11, 4, 0, 106)``; non-numeric parts stop the tuple."""
    out = []
    for part in str(version).split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def board_dla(graph: str, dla_core: int, manifest: Manifest | None,
              trt_version: str | None = None) -> tuple[list[str], list[str]]:
    """``(refusals, warnings)`` for ``--dla-core`` from the board ``graph`` was exported for
    (``manifest.extra["memory"]["board"]``, ``graph.boards.BOARDS``); none for a graph without one.

    A module without DLA in a family without any (Jetson AGX Thor: "Working with DLA", TensorRT 11.4.1 docs) refuses
    it; a core the module does not have (Orin NX 8GB has one) refuses it; a module without DLA in a family with some
    (Orin Nano, export's default board: the graph also fits the larger Orins) warns; on TensorRT 11 a module NVIDIA
    documents no 11.x release for (11.4.1: JetPack 7.2.2+ on AGX Orin and AGX Thor only) warns."""
    found = board_of(manifest.extra if manifest is not None else None)
    if found is None:
        return [], []
    key, board = found
    which = f"{graph} was exported for {board.name} (--jetson {key})"
    if board.dla_cores == 0:
        with_dla = [b.name for b in BOARDS.values() if b.family == board.family and b.dla_cores]
        if not with_dla:
            return [f"--dla-core {dla_core}: {which}, which has no DLA ({board.source.split(':')[0]}): build without --dla-core"], []
        return [], [f"{which}, which has no DLA: --dla-core {dla_core} works only where this build runs on a module "
                    f"with DLA ({', '.join(dict.fromkeys(with_dla))})"]
    if dla_core >= board.dla_cores:  # --jetson is the smallest board the graph must fit: a larger one may have it
        cores = "core 0" if board.dla_cores == 1 else f"cores 0..{board.dla_cores - 1}"
        return [], [f"--dla-core {dla_core}: {which}, which has {board.dla_cores} DLA {cores} "
                    f"({board.source.split(':')[0]}); it builds only on a module with that core"]
    if trt_version is not None and trt_major(trt_version) >= 11 and not any(t.startswith("11.")
                                                                            for _, t in board.tensorrt):
        shipped = "; ".join(f"JetPack {j}: TensorRT {t}" for j, t in board.tensorrt)
        return [], [f"{which}: NVIDIA documents no TensorRT 11 for it ({shipped}); TensorRT 11.4.1's DLA is for AGX "
                    "Orin on JetPack 7.2.2+"]
    return [], []


def plan_build(onnx_path: str | os.PathLike[str], cfg: EngineConfig, trt_version: str,
               out_path: str | os.PathLike[str] | None = None, manifest: Manifest | None = None) -> BuildPlan:
    """Decide flags, refusals and the trtexec command for ``trt_version`` (no TensorRT needed).

    Rules: TensorRT < 10 is refused; on 11.x ``fp16`` and ``int8_calib`` are refused (weak typing and
    implicit calibration were removed: bake the precision into the ONNX); implicit INT8 on a graph
    that already is FP16 or INT8 (Q/DQ) is refused, as is FP16 on an INT8 graph; ``--dla-core`` on a graph exported
    for a board without that DLA core is refused (:func:`board_dla`: Jetson AGX Thor has none); option ranges are
    checked.
    The printed ``trtexec --int8 --calib=CACHE`` names the calibration cache only when that file exists
    (without it trtexec calibrates on random data); ``cfg.calib_cache`` is the cache to name.
    """
    cfg.validate()
    onnx_path = Path(onnx_path)
    out_path = engine_path(onnx_path, out_path)
    major = trt_major(trt_version)
    refusals: list[str] = []
    warnings: list[str] = []
    if major < 10:
        refusals.append(f"TensorRT {trt_version} is not supported: danet-edge needs 10.x (JetPack 6) or 11.x")
    if major >= 11 and cfg.fp16:
        refusals.append(f"--fp16 is a weakly typed build, removed in TensorRT 11 (this is {trt_version}): "
                        "export an FP16 graph (danet-edge export CHECKPOINT --fp16) and build model_fp16.onnx as is")
    if major >= 11 and cfg.int8_calib is not None:
        refusals.append(f"--int8-calib is implicit INT8 calibration, removed in TensorRT 11 (this is {trt_version}): "
                        "quantize the graph with Q/DQ (danet-edge export CHECKPOINT --int8 --calib DIR) and build "
                        "model_int8_trt.onnx as is")
    precision = manifest.precision if manifest is not None else "fp32"
    if manifest is not None and cfg.int8_calib is not None and manifest.precision != "fp32":
        refusals.append(f"--int8-calib needs an FP32 graph; {onnx_path.name} is {manifest.precision} "
                        "(its precision is already in the graph: build without --int8-calib)")
    form = (manifest.extra.get("attention") or {}).get("form") if manifest is not None else None
    if form == "attention-op" and trt_version_tuple(trt_version)[:2] < ATTENTION_TENSORRT:
        refusals.append(f"{onnx_path.name} writes PAM as ONNX Attention (opset 23), which TensorRT imports from "
                        f"10.14 (this is {trt_version}; on a Jetson: TensorRT 11.4.1 on JetPack 7.2.2+, not JetPack 6's "
                        "10.3 or JetPack 7.0's 10.13): export it with --attention heads, chunked or explicit")
    # chunked PAM: its chunk branches are independent; on auxiliary streams their map slices would be live at once
    aux = 0 if form == "chunked" else None
    if form == "attention-op" and precision == "fp32" and not cfg.fp16:
        warnings.append(f"{onnx_path.name} holds PAM as an FP32 ONNX Attention, a non-decomposable IAttention: TensorRT "
                        "documents fused kernels for FP16 / BF16 only and may find no implementation; build "
                        "model_fp16.onnx (its Attention takes FP16)")
    if manifest is not None and cfg.fp16 and manifest.precision == "int8":
        refusals.append(f"--fp16 on an INT8 Q/DQ graph ({onnx_path.name}) is refused: build it strongly typed")

    strongly_typed = cfg.strongly_typed or major >= 11
    flags: list[str] = ["STRONGLY_TYPED"] if strongly_typed else []
    calib_cache = None
    islands: list[str] = []
    if not strongly_typed:
        if cfg.fp16:
            flags += ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
            precision = "fp16" if precision == "fp32" else precision
            islands = _islands(onnx_path)
        if cfg.int8_calib is not None:
            flags.append("INT8")
            precision = "int8"
            calib_cache = Path(cfg.calib_cache) if cfg.calib_cache else None
    if cfg.dla_core is not None:
        board_refusals, board_warnings = board_dla(onnx_path.name, cfg.dla_core, manifest, trt_version)
        refusals += board_refusals
        warnings += board_warnings
        if major >= 11 and trt_version_tuple(trt_version)[:3] != DLA_TRT11:
            warnings.append(f"TensorRT {trt_version} has no DLA on a Jetson: of the 11.x releases only "
                            f"{'.'.join(map(str, DLA_TRT11))} documents DLA there, on Jetson AGX Orin with JetPack "
                            "7.2.2+ (11.0 to 11.4.0 and 11.5.0 have none); Jetson Thor has no DLA; Orin boards on "
                            "JetPack 6 use TensorRT 10.3 (TensorRT docs, 'Working with DLA')")
        if cfg.gpu_fallback:
            flags.append("GPU_FALLBACK")
        if precision == "fp32" and strongly_typed:
            warnings.append("DLA runs FP16 and INT8 only: an FP32 graph will fall back to the GPU layer by layer "
                            "(build an FP16 or INT8 graph for the DLA)")

    if cfg.dla_core is not None and strongly_typed and major == 10:
        # trtexec 10.x with --useDLACore sets BuilderFlag.FP16 (and PREFER_PRECISION_CONSTRAINTS) unless --int8
        # is given (samples/common/sampleEngines.cpp), and the 10.x builder refuses FP16 on a strongly typed
        # network (NVIDIA/TensorRT issue 4253): no trtexec 10 line builds what build_engine builds here.
        note = ("none: trtexec 10.x adds --fp16 for --useDLACore, which a strongly typed "
                "network refuses (NVIDIA/TensorRT issue 4253); build with danet-edge build")
        return BuildPlan(str(trt_version), strongly_typed, flags, precision, calib_cache, [], refusals, warnings, note,
                         aux, islands)
    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={out_path}"]
    if strongly_typed and major == 10:
        cmd.append("--stronglyTyped")
    cmd.append(f"--memPoolSize=workspace:{cfg.workspace_mib}M")
    if aux is not None:
        cmd.append(f"--maxAuxStreams={aux}")
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
        if islands:  # trtexec's layer precision options (its page: --precisionConstraints, --layerPrecisions)
            cmd += ["--precisionConstraints=obey", "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in islands),
                    "--layerOutputTypes=" + ",".join(f"{n}:fp32" for n in islands)]
    if "INT8" in flags:
        cmd.append("--int8")
        if calib_cache is not None and calib_cache.is_file():
            cmd.append(f"--calib={calib_cache}")  # the cache build_engine wrote
        else:
            warnings.append("no calibration cache yet: trtexec --int8 without --calib calibrates on random data; "
                            "run danet-edge build --int8-calib first, it writes the cache trtexec can then read")
    return BuildPlan(str(trt_version), strongly_typed, flags, precision, calib_cache, cmd, refusals, warnings,
                     max_aux_streams=aux, fp32_islands=islands)


def _islands(onnx_path: Path) -> list[str]:
    """The graph's FP32 islands (``graph.precision.default_fp32_islands``); none for a graph not here (a plan made
    for another machine: ``build`` itself refuses a missing graph before planning).

    Raises:
        DataError: the graph is here but cannot be read (a weak FP16 build must not go ahead without its islands)."""
    import onnx

    from ..core.errors import DataError
    from ..graph.precision import default_fp32_islands

    if not onnx_path.is_file():
        return []
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError, OSError
        raise DataError(f"{onnx_path}: cannot read the graph to pin its FP32 islands ({str(e)[:200]})") from None
    return default_fp32_islands(model)


def no_tensorrt_hint(onnx_path: Path, plan: BuildPlan) -> str:
    alt = f" or `{plan.trtexec_command}`" if plan.trtexec else f" ({plan.trtexec_note})"
    return (f"build it on the target (the Jetson) with {onnx_path.name} and {onnx_path.name}.json copied over: "
            f"`danet-edge build {onnx_path.name}`{alt}")
