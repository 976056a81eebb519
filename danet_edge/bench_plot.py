"""The bench plot: accuracy against p50 latency, one point per timed entry (PNG, written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .utils import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from .bench import BenchReport

__all__ = ["write_plot"]


def write_plot(report: BenchReport, path: Path) -> Path:
    """Accuracy (mIoU from the check JSON, else agreement with the reference on the benchmark batch)
    against p50 latency, one point per timed entry; entries with neither are left out (listed in
    the title). Writes a PNG atomically.

    Raises:
        MissingDependencyError: matplotlib is not importable (``pip install 'danet-edge[plot]'``).
    """
    from ._optional import import_matplotlib

    import_matplotlib()  # selects the Agg backend
    import matplotlib.pyplot as plt

    timed = [e for e in report.entries if e.skipped is None and e.latency_p50_ms is not None]
    use_miou = any(e.miou is not None for e in timed)
    pts = [(e, e.miou if use_miou else e.agreement) for e in timed]
    left_out = [e.name for e, y in pts if y is None]
    pts = [(e, y) for e, y in pts if y is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for e, y in pts:
        ax.scatter(e.latency_p50_ms, y, s=60 if e.is_reference else 40, marker="*" if e.is_reference else "o",
                   label=f"{e.name} (b{e.batch}): {e.latency_p50_ms:.1f} ms, {y:.2f}")
    ax.set_xlabel("latency p50 per batch (ms)")
    ax.set_ylabel("mIoU (%)" if use_miou else "agreement with the reference (%)")
    ax.margins(x=0.25, y=0.15)
    title = "danet-edge bench: " + ("mIoU (from the check report) vs latency" if use_miou else
                                   "agreement on the bench batch (a quick proxy, not accuracy) vs latency")
    if report.machine.get("gpu") or report.machine.get("cpu"):
        title += f"\n{report.machine.get('gpu') or report.machine.get('cpu')}"
    if left_out:
        title += f"\nnot plotted (no accuracy): {', '.join(left_out)[:90]}"
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    if pts:  # a legend, not labels beside the points: points of near-equal accuracy overlap
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
