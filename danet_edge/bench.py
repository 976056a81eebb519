"""Speed benchmark of artifacts side by side with the PyTorch FP32 eager reference (or, without one, with
the FP32 artifact).

What one entry measures (every backend through the same protocol, ``Backend.predict``):

* input: a fixed batch of synthetic street scenes ``(N, h, w, 3) uint8`` at the artifact's static
  size; the time covers normalisation (or the fused uint8 input), the forward pass, the argmax and
  the copy back to host ``numpy``, i.e. what ``infer`` pays per batch apart from decode, resize
  and drawing (see ``runtime`` for per-stage video timing);
* set-up (session creation, engine deserialisation, model load) is done before timing and
  reported apart (``setup_s``); then ``warmup`` untimed runs, then ``runs`` timed runs;
* latency: mean, p50, p90, p99, min in ms per batch (``time.perf_counter``; ``predict`` returns
  host arrays, so GPU work is finished when it returns); throughput ``FPS = N * 1000 / mean``;
* peak host memory: the increase of the process's peak resident set (Linux ``VmHWM``, reset
  through ``/proc/self/clear_refs`` before each entry; elsewhere a psutil sampling thread) over
  the RSS before the artifact was opened, in MiB;
* peak GPU memory, where a GPU exists: ``torch.cuda.max_memory_allocated`` for PyTorch entries,
  the drop of free device memory for others (``torch.cuda.mem_get_info`` when torch is loaded, else
  the CUDA API the TensorRT runner loaded; None when neither is there), in MiB;
* speed-up: reference p50 / entry p50 at the same image size and batch. Without a ``reference``
  checkpoint (the device runtime, where PyTorch may not even be installed) the first FP32 artifact
  at each size and batch is the baseline instead (``speedup_baseline`` names it) and the report says
  in ``notes`` that the PyTorch reference was not timed.

PyTorch is imported only when a PyTorch entry is timed (``reference`` or a ``.pt`` artifact); OpenCV
only to draw the synthetic input scenes (random noise at the artifact's size without it); matplotlib
only for the plot (left out with a warning without it).

On a busy CPU (load above the core count) PyTorch's OpenMP threads spin-wait for peers that are
descheduled and one forward pass can take 50x longer; ONNX Runtime suffers far less. The report
records the load average and warns; run it on a quiet machine, or with ``OMP_WAIT_POLICY=PASSIVE``.

On a GPU, PyTorch variants are timed model-only with CUDA events (FP32 with SDPA PAM, FP32 with
the explicit PAM, FP16 and bf16 autocast); on CPU they are skipped with the reason stated.

Accuracy in the plot: mIoU from a ``danet-edge check`` JSON when given (``check_json``); else the
pixel agreement with the reference's labels on the benchmark batch (synthetic scenes, a quick proxy
labelled as such); else the point is left out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bench_plot import write_plot
from ._optional import import_matplotlib, import_torch
from .config import Config, check_threads
from .errors import ConfigError, MissingDependencyError
from .measure import MiB, PeakRSS, gpu_peak, gpu_reset, latency_stats, machine_info  # noqa: F401 - latency_stats is API
from .preprocess import resize_image
from .progress import track
from .runtime.backends import backend_for, backend_spec, open_backend
from .utils import read_json, write_json

__all__ = ["BenchConfig", "BenchEntry", "BenchReport", "bench_artifacts", "latency_stats"]



#: Largest ``--batch`` bench takes; what fits in memory is checked per entry (:func:`check_batch_memory`).
MAX_BATCH = 1024


def check_batch_memory(batch: int, size: Sequence[int], num_classes: int) -> None:
    """Refuse a batch whose frames, model input, logits and labels cannot fit in the RAM available now
    (a lower bound of what timing it holds: the model's activations come on top).

    Raises:
        ConfigError: naming the estimate and what is available.
    """
    import psutil

    h, w = int(size[0]), int(size[1])
    per_image = h * w * (3 + 3 * 4 + num_classes * 4 + 8)  # uint8 frame, f32 input, f32 logits, int64 labels
    need, have = batch * per_image, psutil.virtual_memory().available
    if need > have:
        raise ConfigError(f"--batch {batch} at {h}x{w} needs at least {need / 2**30:.1f} GiB for its inputs and "
                          f"outputs, more than the {have / 2**30:.1f} GiB of RAM available: use a smaller --batch")


@dataclass
class BenchConfig(Config):
    """Options of :func:`bench_artifacts`.

    Attributes:
        reference: PyTorch checkpoint timed as the FP32 eager reference (None: not timed; speed-ups are then
            relative to the first FP32 artifact at the same size and batch).
        warmup: untimed runs before timing (>= 0). runs: timed runs (>= 1).
        batches: batch sizes for backends that take any batch (PyTorch); static-shape artifacts
            run at their own batch. None: the artifacts' batches.
        threads: CPU threads for PyTorch and ONNX Runtime (None: library defaults).
        device: torch device for PyTorch entries (None: CUDA when available, else CPU).
        gpu_variants: time the PyTorch FP16/bf16 autocast and explicit-PAM variants (GPU only).
        check_json: a ``danet-edge check`` JSON whose mIoU the plot uses.
        json_path, plot_path: write the report JSON / the accuracy-latency plot (PNG) there (the plot is
            left out, with a warning, when matplotlib is not installed).
        seed: seed of the synthetic input scenes.
    """

    reference: Path | None = None
    warmup: int = 3
    runs: int = 20
    batches: tuple[int, ...] | None = None
    threads: int | None = None
    device: str | None = None
    gpu_variants: bool = True
    check_json: Path | None = None
    json_path: Path | None = None
    plot_path: Path | None = None
    seed: int = 0

    def validate(self) -> None:
        """Raises ConfigError for negative warm-up, no timed runs, batch sizes outside 1..``MAX_BATCH`` or
        threads below 1 (the bounds that depend on the machine are the stage's: :func:`bench_artifacts`)."""
        if self.warmup < 0 or self.runs < 1:
            raise ConfigError(f"need warmup >= 0 and runs >= 1, got {self.warmup} and {self.runs}")
        if self.batches is not None:
            self.batches = tuple(int(b) for b in self.batches)
            if not self.batches or any(not 1 <= b <= MAX_BATCH for b in self.batches):
                raise ConfigError(f"--batch sizes must be in 1..{MAX_BATCH}, got {list(self.batches)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")


@dataclass
class BenchEntry:
    """One timed configuration. Times in ms per batch, memory in MiB, throughput in images/s (FPS)."""

    name: str
    path: str | None
    backend: str
    precision: str
    image_size: list[int]
    batch: int
    runs: int
    setup_s: float | None = None
    latency_mean_ms: float | None = None
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_min_ms: float | None = None
    throughput_fps: float | None = None
    host_peak_mib: float | None = None
    gpu_peak_mib: float | None = None
    speedup_vs_reference: float | None = None
    speedup_baseline: str | None = None  # the entry speedup_vs_reference divides by (the reference, or an FP32 artifact)
    is_reference: bool = False
    timing: str = "perf_counter around predict() (host arrays in and out)"
    agreement: float | None = None
    miou: float | None = None
    skipped: str | None = None
    provider: str = ""  # what it really ran on: "ONNX Runtime 1.31.1 CPUExecutionProvider", "TensorRT 10.3.0 on Orin"


@dataclass
class BenchReport:
    """All entries plus the machine they ran on; ``notes`` say how to read them (e.g. what the speed-up is
    relative to), ``warnings`` what may distort them."""

    machine: dict[str, Any]
    config: dict[str, Any]
    entries: list[BenchEntry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    json_path: str | None = None
    plot_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready dicts and lists."""
        return asdict(self)


# ---------------------------------------------------------------------------------- inputs
def _scenes(n: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """``(n, h, w, 3) uint8`` synthetic street scenes (random noise at ``size`` without OpenCV, which draws them)."""
    from .synthetic import render_scene

    try:
        out = [render_scene(np.random.default_rng([seed, i]), 2 * size[0], 2 * size[1])[0] for i in range(n)]
        return np.stack([resize_image(im, size) for im in out])
    except MissingDependencyError:  # no OpenCV on this device: timing needs pixels, not pictures
        return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------- timing
def _resizable(path: Path) -> bool:
    """A model whose input size and batch are chosen when it is opened (checkpoints), not fixed by it."""
    return "image_size" in backend_spec(path).options


def _time_backend(name: str, path: Path, cfg: BenchConfig, batch: int | None,
                  size: tuple[int, int] | None = None, is_reference: bool = False) -> tuple[BenchEntry, np.ndarray]:
    """Open, warm up and time one artifact (or the reference) through ``open_backend``."""
    spec = backend_spec(path)
    kwargs: dict[str, Any] = {}
    torch_backend = spec.name == "torch"  # GPU memory is read from torch's allocator for it
    if _resizable(path):
        kwargs.update(device=cfg.device, batch=batch)
        if size is not None:
            kwargs["image_size"] = size
    elif "threads" in spec.options and cfg.threads:
        kwargs["threads"] = cfg.threads
    free = gpu_reset()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        backend = open_backend(path, **kwargs)
        setup = time.perf_counter() - t0
        try:
            m = backend.manifest
            n = batch or m.batch_size
            check_batch_memory(n, m.image_size, len(m.classes))
            images = _scenes(n, m.image_size, cfg.seed)
            labels = backend.predict(images).labels  # first run: also the labels for agreement
            for _ in range(max(0, cfg.warmup - 1)):
                backend.predict(images)
            times = []
            for _ in range(cfg.runs):
                t = time.perf_counter()
                backend.predict(images)
                times.append((time.perf_counter() - t) * 1e3)
        finally:
            backend.close()
    s = latency_stats(times)
    entry = BenchEntry(
        name=name, path=str(path), backend=backend.name, provider=getattr(backend, "provider", ""), precision=m.precision,
        image_size=list(m.image_size), batch=n, runs=cfg.runs, setup_s=setup, latency_mean_ms=s["mean"],
        latency_p50_ms=s["p50"], latency_p90_ms=s["p90"], latency_p99_ms=s["p99"], latency_min_ms=s["min"],
        throughput_fps=n * 1e3 / s["mean"], host_peak_mib=mem.delta_mib, gpu_peak_mib=gpu_peak(free, torch_backend),
        is_reference=is_reference)
    return entry, labels


def _torch_variants(reference: Path, size: tuple[int, int], batch: int, cfg: BenchConfig,
                    ref_labels: np.ndarray | None) -> list[BenchEntry]:
    """FP32 SDPA / FP32 explicit PAM / FP16 and bf16 autocast, model-only, CUDA events. GPU only."""
    import torch

    from .checkpoint import load_model
    from .preprocess import normalize

    base = dict(path=str(reference), backend="torch", image_size=list(size), batch=batch, runs=cfg.runs,
                timing="CUDA events around model(x) (device tensors, no host copies)")
    names = [("pytorch-fp32-sdpa", "fp32", None, "sdpa"), ("pytorch-fp32-explicit-pam", "fp32", None, "explicit"),
             ("pytorch-fp16-autocast", "fp16", torch.float16, "sdpa"),
             ("pytorch-bf16-autocast", "bf16", torch.bfloat16, "sdpa")]
    if not torch.cuda.is_available() or (cfg.device is not None and not str(cfg.device).startswith("cuda")):
        reason = "no CUDA GPU here: autocast and PAM variants are GPU measurements"
        return [BenchEntry(name=n, precision=p, skipped=reason, **base) for n, p, _, _ in names]
    loaded = load_model(reference)
    model = loaded.model.to(cfg.device or "cuda").eval()
    dev = next(model.parameters()).device
    x = torch.from_numpy(normalize(_scenes(batch, size, cfg.seed), loaded.data["mean"], loaded.data["std"])).to(dev)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
    out = []
    for name, prec, dtype, impl in names:
        model.set_attention(impl)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        try:
            with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                labels = model(x).argmax(1).cpu().numpy()
                for _ in range(cfg.warmup):
                    model(x)
                times = []
                for _ in range(cfg.runs):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    model(x)
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end))
        except torch.cuda.OutOfMemoryError:
            out.append(BenchEntry(name=name, precision=prec, skipped="CUDA out of memory", **base))
            torch.cuda.empty_cache()
            continue
        s = latency_stats(times)
        agreement = None if ref_labels is None or ref_labels.shape != labels.shape else \
            100.0 * float((labels == ref_labels).mean())
        out.append(BenchEntry(
            name=name, precision=prec, latency_mean_ms=s["mean"], latency_p50_ms=s["p50"], latency_p90_ms=s["p90"],
            latency_p99_ms=s["p99"], latency_min_ms=s["min"], throughput_fps=batch * 1e3 / s["mean"],
            gpu_peak_mib=torch.cuda.max_memory_allocated() / MiB, agreement=agreement,
            provider=f"PyTorch {torch.__version__} {prec} eager on {gpu}", **base))
    model.set_attention("sdpa")
    del model
    torch.cuda.empty_cache()
    return out


def _prime(paths: Sequence[Path], cfg: BenchConfig) -> None:
    """Pay one-time library initialisation (lazy imports, kernel registries, thread pools) once per
    backend kind before any entry is measured, so it is charged to none of them."""
    seen: set[str] = set()
    for p in [*([Path(cfg.reference)] if cfg.reference else []), *paths]:
        kind = backend_for(p)
        if kind in seen:
            continue
        seen.add(kind)
        kwargs: dict[str, Any] = {"device": cfg.device, "image_size": (64, 64)} if _resizable(p) else {}
        with open_backend(p, **kwargs) as b:
            b.predict(_scenes(1, b.manifest.image_size, cfg.seed))


def _check_mious(path: Path | None) -> dict[str, float]:
    """``resolved artifact path -> mIoU`` from a check JSON (empty when absent)."""
    if path is None:
        return {}
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"check JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("artifacts"), list):
        raise ConfigError(f"{path}: not a danet-edge check report (no 'artifacts' list)")
    return {str(Path(a["path"]).resolve()): float(a["miou"]) for a in data["artifacts"]
            if isinstance(a, dict) and "path" in a and "miou" in a}


def _relative_to_fp32(entries: list[BenchEntry]) -> str:
    """Without a reference: speed-ups relative to the first timed FP32 artifact at each (size, batch);
    returns the note that says so (and that the PyTorch reference was not timed)."""
    baselines: dict[tuple[tuple[int, ...], int], BenchEntry] = {}
    for e in entries:
        if e.latency_p50_ms is not None and e.precision == "fp32":
            baselines.setdefault((tuple(e.image_size), e.batch), e)
    for e in entries:
        base = baselines.get((tuple(e.image_size), e.batch))
        if base is not None and e.latency_p50_ms is not None:
            e.speedup_vs_reference = base.latency_p50_ms / e.latency_p50_ms
            e.speedup_baseline = base.name
    note = "PyTorch reference not timed here (no --reference checkpoint)"
    if not baselines:
        return note + ": no FP32 artifact among these either, so no speed-up is given"
    names = ", ".join(sorted({b.name for b in baselines.values()}))
    return note + f": speed-up is relative to the FP32 artifact {names} (same size and batch)"


def bench_artifacts(artifacts: Sequence[str | os.PathLike[str]], cfg: BenchConfig | None = None) -> BenchReport:
    """Time every artifact, and the PyTorch FP32 eager reference when ``cfg.reference`` is set.

    Args:
        artifacts: ``.pt``/``.onnx``/``.engine``/``.plan`` paths with their manifests.
        cfg: options (see :class:`BenchConfig`).

    Returns:
        BenchReport: one entry per (artifact, batch), reference entries first (``is_reference``),
        ``speedup_vs_reference`` filled where a reference ran at the same size and batch. Writes
        the JSON and the plot when their paths are set.

    Without ``cfg.reference`` the PyTorch reference is not timed (PyTorch is not even imported unless a
    ``.pt`` artifact is in the list): the first FP32 artifact at each size and batch is the baseline of the
    speed-ups, and ``report.notes`` says so.

    Raises:
        ConfigError: no artifacts, missing file, bad options; plus what ``open_backend`` raises.
        MissingDependencyError: a reference or ``.pt`` artifact is given and PyTorch is not installed.
    """
    cfg = cfg or BenchConfig()
    cfg.validate()
    check_threads("--threads", cfg.threads)  # the machine's bound (a stage check)
    paths = [Path(a) for a in artifacts]
    if not paths and cfg.reference is None:
        raise ConfigError("nothing to benchmark: give artifacts or a reference checkpoint")
    for p in [*paths, *([Path(cfg.reference)] if cfg.reference else [])]:
        if not p.is_file():
            raise ConfigError(f"{p}: file not found")
    if cfg.reference is None and not any(backend_spec(p).name == "torch" for p in paths):
        return _bench(paths, cfg)  # no PyTorch entry: torch stays unimported (the device runtime)
    torch = import_torch("timing the PyTorch reference (--reference) or a .pt checkpoint")
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _bench(paths, cfg)
    finally:
        torch.set_num_threads(threads)  # the caller's setting, whatever this run used


def _bench(paths: list[Path], cfg: BenchConfig) -> BenchReport:
    from .manifest import read_manifest

    report = BenchReport(machine=machine_info(), config={k: (str(v) if isinstance(v, Path) else v)
                                                     for k, v in asdict(cfg).items()})
    plot_path = cfg.plot_path
    if plot_path is not None:
        try:
            import_matplotlib()
        except MissingDependencyError:  # found before timing; the JSON and the table still come
            # no "[plot]" in the text: a terminal that renders rich markup would swallow it
            report.warnings.append(f"plot {plot_path} not written: matplotlib is not installed "
                                   "(pip install matplotlib, i.e. the 'plot' extra of danet-edge)")
            plot_path = None
    load = report.machine.get("load_average_1_5_15min")
    if load and load[0] > (os.cpu_count() or 1):
        advice = "" if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE" else \
            ", PyTorch's most (OpenMP threads spin-wait for descheduled peers; OMP_WAIT_POLICY=PASSIVE avoids it)"
        report.warnings.append(f"machine busy: load average {load[0]} on {os.cpu_count()} CPUs; "
                               f"times are inflated{advice}")
    # (size, batch) pairs to run: static artifacts at their batch, PyTorch checkpoints at cfg.batches
    plan: list[tuple[Path, tuple[int, int] | None, int | None]] = []
    static = sorted({read_manifest(p).batch_size for p in paths if not _resizable(p)})
    # checkpoints beside static artifacts run at the artifacts' size(s), so their rows compare
    sizes = sorted({tuple(read_manifest(p).image_size) for p in paths if not _resizable(p)})
    for p in paths:
        if _resizable(p):
            for size in sizes or [None]:
                for b in cfg.batches or tuple(static) or (1,):
                    plan.append((p, size, b))
        else:
            m = read_manifest(p)
            if cfg.batches and m.batch_size not in cfg.batches:
                report.entries.append(BenchEntry(
                    name=p.name, path=str(p), backend=backend_for(p), precision=m.precision,
                    image_size=list(m.image_size), batch=m.batch_size, runs=0,
                    skipped=f"static batch {m.batch_size} is not among the requested batches {list(cfg.batches)}"))
                continue
            plan.append((p, m.image_size, m.batch_size))
    ref_keys = sorted({(s, b) for p, s, b in plan if s is not None})
    if cfg.reference is not None and not ref_keys:
        from .checkpoint import checkpoint_manifest, load_model

        size = checkpoint_manifest(load_model(cfg.reference)).image_size
        ref_keys = [(size, b) for b in (cfg.batches or (1,))]
    elif cfg.reference is not None:  # checkpoints in the list run at their own size: time the reference there too
        for p, s, b in plan:
            if s is None:
                from .checkpoint import checkpoint_manifest, load_model

                key = (checkpoint_manifest(load_model(p)).image_size, b)
                if key not in ref_keys:
                    ref_keys.append(key)

    _prime(paths, cfg)
    ref_entries: dict[tuple[tuple[int, int], int], tuple[BenchEntry, np.ndarray]] = {}
    if cfg.reference is not None:
        for size, b in ref_keys:
            e, labels = _time_backend(f"pytorch-fp32-eager (reference) {size[0]}x{size[1]}", Path(cfg.reference),
                                      cfg, b, size=size, is_reference=True)
            e.speedup_vs_reference = 1.0
            e.speedup_baseline = e.name
            e.agreement = 100.0  # by definition
            ref_entries[(size, b)] = (e, labels)
            report.entries.append(e)
    mious = _check_mious(cfg.check_json)
    for p, size, b in track(plan, "bench", total=len(plan)):
        e, labels = _time_backend(p.name, p, cfg, b, size=size if _resizable(p) else None)
        ref = ref_entries.get((tuple(e.image_size), e.batch))
        if ref is not None:
            e.speedup_vs_reference = ref[0].latency_p50_ms / e.latency_p50_ms
            e.speedup_baseline = ref[0].name
            e.agreement = 100.0 * float((labels == ref[1]).mean())
        e.miou = mious.get(str(p.resolve()))
        report.entries.append(e)
    if cfg.reference is not None and cfg.gpu_variants:
        for (size, b), (_, labels) in ref_entries.items():
            report.entries.extend(_torch_variants(Path(cfg.reference), size, b, cfg, labels))
    if cfg.reference is not None and mious:
        for e, _ in ref_entries.values():
            e.miou = mious.get(str(Path(cfg.reference).resolve()))
    if cfg.reference is None:
        report.notes.append(_relative_to_fp32(report.entries))
    if plot_path is not None:
        report.plot_path = str(write_plot(report, Path(plot_path)))
    if cfg.json_path is not None:
        report.json_path = str(cfg.json_path)
        write_json(cfg.json_path, report.to_dict())
    return report
