"""How the command line shows results: rich tables built from the stages' result records (no stage module
renders; each returns a record and the CLI draws it here)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..infer.results import InferSummary, summary_lines
from ._common import console as _console

if TYPE_CHECKING:  # annotations only: the command line starts without PyTorch
    from ..train.evaluate import EvalResult

# Tables stay readable when piped (rich falls back to 80 columns off a terminal).
console = _console if _console.is_terminal else Console(width=220)

__all__ = ["paths_table", "eval_table", "cost_tables", "summary_table", "print_check_table", "print_bench_table", "console"]


def summary_table(summary: InferSummary) -> Any:
    """A rich renderable: the throughput (FPS) and end-to-end latency line in bold, the per-stage latency table (ms),
    then the rest of :func:`summary_lines`."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"{summary.frames} frames, {summary.fps:.2f} FPS end to end ({summary.backend}, batch {summary.batch})")
    t.add_column("stage")
    t.add_column("p50 ms", justify="right")
    t.add_column("p99 ms", justify="right")
    t.add_column("mean ms", justify="right")
    for name, s in [*summary.stages.items(), ("end-to-end", summary.end_to_end)]:
        t.add_row(name, f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}", f"{s['mean_ms']:.2f}")
    first, *rest = summary_lines(summary)
    return Group(Text(first, style="bold"), t, *(Text(line) for line in rest))


def _num(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _float(v: object) -> float | None:
    """A measured figure, or None for the strings that say why there is none ("not a Jetson")."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def print_check_table(report) -> None:
    """The check report as a rich table on the terminal."""
    t = Table(title=f"accuracy check vs {Path(report.reference).name} ({report.frames} images)")
    for col in ("artifact", "precision", "PAM", "mIoU", "ΔmIoU", "pixel acc", "agreement %", "max abs", "rel L2",
                "cosine", "inf/NaN", "result"):
        t.add_column(col, justify="left" if col in ("artifact", "PAM", "result") else "right")
    for a in report.artifacts:
        prec = a.precision if a.precision == a.manifest_precision else f"{a.precision} (manifest {a.manifest_precision})"
        prec += f" {a.quantization}" if a.quantization else ""
        result = "[green]pass[/]" if a.passed else "[red]FAIL[/] " + "; ".join(a.failures)
        t.add_row(Path(a.path).name, prec, attention_text(a.attention), _num(a.miou, ".2f"), _num(a.miou_delta, "+.3f"),
                  _num(a.pixel_accuracy, ".2f"), _num(a.agreement, ".3f"), _num(a.max_abs_error, ".3g"),
                  _num(a.rel_l2_error, ".2e"), _num(a.cosine_similarity, ".6f"), _num(a.nonfinite, "d"), result)
    console.print(t)


def attention_text(att: dict | None) -> str:
    """PAM's form in a few words: ``explicit``, ``chunked x4``, ``heads x8``, with ``fused`` / ``unfused`` /
    ``fused?`` and the engine's activation memory beside the memory model's (``412 MiB (model 380)``) for an
    engine; ``-`` without a record."""
    if not att:
        return "-"
    form = str(att.get("form", "?"))
    text = f"{form} x{att.get('chunks')}" if form == "chunked" else (f"{form} x{att.get('heads', 8)}" if form == "heads"
                                                                      else form)
    fused = att.get("fused")
    if fused is not None:
        text += {True: ", fused", False: ", unfused"}.get(fused, ", fused?")
    mem = att.get("engine_memory")
    if isinstance(mem, dict) and isinstance(mem.get("device_mib"), (int, float)):
        est = mem.get("estimate_mib")
        text += f", {mem['device_mib']:.0f} MiB" + (f" (model {est:.0f})" if isinstance(est, (int, float)) else "")
    return text


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
    for col in ("entry", "precision", "PAM", "size", "batch", "runs", "mean ms", "p50 ms", "p90 ms", "p99 ms",
                "compute p50 ms", "FPS", *(("W", "mJ/frame", "FPS/W") if power else ()), "host MiB", "GPU MiB",
                "speed-up", "note"):
        t.add_column(col, justify="left" if col in ("entry", "PAM", "note") else "right")
    skipped: dict[str, list[str]] = {}
    for e in report.entries:
        if e.skipped and e.latency_p50_ms is None and "GPU" in e.skipped:  # one line for the GPU-only variants
            skipped.setdefault(e.skipped, []).append(e.name)
            continue
        size = f"{e.image_size[0]}x{e.image_size[1]}" if e.image_size else "-"
        watts = [_num(_float(v), spec) for v, spec in ((e.power_total_w, ".2f"), (e.energy_per_frame_mj, ".1f"),
                                                       (e.fps_per_w, ".2f"))] if power else []
        t.add_row(e.name, e.precision + (f" {e.quantization}" if e.quantization else ""), attention_text(e.attention), size, str(e.batch), str(e.runs),
                  _num(e.latency_mean_ms, ".1f"),
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


def eval_table(self: EvalResult) -> Any:
    """An evaluation as a ``rich.table.Table``: per-class IoU, then mIoU, pixel accuracy, mean class accuracy (%)."""
    mode = "multi-scale" + (" + flip" if self.flip else "") if self.multi_scale else \
        ("single scale + flip" if self.flip else "single scale")
    t = Table(title=f"{self.dataset or 'evaluation'}: {self.num_images} images, {mode}")
    t.add_column("class")
    t.add_column("IoU %", justify="right")

    def pct(v: float) -> str:
        return "-" if math.isnan(v) else f"{100 * v:.2f}"

    for name, v in self.per_class_iou.items():
        t.add_row(name, pct(v))
    t.add_section()
    t.add_row("[bold]mIoU[/bold]", f"[bold]{pct(self.miou)}[/bold]")
    t.add_row("pixel accuracy", pct(self.pixel_accuracy))
    t.add_row("mean class accuracy", pct(self.mean_class_accuracy))
    t.add_row("ms / image", f"{self.ms_per_image:.1f}")
    return t


def cost_tables(path: Path, cost: Any, memory: Any = None) -> list[Any]:
    """A graph's ``graph.cost.GraphCost`` as tables: GFLOP, share and MiB moved per precision, the latency lower
    bound per Jetson target and, with ``memory`` (``graph.memory.MemoryEstimate``), PAM's form and whether the
    graph fits each Jetson's memory."""
    from ..graph.cost import JETSON_TARGETS

    t = Table(title=f"{path.name}: {cost.total_gflop:.2f} GFLOP (estimate)")
    for col in ("runs at", "GFLOP", "share %", "MiB moved"):
        t.add_column(col, justify="left" if col == "runs at" else "right")
    for p, r in cost.by_precision.items():
        t.add_row(p, f"{r['gflop']:.3f}", f"{r['flop_share_pct']:.2f}", f"{r['mib']:.1f}")
    b = Table(title="latency lower bound (roofline on published dense peaks; not a prediction)")
    for col in ("target", "compute ms", "memory ms", "bound ms", "unfused traffic ms"):
        b.add_column(col, justify="left" if col == "target" else "right")
    for name, v in cost.bound_ms.items():
        b.add_row(JETSON_TARGETS[name].name, f"{v['compute_ms']:.2f}", f"{v['memory_ms']:.2f}",
                  f"{v['bound_ms']:.2f}", f"{v['unfused_memory_ms']:.2f}")
    if memory is None:
        return [t, b]
    a = memory.attention
    form = a.form + (f", {a.chunks} query chunks" if a.form == "chunked" else f", {a.heads} heads" if a.heads > 1 else "")
    m = Table(title=f"memory (estimate): PAM {form}, largest attention map {a.map_mib:.1f} MiB, {a.gflop:.2f} GFLOP; "
                    f"weights {memory.weights_mib:.0f} + activations {memory.activations_mib:.0f} = "
                    f"{memory.total_mib:.0f} MiB, {memory.reserve_mib:.0f} MiB kept for OS and video")
    for col in ("board", "memory MiB", "free MiB", "fits"):
        m.add_column(col, justify="left" if col == "board" else "right")
    for name, r in memory.boards.items():
        m.add_row(name, f"{r['memory_mib']:.0f}", f"{r['free_mib']:.0f}", "yes" if r["fits"] else "[red]no[/]")
    return [t, b, m]


def paths_table(title: str, paths: dict[str, Any]) -> Any:
    """Where every artifact and report is: one row per ``what -> path``."""
    table = Table(title=title)
    table.add_column("what")
    table.add_column("path")
    for what, path in paths.items():
        table.add_row(what, str(path))
    return table
