"""``danet-edge check``, ``bench`` and ``demo``: options -> config dataclass -> one library call."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..core.errors import ConfigError
from ..core.choices import Dataset, Split, choice_enum
from ._common import backend_names
from ._common import console as _console

# Tables stay readable when piped (rich falls back to 80 columns off a terminal).
console = _console if _console.is_terminal else Console(width=220)


def _num(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _float(v: object) -> float | None:
    """A measured figure, or None for the strings that say why there is none ("not a Jetson")."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def print_check_table(report) -> None:
    """The check report as a rich table on the terminal."""
    t = Table(title=f"accuracy check vs {Path(report.reference).name} ({report.frames} images)")
    for col in ("artifact", "precision", "mIoU", "ΔmIoU", "pixel acc", "agreement %", "max abs", "rel L2",
                "cosine", "inf/NaN", "result"):
        t.add_column(col, justify="left" if col in ("artifact", "result") else "right")
    for a in report.artifacts:
        prec = a.precision if a.precision == a.manifest_precision else f"{a.precision} (manifest {a.manifest_precision})"
        result = "[green]pass[/]" if a.passed else "[red]FAIL[/] " + "; ".join(a.failures)
        t.add_row(Path(a.path).name, prec, _num(a.miou, ".2f"), _num(a.miou_delta, "+.3f"),
                  _num(a.pixel_accuracy, ".2f"), _num(a.agreement, ".3f"), _num(a.max_abs_error, ".3g"),
                  _num(a.rel_l2_error, ".2e"), _num(a.cosine_similarity, ".6f"), _num(a.nonfinite, "d"), result)
    console.print(t)


def _power_mode(jetson: dict | None) -> str:
    """``", nvpmodel MAXN, jetson_clocks on"`` on a Jetson, else empty."""
    if not jetson or jetson.get("jetson") is not True:
        return ""
    nvp = jetson.get("nvpmodel")
    mode = nvp.get("mode") if isinstance(nvp, dict) else None
    clocks = {True: "on", False: "off"}.get(jetson.get("jetson_clocks"), "unknown")
    return f", nvpmodel {mode or 'unknown'}, jetson_clocks {clocks}"


def print_bench_table(report) -> None:
    """The bench report as a rich table on the terminal: end-to-end and compute latency (ms), FPS, memory,
    speed-up; FPS/W where power was measured (a Jetson), with the power mode in the title."""
    m = report.machine
    threads = f", {m['torch_threads']} torch threads" if m.get("torch_threads") else ""
    t = Table(title=f"bench on {m.get('gpu') or m.get('cpu')}{threads}{_power_mode(m.get('jetson'))}")
    power = any(_float(e.power_total_w) is not None for e in report.entries)
    for col in ("entry", "precision", "size", "batch", "runs", "mean ms", "p50 ms", "p90 ms", "p99 ms",
                "compute p50 ms", "FPS", *(("W", "mJ/frame", "FPS/W") if power else ()), "host MiB", "GPU MiB",
                "speed-up", "note"):
        t.add_column(col, justify="left" if col in ("entry", "note") else "right")
    skipped: dict[str, list[str]] = {}
    for e in report.entries:
        if e.skipped and e.latency_p50_ms is None and "GPU" in e.skipped:  # one line for the GPU-only variants
            skipped.setdefault(e.skipped, []).append(e.name)
            continue
        size = f"{e.image_size[0]}x{e.image_size[1]}" if e.image_size else "-"
        watts = [_num(_float(v), spec) for v, spec in ((e.power_total_w, ".2f"), (e.energy_per_frame_mj, ".1f"),
                                                       (e.fps_per_w, ".2f"))] if power else []
        t.add_row(e.name, e.precision, size, str(e.batch), str(e.runs), _num(e.latency_mean_ms, ".1f"),
                  _num(e.latency_p50_ms, ".1f"), _num(e.latency_p90_ms, ".1f"), _num(e.latency_p99_ms, ".1f"),
                  _num(e.compute_p50_ms, ".1f"), _num(e.throughput_fps, ".2f"), *watts,
                  _num(e.host_peak_mib, ".0f"), _num(e.gpu_peak_mib, ".0f"),
                  _num(e.speedup_vs_reference, ".2f") + ("x" if e.speedup_vs_reference else ""),
                  f"skipped: {e.skipped}" if e.skipped else "")
    console.print(t)
    for reason, names in skipped.items():
        console.print(f"skipped {', '.join(names)}: {reason}", markup=False)
    from ..bench.jetson import NOT_JETSON

    no_power = {e.power_total_w for e in report.entries if isinstance(e.power_total_w, str)} - {NOT_JETSON}
    for reason in sorted(no_power):  # a Jetson whose rails could not be read
        console.print(f"note: no power figure: {reason}", markup=False)
    for n in getattr(report, "notes", []):
        console.print(f"note: {n}", markup=False)
    for w in getattr(report, "warnings", []):
        console.print(f"[yellow]warning:[/] {escape(str(w))}")


_FOLDER_OPTIONS = {"out": "--out", "report": "--report"}
_FILE_OPTIONS = {"json": "--json", "plot": "--plot"}


def _check_outputs(**paths: Optional[Path]) -> None:
    """Refuse, before any work, an output path that cannot be written (``utils.ensure_output_dir`` /
    ``ensure_output_file``): keyword = the option's name (``out``, ``report``: folders; ``json``, ``plot``: files).

    Raises:
        ConfigError: one line naming the option and the path.
    """
    from ..core.utils import ensure_output_dir, ensure_output_file

    for key, path in paths.items():
        if path is None:
            continue
        if key in _FOLDER_OPTIONS:
            ensure_output_dir(path, _FOLDER_OPTIONS[key])
        else:
            ensure_output_file(path, _FILE_OPTIONS[key])


def register(app: typer.Typer) -> None:
    """Add ``check``, ``bench`` and ``demo`` to the app. Defaults are read from the config dataclasses."""
    from ..bench.config import BenchConfig
    from ..check.config import CheckConfig
    from ..demo import DemoConfig

    cc, bc, dc = CheckConfig(), BenchConfig(), DemoConfig()

    @app.command(epilog="\b\nExamples:\n  danet-edge check export/m/*.onnx -r best.pt --dataset camvid --data CAMVID -o runs/check\n  "
                        "danet-edge check model_int8_trt.engine -r export/m/reference  (on the device, no PyTorch)\n  "
                        "danet-edge check model_int8_trt.engine -r best.pt --min-agreement int8=98.5")
    def check(
        artifacts: list[Path] = typer.Argument(..., help="Artifacts to check: .onnx, .engine/.plan, .pt (with manifests)."),
        reference: Path = typer.Option(..., "--reference", "-r", help="The PyTorch checkpoint the artifacts came "
                                       "from, or the reference bundle export wrote (reference/: no PyTorch needed)."),
        dataset: Optional[Dataset] = typer.Option(None, "--dataset", "-d", help="Data set (default synthetic; "
                                                  "none with a bundle)."),
        data: Optional[Path] = typer.Option(None, "--data", help="Data set folder (not needed for synthetic)."),
        split: Split = typer.Option("val", help="Split to evaluate on."),
        limit: Optional[int] = typer.Option(cc.limit, help="Evaluate at most N images."),
        thresholds: Optional[Path] = typer.Option(None, help="JSON thresholds per precision "
                                                  '({"fp16": {"min_agreement": 99.5, "max_miou_drop": 0.2}}).'),
        min_agreement: list[str] = typer.Option([], help="Minimum agreement (%): '99.0' (all) or 'fp16=99.0'; repeatable."),
        max_miou_drop: list[str] = typer.Option([], help="Largest mIoU drop (points): '0.5' or 'int8=1.5'; repeatable."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON here."),
        report: Optional[Path] = typer.Option(None, "--report", "-o", help="Folder for report.md, report.html (self-contained) and disagreement PNGs."),
        pictures: int = typer.Option(cc.pictures, help="Frames per artifact in the disagreement picture."),
        backend: Optional[choice_enum("Backend", backend_names())] = typer.Option(  # type: ignore[valid-type]
            None, "--backend", help="Run the artifacts on this backend (default: by file suffix), e.g. "
            "openvino-bf16: its accuracy is what that runtime gives, not the graph's."),
    ) -> None:
        """Accuracy of each artifact against the PyTorch reference: mIoU, agreement, logit error, real precision.

        Exit code 1 when any artifact misses its thresholds (after writing the reports).
        """
        from ..check.run import check_artifacts
        from ..check.thresholds import load_thresholds, parse_threshold_overrides
        from ..export.reference import is_bundle

        if thresholds is not None and (min_agreement or max_miou_drop):
            raise ConfigError("give thresholds either as --thresholds FILE or as --min-agreement/--max-miou-drop, not both")
        th = load_thresholds(thresholds) if thresholds is not None else \
            parse_threshold_overrides(min_agreement, max_miou_drop)
        cfg = CheckConfig(limit=limit, thresholds=th, json_path=json_out, report_dir=report, pictures=pictures,
                          backend=backend.value if backend else None)
        _check_outputs(json=json_out, report=report)  # before the (long) check: a bad path is one line now
        if is_bundle(reference):
            if dataset is not None or data is not None:
                raise ConfigError("a reference bundle brings its own images: drop --dataset/--data")
            ds = None
        else:
            from ..data.datasets import build_dataset  # torch: a checkpoint reference needs it anyway

            ds = build_dataset(dataset.value if dataset else "synthetic", data, split=split.value, limit=limit)
        result = check_artifacts(artifacts, reference, ds, cfg)
        print_check_table(result)
        for label, path in (("JSON", result.json_path), ("report", result.markdown_path),
                            ("HTML report", result.html_path)):
            if path:
                console.print(f"{label}: {path}")
        for w in result.warnings:
            console.print(f"[yellow]warning:[/] {escape(str(w))}")
        result.raise_for_failure()

    @app.command(epilog="\b\nExamples:\n  danet-edge bench export/m/*.onnx -r best.pt --json bench.json --plot bench.png\n  "
                        "danet-edge bench model_int8_trt.engine model_fp16.engine -r best.pt")
    def bench(
        artifacts: list[Path] = typer.Argument(None, help="Artifacts to time: .onnx, .engine/.plan, .pt."),
        reference: Optional[Path] = typer.Option(None, "--reference", "-r", help="PyTorch checkpoint timed as the FP32 eager reference."),
        warmup: int = typer.Option(bc.warmup, help="Untimed runs before timing, at least (see --warmup-s)."),
        warmup_s: float = typer.Option(bc.warmup_s, "--warmup-s", help="Untimed time before timing, at least, in "
                                       "seconds (trtexec --warmUp, in ms there); 0: --warmup runs only."),
        runs: int = typer.Option(bc.runs, help="Timed runs, at least (see --duration)."),
        duration_s: float = typer.Option(bc.duration_s, "--duration", help="Timed window, at least, in seconds "
                                         "(trtexec --duration): timing ends when both --runs and this are done, "
                                         "or at max(--runs, 10000) runs; 0: --runs only."),
        batch: list[int] = typer.Option([], help="Batch sizes for PyTorch (static graphs run at their own batch); repeatable."),
        threads: Optional[int] = typer.Option(bc.threads, help="CPU threads for PyTorch and ONNX Runtime."),
        device: Optional[str] = typer.Option(bc.device, help="Torch device for PyTorch entries (cpu, cuda)."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON here."),
        plot: Optional[Path] = typer.Option(None, help="Accuracy-vs-latency plot (PNG)."),
        check_json: Optional[Path] = typer.Option(None, help="A check JSON: its mIoU goes into the plot."),
        out: Optional[Path] = typer.Option(None, "--out", "-o",
                                           help="Folder for bench.json and bench.png (unless --json / --plot say)."),
    ) -> None:
        """Latency (mean, p50, p90, p99 ms) end to end and of the model alone, FPS and peak memory per artifact,
        with speed-up vs PyTorch FP32; on a Jetson also the power mode, clocks and W, mJ/frame, FPS/W.
        """
        from ..bench.run import bench_artifacts

        _check_outputs(out=out)
        if out is not None:
            json_out = json_out or out / "bench.json"
            plot = plot or out / "bench.png"
        _check_outputs(json=json_out, plot=plot)
        cfg = BenchConfig(reference=reference, warmup=warmup, runs=runs, warmup_s=warmup_s, duration_s=duration_s,
                          batches=tuple(batch) or None,
                          threads=threads, device=device, check_json=check_json, json_path=json_out, plot_path=plot)
        result = bench_artifacts(artifacts or [], cfg)
        print_bench_table(result)
        for label, path in (("JSON", result.json_path), ("plot", result.plot_path)):
            if path:
                console.print(f"{label}: {path}")

    @app.command()
    def demo(
        out: Path = typer.Option(dc.out, "--out", "-o", help="Output folder."),
        quick: bool = typer.Option(False, help="Tiny sizes and one epoch (a smoke run of every stage)."),
    ) -> None:
        """The main job on the embedded synthetic data: train, export FP32/FP16/INT8, check, bench, infer a video."""
        from ..demo import run_demo

        _check_outputs(out=out)
        result = run_demo(DemoConfig.quick(out) if quick else DemoConfig(out=out))
        print_check_table(result.check)
        print_bench_table(result.bench)
        if result.infer is not None:
            from .render import summary_table

            console.print(summary_table(result.infer))
        table = Table(title=f"danet-edge demo: {result.wall_s:.0f} s")
        table.add_column("what")
        table.add_column("path")
        for what, path in result.paths.items():
            table.add_row(what, str(path))
        console.print(table)
        if result.failed:
            console.print(f"[red]check failed:[/] {result.failed}")
