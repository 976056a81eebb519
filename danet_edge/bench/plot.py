"""The bench plot (PNG, written atomically): two charts that read at a glance.

* top: latency per timed entry, a bar to the p50 and a whisker to the p99 (ms per batch), with what the entry
  really ran on (``BenchEntry.provider``: "ONNX Runtime 1.x CPUExecutionProvider", "TensorRT 10.3 on Orin") and its
  speed-up against the reference written under each bar;
* bottom: accuracy against p50 latency with honest axes: the latency axis starts at 0, the accuracy axis holds
  every point and the reference and spans at least :data:`MIN_ACCURACY_SPAN` points (a 0.1-point spread looks
  like one); every point is labelled next to it (right of it where free, else left of it, else just above or below with a
  short leader line), labels never over each other, a leader line or a point.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence
from typing import Any

from ..core.utils import atomic_path

from .results import BenchEntry, BenchReport

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


def _hits(box: tuple[float, float, float, float], x0: float, y0: float, x1: float, y1: float) -> bool:
    """Whether the segment (x0, y0)-(x1, y1) passes through ``box`` (x0, y0, x1, y1), sampled every ~2 px."""
    n = max(2, int(max(abs(x1 - x0), abs(y1 - y0)) / 2))
    return any(box[0] < x0 + (x1 - x0) * k / n < box[2] and box[1] < y0 + (y1 - y0) * k / n < box[3]
               for k in range(n + 1))


def _place_labels(fig: Any, ax: Any, pts: list[tuple[Any, float]], texts: list[str]) -> list[Any]:
    """Annotate each point of ``pts`` (entry, accuracy) with its text next to the point: right of it where that is
    free, else left of it, else a little above or below (with a short leader line), nearest spot first; never over
    another label, leader line or point, always inside the axes. Greedy, in display pixels, the rightmost point
    first. Returns the annotations."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    marker_r, gap = 7.0, 10.0  # px: half a marker kept clear; space between a point and its label
    sizes = []
    for (e, y), text in zip(pts, texts):
        probe = ax.annotate(text, xy=(e.latency_p50_ms, y), fontsize=7.5, va="center", ha="left")
        bb = probe.get_window_extent(renderer)
        sizes.append((bb.width, bb.height))
        probe.remove()
    last = max(range(len(pts)), key=lambda k: pts[k][0].latency_p50_ms)  # the slowest point: its label fits right
    room = box.width - gap - 4 - sizes[last][0]
    if room > 0.3 * box.width:
        ax.set_xlim(0, max(ax.get_xlim()[1], pts[last][0].latency_p50_ms * box.width / room))
    xy = [tuple(ax.transData.transform((e.latency_p50_ms, y))) for e, y in pts]
    boxes: list[tuple[float, float, float, float]] = []
    lines: list[tuple[float, float, float, float]] = []
    out = []
    for i in sorted(range(len(pts)), key=lambda k: (-xy[k][0], -xy[k][1])):
        (e, y), (px, py) = pts[i], xy[i]
        w, h = sizes[i]
        # beside the point (right, then left), then above / below; a label too wide for either side slides
        # along its row to stay inside the axes, its leader line then ending at its top or bottom edge
        inside = min(max(gap, box.x0 + 2 - px), box.x1 - 2 - w - px)
        steps = max(14, int(box.height / (0.55 * h)) + 1)
        candidates = [(dx, s * k * h * 0.55) for k in range(0, steps) for s in ((1,) if k == 0 else (1, -1))
                      for dx in ((gap, -gap - w) if k < 2 else (gap, -gap - w, inside))]

        def spot(dx: float, dy: float) -> tuple[tuple[float, float, float, float], tuple[float, float, float, float]]:
            x0, y0 = px + dx, py + dy - h / 2
            if x0 <= px <= x0 + w:  # over or under the point: the line meets the near horizontal edge
                end = (px, y0 if dy > 0 else y0 + h)
            else:  # beside it: the near vertical edge, at the label's middle
                end = (x0 if dx > 0 else x0 + w, py + dy)
            return (x0, y0, x0 + w, y0 + h), (px, py, *end)

        def free(dx: float, dy: float) -> bool:
            (x0, y0, x1, y1), seg = spot(dx, dy)
            if x0 < box.x0 + 2 or x1 > box.x1 - 2 or y0 < box.y0 + 2 or y1 > box.y1 - 2:
                return False
            if any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in boxes):
                return False
            if any(x0 - marker_r < qx < x1 + marker_r and y0 - marker_r < qy < y1 + marker_r for qx, qy in xy):
                return False
            if dy and any(_hits(b, *seg) for b in boxes):
                return False
            return not any(_hits((x0, y0, x1, y1), *line) for line in lines)

        dx, dy = next((c for c in candidates if free(*c)), candidates[0])
        label_box, seg = spot(dx, dy)
        x0, y0 = label_box[:2]
        boxes.append(label_box)
        if dy:
            lines.append(seg)
        arrow = {"arrowstyle": "-", "color": "0.5", "lw": 0.8, "shrinkA": 0, "shrinkB": 3,  # from the near edge
                 "relpos": ((seg[2] - x0) / w, (seg[3] - y0) / h)} if dy else None
        out.append(ax.annotate(texts[i], xy=(e.latency_p50_ms, y), xytext=(dx, dy), textcoords="offset pixels",
                               fontsize=7.5, va="center", ha="left", arrowprops=arrow))
    return out


def _fit_inside(fig: Any, ax: Any, texts: Sequence[Any], min_size: float = 6.5) -> None:
    """Make each text end inside ``ax``'s right edge: a smaller font (down to ``min_size`` pt), else what follows
    its first ``"  ·  "`` on a second line at the first size, then smaller again if need be."""
    renderer = fig.canvas.get_renderer()
    right = ax.get_window_extent(renderer).x1

    def shrink(t: Any, floor: float) -> None:  # stepwise: rendered glyph sizes are quantised
        while t.get_window_extent(renderer).x1 > right and t.get_fontsize() > floor:
            t.set_fontsize(max(floor, 0.95 * t.get_fontsize()))

    for t in texts:
        size = t.get_fontsize()
        shrink(t, min_size)
        text = t.get_text()
        if t.get_window_extent(renderer).x1 > right and "  ·  " in text:
            head, _, tail = text.partition("  ·  ")  # where it ran | the figures
            t.set_text(f"{head}\n {tail}")
            t.set_fontsize(size)
            shrink(t, 5.0)


def bench_figure(report: BenchReport) -> Any:
    """The two bench charts as one matplotlib Figure (see the module docstring); the caller saves or closes it.

    Raises:
        MissingDependencyError: matplotlib is not importable (``pip install 'danet-edge[plot]'``).
    """
    from ..core.optional import import_matplotlib

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
    captions = []
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
        captions.append(ax_l.text(0.0, y - 0.2,
                                  f" ran on {_where(e)}  ·  p50 {e.latency_p50_ms:.1f} ms, p99 {p99:.1f} ms{speed}",
                                  va="center", ha="left", fontsize=8, clip_on=False))
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
        ax_a.set_xlim(0, 1.6 * xmax)  # widened by _place_labels until the slowest point's label fits right
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
    _fit_inside(fig, ax_l, captions)
    if pts:  # after the layout: labels are placed in display pixels
        _place_labels(fig, ax_a, pts, [f"{e.name}: {y:.2f} %, {e.latency_p50_ms:.1f} ms\n{_where(e)}" for e, y in pts])
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
