"""The bench plot (PNG, written atomically): two charts that read at a glance.

* top: latency per timed entry, a bar to the p50 and a whisker to the p99 (ms per batch), with what the entry
  really ran on (``BenchEntry.provider``: "ONNX Runtime 1.x CPUExecutionProvider", "TensorRT 10.3 on Orin") and its
  speed-up against the reference written under each bar;
* bottom: accuracy against p50 latency with honest axes: the latency axis starts at 0, the accuracy axis holds
  every point and the reference and spans at least :data:`MIN_ACCURACY_SPAN` points (a 0.1-point spread looks
  like one); every point is labelled beside it, labels pushed apart so that they never overlap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .utils import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from .bench import BenchEntry, BenchReport

__all__ = ["write_plot", "bench_figure", "accuracy_limits", "MIN_ACCURACY_SPAN"]

#: Smallest span of the accuracy axis (points of mIoU or agreement, %).
MIN_ACCURACY_SPAN = 2.0


def accuracy_limits(values: list[float], min_span: float = MIN_ACCURACY_SPAN) -> tuple[float, float]:
    """``(low, high)`` of an accuracy axis (%) that holds ``values`` with a margin, spans at least ``min_span``
    points and stays inside 0..100."""
    lo, hi = min(values), max(values)
    span = max(min_span, 1.3 * (hi - lo))
    mid = (lo + hi) / 2
    low, high = mid - span / 2, mid + span / 2
    if high > 100.0:
        low, high = low - (high - 100.0), 100.0
    if low < 0.0:
        low, high = 0.0, min(100.0, high - low)
    return low, high


def _where(e: BenchEntry) -> str:
    """What the entry ran on, in a few words."""
    return e.provider or e.backend or "?"


def _label(e: BenchEntry) -> str:
    return f"{e.name} (batch {e.batch})"


def _spread_labels(ys: list[float], min_gap: float, low: float, high: float) -> list[float]:
    """Label heights near ``ys`` (data units), at least ``min_gap`` apart and inside ``low..high``, order kept."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    pos = [ys[i] for i in order]
    for j in range(1, len(pos)):
        pos[j] = max(pos[j], pos[j - 1] + min_gap)
    overflow = pos[-1] - (high - min_gap / 2) if pos else 0.0
    if overflow > 0:
        pos = [p - overflow for p in pos]
    for j in range(len(pos)):
        pos[j] = max(pos[j], low + min_gap / 2 + j * min_gap) if pos[j] < low + min_gap / 2 else pos[j]
    out = [0.0] * len(ys)
    for j, i in enumerate(order):
        out[i] = pos[j]
    return out


def bench_figure(report: BenchReport) -> Any:
    """The two bench charts as one matplotlib Figure (see the module docstring); the caller saves or closes it.

    Raises:
        MissingDependencyError: matplotlib is not importable (``pip install 'danet-edge[plot]'``).
    """
    from ._optional import import_matplotlib

    import_matplotlib()  # selects the Agg backend
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    timed = [e for e in report.entries if e.skipped is None and e.latency_p50_ms is not None]
    skipped = [e.name for e in report.entries if e.skipped is not None]
    use_miou = any(e.miou is not None for e in timed)
    pts = [(e, e.miou if use_miou else e.agreement) for e in timed]
    left_out = [e.name for e, y in pts if y is None]
    pts = [(e, y) for e, y in pts if y is not None]
    n = max(1, len(timed))
    fig, (ax_l, ax_a) = plt.subplots(2, 1, figsize=(11, 3.2 + 0.62 * n + 4.6), dpi=110,
                                     gridspec_kw={"height_ratios": [1.0 + 0.62 * n, 4.6]})
    machine = report.machine.get("gpu") or report.machine.get("cpu") or ""

    # ---- latency bars: p50 bar, p99 whisker, provider and speed-up under each bar
    ys = list(range(len(timed)))[::-1]
    for y, e in zip(ys, timed):
        colour = "tab:orange" if e.is_reference else "tab:blue"
        p99 = e.latency_p99_ms if e.latency_p99_ms is not None else e.latency_p50_ms
        ax_l.barh(y + 0.18, e.latency_p50_ms, height=0.36, color=colour)
        ax_l.errorbar(e.latency_p50_ms, y + 0.18, xerr=[[0.0], [max(0.0, p99 - e.latency_p50_ms)]], fmt="none",
                      ecolor="black", capsize=4, lw=1.2)
        base = e.speedup_baseline or "reference"
        base = "the reference" if base.startswith("pytorch-fp32-eager (reference)") else base
        speed = "" if e.speedup_vs_reference is None or e.is_reference else \
            f"  ·  {e.speedup_vs_reference:.2f}x faster than {base}" if e.speedup_vs_reference >= 1 else \
            f"  ·  {1 / e.speedup_vs_reference:.2f}x slower than {base}"
        ax_l.text(0.0, y - 0.2, f" ran on {_where(e)}  ·  p50 {e.latency_p50_ms:.1f} ms, p99 {p99:.1f} ms{speed}",
                  va="center", ha="left", fontsize=8, clip_on=False)
    ax_l.set_yticks(ys)
    ax_l.set_yticklabels([_label(e) for e in timed], fontsize=8)
    ax_l.set_ylim(-0.7, len(timed) - 0.3)
    ax_l.set_xlim(0, 1.15 * max([(e.latency_p99_ms or e.latency_p50_ms) for e in timed] or [1.0]))
    ax_l.set_xlabel("latency per batch (ms)")
    ax_l.set_ylabel("entry")
    title = "Latency per entry: bar = p50, whisker = p99 (lower is better)"
    if machine:
        title += f"\non {machine}"
    if skipped:
        title += f"\nnot timed: {', '.join(skipped)}"[:160]
    ax_l.set_title(title, fontsize=10)
    ax_l.grid(True, axis="x", alpha=0.3)
    ax_l.legend(handles=[Patch(color="tab:blue", label="artifact p50"),
                         Patch(color="tab:orange", label="reference p50"),
                         Line2D([], [], color="black", marker="|", lw=1.2, label="p99")],
                fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)

    # ---- accuracy vs latency: honest axes, labels beside the points
    what = "mIoU (%)" if use_miou else "agreement with the reference (%)"
    for e, y in pts:
        ax_a.scatter(e.latency_p50_ms, y, s=110 if e.is_reference else 50, marker="*" if e.is_reference else "o",
                     color="tab:orange" if e.is_reference else "tab:blue", zorder=3)
    if pts:
        low, high = accuracy_limits([y for _, y in pts])
        ax_a.set_ylim(low, high)
        xmax = max(e.latency_p50_ms for e, _ in pts)
        ax_a.set_xlim(0, 2.1 * xmax)  # room on the right for the labels
        gap = (high - low) * 0.12  # two lines of 7.5 pt on an axes about 270 pt high, with air
        heights = _spread_labels([y for _, y in pts], gap, low, high)
        for (e, y), ly in zip(pts, heights):
            ax_a.annotate(f"{e.name}: {y:.2f} %, {e.latency_p50_ms:.1f} ms\n{_where(e)}",
                          xy=(e.latency_p50_ms, y), xytext=(xmax * 1.08, ly), fontsize=7.5, va="center",
                          arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.8})
    ax_a.set_xlabel("latency p50 per batch (ms)")
    ax_a.set_ylabel(what)
    atitle = ("Accuracy vs latency: mIoU from the check report" if use_miou else
              "Accuracy vs latency: agreement on the bench batch (a quick proxy, not accuracy)")
    atitle += f" (y axis spans at least {MIN_ACCURACY_SPAN:g} points)"
    if left_out:
        atitle += f"\nnot plotted (no accuracy): {', '.join(left_out)}"[:160]
    ax_a.set_title(atitle, fontsize=10)
    ax_a.grid(True, alpha=0.3)
    ax_a.legend(handles=[Line2D([], [], marker="*", color="tab:orange", ls="", ms=11, label="reference"),
                         Line2D([], [], marker="o", color="tab:blue", ls="", ms=7, label="artifact")],
                fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def write_plot(report: BenchReport, path: Path) -> Path:
    """Write :func:`bench_figure` as a PNG, atomically; returns ``path``.

    Raises:
        MissingDependencyError: matplotlib is not importable (``pip install 'danet-edge[plot]'``).
    """
    fig = bench_figure(report)
    import matplotlib.pyplot as plt  # bench_figure selected Agg

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
