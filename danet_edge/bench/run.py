"""Speed benchmark of artifacts side by side with the PyTorch FP32 eager reference (or, without one, with
the FP32 artifact).

What one entry measures (every backend through the same protocol, ``Backend.predict``):

* input: a fixed batch of synthetic street scenes ``(N, h, w, 3) uint8`` at the artifact's static
  size; the time covers normalisation (or the fused uint8 input), the forward pass, the argmax and
  the copy back to host ``numpy``, i.e. what ``infer`` pays per batch apart from decode, resize
  and drawing (see ``runtime`` for per-stage video timing);
* set-up (session creation, engine deserialisation, model load) is done before timing and
  reported apart (``setup_s``); then untimed runs until both ``warmup`` runs and ``warmup_s`` seconds
  are done, then timed runs until both ``runs`` runs and ``duration_s`` seconds are done (trtexec's
  ``--warmUp`` / ``--duration`` / ``--iterations``; at most ``max(runs, 10000)`` timed runs); the entry
  records what ran (``warmup_runs``, ``runs``, ``timed_s``);
* end-to-end latency (``latency_*``): mean, p50, p90, p99, min in ms per batch (``time.perf_counter``
  around ``predict``, which returns host arrays, so GPU work is finished when it returns); throughput
  ``FPS = N * 1000 / mean``;
* compute latency (``compute_*``): the model alone inside the same calls: the session run for ONNX
  Runtime and OpenVINO, the forward pass with CUDA synchronisation for PyTorch, CUDA events around the
  engine's ``execute_async_v3`` for TensorRT (``compute_timing`` says which); the difference to the
  end-to-end figure is normalisation, copies, argmax and Python;
* on a Jetson: the board (model, L4T / JetPack, nvpmodel mode, jetson_clocks, GPU / EMC / DLA clocks) in
  ``machine["jetson"]``, and the power rails sampled during each timed window (INA3221 in sysfs, else
  tegrastats): average W per rail and in total, energy per frame in mJ, FPS per W (FPS here is frames
  / ``timed_s``); elsewhere those fields say ``"not a Jetson"``;
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

With ``--backend NAME`` (``BenchConfig.backend``, a row of ``runtime.backends.BACKEND_TABLE``) every artifact is
opened with that backend (``check_backend_opens`` refuses one that cannot run the file's kind before anything
runs), its rows are named ``<file> on <backend>`` and the reference stays PyTorch eager in the same run: the
speed-up column is that backend's over eager.

The same graph timed by ``benchmarks/cpu_runtimes.py`` (its docstring says what the two share and where they
differ) gives the same speed-up within a few per cent on a quiet machine.

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
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import check_threads
from .config import BenchConfig, check_batch_memory
from .plot import write_plot
from .results import BenchEntry, BenchReport
from ..core.optional import import_matplotlib, import_torch
from ..core.errors import ConfigError, MissingDependencyError
from .power import PowerReport
from .measure import (MAX_TIMED_RUNS, MiB, PeakRSS, TimedRuns, gpu_peak, gpu_reset, latency_stats,  # noqa: F401
                      machine_info, time_runs)  # latency_stats is API
from ..data.preprocess import resize_image
from ..core.progress import track
from ..runtime.backends import backend_for, backend_spec, check_backend_opens, open_backend
from ..core.utils import read_json, write_json

__all__ = ["BenchConfig", "BenchEntry", "BenchReport", "bench_artifacts", "latency_stats", "prime_backends"]



# ---------------------------------------------------------------------------------- inputs
def _scenes(n: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """``(n, h, w, 3) uint8`` synthetic street scenes (random noise at ``size`` without OpenCV, which draws them)."""
    from ..data.synthetic import render_scene

    try:
        out = [render_scene(np.random.default_rng([seed, i]), 2 * size[0], 2 * size[1])[0] for i in range(n)]
        return np.stack([resize_image(im, size) for im in out])
    except MissingDependencyError:  # no OpenCV on this device: timing needs pixels, not pictures
        return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------- timing
def _resizable(path: Path, backend: str | None = None) -> bool:
    """A model whose input size and batch are chosen when it is opened (checkpoints), not fixed by it; ``backend``:
    the row it is opened with (None: by its suffix)."""
    return "image_size" in backend_spec(path, backend).options


def _entry_name(path: Path, backend: str | None) -> str:
    """An artifact's row name: its file name, with ``on <backend>`` when the backend was named (``--backend``)."""
    return path.name if backend is None else f"{path.name} on {backend}"


def _timing_fields(t: TimedRuns, batch: int, latency_ms: list[float]) -> dict[str, Any]:
    """BenchEntry fields of one timed window: latency (``latency_ms``: the end-to-end figures), compute,
    runs, throughput and power."""
    s = latency_stats(latency_ms)
    out: dict[str, Any] = dict(
        runs=len(latency_ms), warmup_runs=t.warmup_runs, timed_s=t.timed_s, latency_mean_ms=s["mean"],
        latency_p50_ms=s["p50"], latency_p90_ms=s["p90"], latency_p99_ms=s["p99"], latency_min_ms=s["min"],
        throughput_fps=batch * 1e3 / s["mean"])
    if t.compute_ms:
        c = latency_stats(t.compute_ms)
        out.update(compute_mean_ms=c["mean"], compute_p50_ms=c["p50"], compute_p99_ms=c["p99"])
    p = t.power
    if isinstance(p, PowerReport):
        out.update(power_source=p.source, power_samples=p.samples, power_rails_w=p.rails_w, power_total_w=p.total_w,
                   power_total_source=p.total_source, energy_per_frame_mj=p.energy_per_frame_mj,
                   fps_per_w=p.fps_per_w)
    else:  # "not a Jetson", or why a Jetson gave no figure
        out.update({k: str(p) for k in ("power_source", "power_samples", "power_rails_w", "power_total_w",
                                        "power_total_source", "energy_per_frame_mj", "fps_per_w")})
    return out


def _timed(step: Callable[[], float | None], cfg: BenchConfig, batch: int, power_root: str | None, warmup_done: int = 0,
           warmup_started: float | None = None) -> TimedRuns:
    return time_runs(step, warmup=cfg.warmup, warmup_s=cfg.warmup_s, runs=cfg.runs, duration_s=cfg.duration_s,
                     frames_per_run=batch, warmup_done=warmup_done, warmup_started=warmup_started,
                     power_root=power_root)


def _time_backend(name: str, path: Path, cfg: BenchConfig, batch: int | None,
                  size: tuple[int, int] | None = None, is_reference: bool = False,
                  power_root: str | None = None, backend: str | None = None) -> tuple[BenchEntry, np.ndarray]:
    """Open, warm up and time one artifact (or the reference) through ``open_backend`` with ``backend`` (None:
    by its suffix); ``power_root``: sample the Jetson's power rails under it during the timed window (None: not a
    Jetson)."""
    spec = backend_spec(path, backend)
    kwargs: dict[str, Any] = {}
    torch_backend = spec.name == "torch"  # GPU memory is read from torch's allocator for it
    if _resizable(path, backend):
        kwargs.update(device=cfg.device, batch=batch)
        if size is not None:
            kwargs["image_size"] = size
    elif "threads" in spec.options and cfg.threads:
        kwargs["threads"] = cfg.threads
    free = gpu_reset()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        model = open_backend(path, backend=backend, **kwargs)
        setup = time.perf_counter() - t0
        try:
            m = model.manifest
            n = batch or m.batch_size
            check_batch_memory(n, m.image_size, len(m.classes))
            images = _scenes(n, m.image_size, cfg.seed)
            compute_timing = model.compute_timing

            def step() -> float | None:
                model.predict(images)
                return model.compute_ms if compute_timing else None

            started = time.perf_counter()
            labels = model.predict(images).labels  # the first warm-up run: also the labels for agreement
            timed = _timed(step, cfg, n, power_root, warmup_done=1, warmup_started=started)
        finally:
            model.close()
    entry = BenchEntry(
        name=name, path=str(path), backend=model.name, provider=model.provider, precision=m.precision,
        image_size=list(m.image_size), batch=n, setup_s=setup, host_peak_mib=mem.delta_mib,
        gpu_peak_mib=gpu_peak(free, torch_backend), is_reference=is_reference, attention=m.attention(),
        quantization=m.quantization(),
        compute_timing=compute_timing or "not measured (the backend has no compute hook)",
        **_timing_fields(timed, n, timed.e2e_ms))
    return entry, labels


def _torch_variants(reference: Path, size: tuple[int, int], batch: int, cfg: BenchConfig,
                    ref_labels: np.ndarray | None, power_root: str | None = None) -> list[BenchEntry]:
    """FP32 SDPA / FP32 explicit PAM / FP16 and bf16 autocast, model-only, CUDA events (latency and compute
    are the same figure here). GPU only."""
    import torch

    from ..model.checkpoint import load_model
    from ..data.preprocess import normalize

    timing = "CUDA events around model(x) (device tensors, no host copies)"
    base = dict(path=str(reference), backend="torch", image_size=list(size), batch=batch, timing=timing)
    names = [("pytorch-fp32-sdpa", "fp32", None, "sdpa"), ("pytorch-fp32-explicit-pam", "fp32", None, "explicit"),
             ("pytorch-fp16-autocast", "fp16", torch.float16, "sdpa"),
             ("pytorch-bf16-autocast", "bf16", torch.bfloat16, "sdpa")]
    if not torch.cuda.is_available() or (cfg.device is not None and not str(cfg.device).startswith("cuda")):
        reason = "no CUDA GPU here: autocast and PAM variants are GPU measurements"
        return [BenchEntry(name=n, precision=p, skipped=reason, runs=0, **base) for n, p, _, _ in names]
    loaded = load_model(reference)
    model = loaded.model.to(cfg.device or "cuda").eval()
    dev = next(model.parameters()).device
    x = torch.from_numpy(normalize(_scenes(batch, size, cfg.seed), loaded.data["mean"], loaded.data["std"])).to(dev)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
    step = _event_timed_forward(torch, model, x)
    out = []
    for name, prec, dtype, impl in names:
        model.set_attention(impl)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        try:
            with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                started = time.perf_counter()
                labels = model(x).argmax(1).cpu().numpy()  # the first warm-up run
                timed = _timed(step, cfg, batch, power_root, warmup_done=1, warmup_started=started)
        except torch.cuda.OutOfMemoryError:
            out.append(BenchEntry(name=name, precision=prec, skipped="CUDA out of memory", runs=0, **base))
            torch.cuda.empty_cache()
            continue
        agreement = None if ref_labels is None or ref_labels.shape != labels.shape else \
            100.0 * float((labels == ref_labels).mean())
        out.append(BenchEntry(
            name=name, precision=prec, gpu_peak_mib=torch.cuda.max_memory_allocated() / MiB, agreement=agreement,
            provider=f"PyTorch {torch.__version__} {prec} eager on {gpu}", compute_timing=timing,
            **_timing_fields(timed, batch, timed.compute_ms), **base))
    model.set_attention("sdpa")
    del model, step
    torch.cuda.empty_cache()
    return out


def _event_timed_forward(torch: Any, model: Any, x: Any) -> Callable[[], float]:
    """One run of ``model(x)`` timed with CUDA events on the current stream; returns its GPU time in ms."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def step() -> float:
        start.record()
        model(x)
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))

    return step


def prime_backends(entries: Sequence[tuple[Path, str | None]], device: str | None = None, seed: int = 0) -> None:
    """Pay one-time library initialisation once per backend kind before any entry is measured: the first model of
    each kind in ``entries`` (``(path, backend)``, None: by suffix) is opened and run once (checkpoints at 64x64).
    PyTorch eager (R-50, 256x512, 2 threads) then runs 5 % faster all along (731 vs 775 ms)."""
    seen: set[str] = set()
    for p, backend in entries:
        kind = backend_for(p, backend)
        if kind in seen:
            continue
        seen.add(kind)
        kwargs: dict[str, Any] = {"device": device, "image_size": (64, 64)} if _resizable(p, backend) else {}
        with open_backend(p, backend=backend, **kwargs) as b:
            b.predict(_scenes(1, b.manifest.image_size, seed))


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

    With ``cfg.backend`` every artifact is opened with that row of the backend table (``open_backend(path,
    backend=...)``, with ``cfg.threads`` where the row takes threads) and named ``<file> on <backend>``; the
    reference is PyTorch eager all the same, timed in the same run, so ``speedup_vs_reference`` is that
    backend's speed-up over eager.

    Raises:
        ConfigError: no artifacts, missing file, bad options, a ``cfg.backend`` that cannot run an artifact's kind
            (``runtime.backends.check_backend_opens``: e.g. an engine on openvino; raised before anything is
            opened); plus what ``open_backend`` raises.
        MissingDependencyError: a reference or ``.pt`` artifact is given and PyTorch is not installed (or the
            named backend's runtime, e.g. openvino).
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
    for p in paths:  # the reference is PyTorch eager whatever cfg.backend says
        check_backend_opens(p, cfg.backend)
    if cfg.reference is None and not any(backend_spec(p, cfg.backend).name == "torch" for p in paths):
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
    from ..core.manifest import read_manifest

    jetson_root = str(cfg.jetson_root) if cfg.jetson_root is not None else "/"
    report = BenchReport(machine=machine_info(jetson_root), config={k: (str(v) if isinstance(v, Path) else v)
                                                                for k, v in asdict(cfg).items()})
    power_root = jetson_root if report.machine["jetson"]["jetson"] else None  # sample the rails on a Jetson only
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
    static = sorted({read_manifest(p).batch_size for p in paths if not _resizable(p, cfg.backend)})
    # checkpoints beside static artifacts run at the artifacts' size(s), so their rows compare
    sizes = sorted({tuple(read_manifest(p).image_size) for p in paths if not _resizable(p, cfg.backend)})
    for p in paths:
        if _resizable(p, cfg.backend):
            for size in sizes or [None]:
                for b in cfg.batches or tuple(static) or (1,):
                    plan.append((p, size, b))
        else:
            m = read_manifest(p)
            if cfg.batches and m.batch_size not in cfg.batches:
                report.entries.append(BenchEntry(
                    name=_entry_name(p, cfg.backend), path=str(p), backend=backend_for(p, cfg.backend),
                    precision=m.precision,
                    image_size=list(m.image_size), batch=m.batch_size, runs=0,
                    skipped=f"static batch {m.batch_size} is not among the requested batches {list(cfg.batches)}"))
                continue
            plan.append((p, m.image_size, m.batch_size))
    ref_keys = sorted({(s, b) for p, s, b in plan if s is not None})
    if cfg.reference is not None and not ref_keys:
        from ..model.checkpoint import checkpoint_manifest, load_model

        size = checkpoint_manifest(load_model(cfg.reference)).image_size
        ref_keys = [(size, b) for b in (cfg.batches or (1,))]
    elif cfg.reference is not None:  # checkpoints in the list run at their own size: time the reference there too
        for p, s, b in plan:
            if s is None:
                from ..model.checkpoint import checkpoint_manifest, load_model

                key = (checkpoint_manifest(load_model(p)).image_size, b)
                if key not in ref_keys:
                    ref_keys.append(key)

    prime_backends([*([(Path(cfg.reference), None)] if cfg.reference else []), *((p, cfg.backend) for p in paths)],
                   cfg.device, cfg.seed)
    ref_entries: dict[tuple[tuple[int, int], int], tuple[BenchEntry, np.ndarray]] = {}
    if cfg.reference is not None:
        for size, b in ref_keys:
            e, labels = _time_backend(f"pytorch-fp32-eager (reference) {size[0]}x{size[1]}", Path(cfg.reference),
                                      cfg, b, size=size, is_reference=True, power_root=power_root)
            e.speedup_vs_reference = 1.0
            e.speedup_baseline = e.name
            e.agreement = 100.0  # by definition
            ref_entries[(size, b)] = (e, labels)
            report.entries.append(e)
    mious = _check_mious(cfg.check_json)
    for p, size, b in track(plan, "bench", total=len(plan)):
        e, labels = _time_backend(_entry_name(p, cfg.backend), p, cfg, b, size=size if _resizable(p, cfg.backend)
                                  else None, power_root=power_root, backend=cfg.backend)
        ref = ref_entries.get((tuple(e.image_size), e.batch))
        if ref is not None:
            e.speedup_vs_reference = ref[0].latency_p50_ms / e.latency_p50_ms
            e.speedup_baseline = ref[0].name
            e.agreement = 100.0 * float((labels == ref[1]).mean())
        e.miou = mious.get(str(p.resolve()))
        report.entries.append(e)
    if cfg.reference is not None and cfg.gpu_variants:
        for (size, b), (_, labels) in ref_entries.items():
            report.entries.extend(_torch_variants(Path(cfg.reference), size, b, cfg, labels, power_root))
    if cfg.reference is not None and mious:
        for e, _ in ref_entries.values():
            e.miou = mious.get(str(Path(cfg.reference).resolve()))
    if cfg.reference is None:
        report.notes.append(_relative_to_fp32(report.entries))
    capped = [e.name for e in report.entries if e.timed_s is not None and e.runs >= max(cfg.runs, MAX_TIMED_RUNS)
              and e.timed_s < cfg.duration_s]
    if capped:
        report.notes.append(f"{', '.join(capped)}: timing stopped at {max(cfg.runs, MAX_TIMED_RUNS)} runs, before "
                            f"--duration {cfg.duration_s:g} s")
    if plot_path is not None:
        report.plot_path = str(write_plot(report, Path(plot_path)))
    if cfg.json_path is not None:
        report.json_path = str(cfg.json_path)
        write_json(cfg.json_path, report.to_dict())
    return report
