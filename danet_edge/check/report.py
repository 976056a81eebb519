"""What ``check`` writes for people: ``report.md``, ``report.html`` and the disagreement pictures.

* ``NN_<artifact>_disagreement.png`` (one per artifact, Pillow only): for the frames with most disagreement, large
  side-by-side tiles ``image | ground truth (when the data set is labelled) | reference | artifact |
  disagreement`` (disagreeing pixels white on the darkened image), column titles in a readable font and a legend
  of every class in the model's order;
* ``report.md``: the summary table, per-artifact details and the per-class IoU table;
* ``report.html``: one self-contained page (every picture embedded as a base64 PNG): the summary table, per-class
  IoU per artifact against the reference as a grouped bar chart, the row-normalised confusion matrices of the
  reference and of the artifact that agrees least with it, and the disagreement pictures. The charts need
  matplotlib (the ``plot`` extra); without it the page keeps its tables and pictures and the report gets one
  warning line.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import MissingDependencyError
from ..infer.render import disagreement_tile
from ..core.utils import atomic_path

from ..core.metrics import ConfusionMatrix
from .results import ArtifactStats, CheckReport, attention_line

__all__ = ["write_pictures", "write_markdown", "write_html", "disagreement_picture", "per_class_iou_figure",
           "confusion_figure", "precision_source_text", "MIN_TILE_HEIGHT"]

#: Smallest height of one tile in the disagreement pictures (px); smaller model inputs are enlarged
#: (nearest neighbour, an integer factor) so that a 64x96 model still gives readable tiles.
MIN_TILE_HEIGHT = 288


# ------------------------------------------------------------------------------------------ pictures
def _font(size: int) -> Any:
    """A scalable TrueType font at ``size`` px (Pillow >= 10.1 ships one), else Pillow's bitmap font."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def _colour(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    return palette[np.clip(labels, 0, len(palette) - 1)]


def _legend_strip(classes: Sequence[str], palette: np.ndarray, width: int, font_px: int) -> np.ndarray:
    """Every class in the model's order as swatch + name, wrapped over rows ``width`` px wide."""
    from PIL import Image, ImageDraw

    font = _font(font_px)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    sw, pad = font_px, font_px // 2
    items = [(k, sw + pad + int(probe.textlength(str(name), font=font)) + 2 * pad) for k, name in enumerate(classes)]
    rows: list[list[tuple[int, int]]] = [[]]
    used = pad
    for k, w in items:
        if rows[-1] and used + w > width:
            rows.append([])
            used = pad
        rows[-1].append((k, w))
        used += w
    row_h = font_px + pad + 4
    img = Image.new("RGB", (width, pad + row_h * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for r, row in enumerate(rows):
        x, y = pad, pad // 2 + r * row_h + 2
        for k, w in row:
            draw.rectangle([x, y, x + sw, y + sw], fill=tuple(int(v) for v in palette[k]), outline=(0, 0, 0))
            draw.text((x + sw + pad, y + sw // 2), str(classes[k]), fill=(0, 0, 0), font=font, anchor="lm")
            x += w
    return np.asarray(img)


def disagreement_picture(rows: Sequence[tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]],
                         palette: Sequence[Sequence[int]], classes: Sequence[str], artifact: str,
                         captions: Sequence[str] = (), ignore_index: int | None = None) -> Any:
    """The side-by-side picture of some frames, as a PIL image.

    Args:
        rows: per frame ``(image (h, w, 3) uint8 RGB, ground truth (h, w) or None, reference labels (h, w),
            artifact labels (h, w))``, all at the artifact's size.
        palette: one RGB colour per class; classes: the class names (the legend, every class in this order).
        artifact: the artifact's name (column title). captions: one line per frame (drawn above its row).
        ignore_index: ground-truth value drawn black (pixels without a label); the legend then names black.

    Tiles are enlarged by an integer factor to at least :data:`MIN_TILE_HEIGHT` px; titles and legend use a
    font of about 1/16 of the tile height (at least 16 px).
    """
    from PIL import Image, ImageDraw

    pal = np.asarray(palette, np.uint8)
    with_gt = any(gt is not None for _, gt, _, _ in rows)
    titles = ["image", *(["ground truth"] if with_gt else []), "reference", artifact, "disagreement (white)"]
    h, w = rows[0][0].shape[:2]
    f = max(1, math.ceil(MIN_TILE_HEIGHT / h))
    th, tw = h * f, w * f
    font_px = max(16, th // 16)
    font = _font(font_px)
    gap = max(4, font_px // 3)
    cap_h = font_px + gap
    ncol = len(titles)
    width = ncol * tw + (ncol - 1) * gap
    blocks = []
    header = Image.new("RGB", (width, font_px + 2 * gap), (255, 255, 255))
    draw = ImageDraw.Draw(header)
    for j, title in enumerate(titles):
        x = j * (tw + gap) + tw // 2
        text = title if draw.textlength(title, font=font) <= tw else title[: max(3, int(len(title) * tw /
                                                                                       draw.textlength(title, font=font)) - 1)] + "…"
        draw.text((x, gap + font_px // 2), text, fill=(0, 0, 0), font=font, anchor="mm")
    blocks.append(np.asarray(header))
    for r, (img, gt, ref, art) in enumerate(rows):
        img = np.asarray(img, np.uint8)
        diff = ref != art
        highlight = disagreement_tile(img, diff)
        tiles = [img]
        if with_gt:
            g = np.zeros_like(img) if gt is None else _colour(np.asarray(gt), pal)
            if gt is not None and ignore_index is not None:
                g[np.asarray(gt) == ignore_index] = 0
            tiles.append(g)
        tiles += [_colour(ref, pal), _colour(art, pal), highlight]
        big = [np.repeat(np.repeat(t, f, 0), f, 1) for t in tiles]
        spacer = np.full((th, gap, 3), 255, np.uint8)
        row = np.concatenate([x for t in big for x in (t, spacer)][:-1], axis=1)
        cap = Image.new("RGB", (width, cap_h), (255, 255, 255))
        if r < len(captions):
            ImageDraw.Draw(cap).text((gap, cap_h // 2), captions[r], fill=(0, 0, 0), font=font, anchor="lm")
        blocks += [np.asarray(cap), row]
    blocks.append(np.full((gap, width, 3), 255, np.uint8))
    names, colours = list(classes), pal[:len(classes)]
    if with_gt and ignore_index is not None and any(gt is not None and bool((np.asarray(gt) == ignore_index).any())
                                                    for _, gt, _, _ in rows):
        names.append("no label (ignored)")  # the black of the ground-truth tiles
        colours = np.concatenate([colours, np.zeros((1, 3), np.uint8)])
    blocks.append(_legend_strip(names, colours, width, font_px))
    return Image.fromarray(np.concatenate(blocks, axis=0))


def _worst_rows(acc: ArtifactStats, labelled: bool) -> tuple[list[Any], list[str]]:
    rows, caps = [], []
    for bad, neg_idx, img, ref, art, gt in sorted(acc.worst, key=lambda t: t[:2], reverse=True):
        rows.append((img, gt if labelled else None, ref, art))
        caps.append(f"frame {-neg_idx}: {100.0 * bad / max(1, ref.size):.2f} % of pixels disagree with the reference")
    return rows, caps


def write_pictures(report: CheckReport, accs: list[ArtifactStats], palette: list[list[int]], out: Path,
                   labelled: bool = True, ignore_index: int | None = 255) -> None:
    """One PNG per artifact (``NN_<name>_disagreement.png`` in ``out``): :func:`disagreement_picture` of the frames
    with most disagreement, most first; sets ``ArtifactCheck.picture``. Written atomically."""
    for i, (res, acc) in enumerate(zip(report.artifacts, accs)):
        if not acc.worst:
            continue
        rows, caps = _worst_rows(acc, labelled)
        pic = disagreement_picture(rows, palette, report.classes, Path(res.path).name, caps, ignore_index)
        name = out / f"{i:02d}_{Path(res.path).name}_disagreement.png"
        with atomic_path(name) as tmp:
            pic.save(tmp, format="PNG")
        res.picture = str(name)


# ------------------------------------------------------------------------------------------ text
def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


_SOURCES = {  # what older reports / backends wrote -> what a reader understands
    "precision.precision_report": "read from the ONNX graph's node types",
    "precision_report": "read from the ONNX graph's node types",
    "ONNX graph (node types)": "read from the ONNX graph's node types",
    "checkpoint (float32 weights, eager FP32)": "PyTorch checkpoint: float32 weights, run in eager FP32",
    "engine layers (TensorRT engine inspector)": "read from the engine's layers (TensorRT engine inspector)",
    "engine manifest (no layer information)": "as the engine's manifest says (no layer information)",
}


def precision_source_text(source: str) -> str:
    """Where the artifact's precision was read, in words (never an internal function name)."""
    if source in _SOURCES:
        return _SOURCES[source]
    if "precision_report" in source or "artifact_precision" in source:
        return "read from the artifact itself"
    return source


def _summary_rows(report: CheckReport) -> list[list[str]]:
    return [[Path(a.path).name, f"{a.precision}{' ' + a.quantization if a.quantization else ''} "
             f"({precision_source_text(a.precision_source)})", f"{a.miou:.2f}",
             f"{a.reference_miou:.2f}", f"{a.miou_delta:+.3f}", f"{a.pixel_accuracy:.2f}", f"{a.agreement:.3f}",
             _fmt(a.max_abs_error, ".3g"), _fmt(a.rel_l2_error, ".2e"), _fmt(a.cosine_similarity, ".6f"),
             _fmt(a.nonfinite, "d"), "pass" if a.passed else "FAIL: " + "; ".join(a.failures)]
            for a in report.artifacts]


_SUMMARY_HEAD = ["artifact", "precision (source)", "mIoU %", "ref mIoU %", "ΔmIoU (points)", "pixel acc %",
                 "agreement %", "max abs logit error", "rel L2", "cosine", "inf/NaN", "result"]


def _class_rows(report: CheckReport) -> tuple[list[str], list[list[str]]]:
    """Per-class IoU (%) table: the reference (at the first artifact's size) then each artifact."""
    head = ["class", "reference", *[Path(a.path).name for a in report.artifacts]]
    ref = report.artifacts[0].reference_per_class_iou if report.artifacts else []
    rows = []
    for k, name in enumerate(report.classes):
        vals = [ref[k] if k < len(ref) else None] + [a.per_class_iou[k] if k < len(a.per_class_iou) else None
                                                     for a in report.artifacts]
        rows.append([name, *[_fmt(v, ".2f") for v in vals]])
    return head, rows


def write_markdown(report: CheckReport, path: Path) -> None:
    """``report.md``: summary table, per-class IoU table (%), per-artifact details and pictures. Written atomically."""
    lines = [f"# danet-edge accuracy check: {'PASSED' if report.passed else 'FAILED'}", "",
             f"Reference `{report.reference}`, data set {report.dataset or '-'}, {report.frames} images, "
             f"{len(report.classes)} classes. Images resized to each artifact's static size, labels brought back "
             "to the image size (the `infer` path); agreement and logit errors at the artifact's size.", "",
             "| " + " | ".join(_SUMMARY_HEAD) + " |", "|" + "---|" * len(_SUMMARY_HEAD)]
    for r in _summary_rows(report):
        lines.append("| " + " | ".join([f"`{r[0]}`", *r[1:]]) + " |")
    if report.artifacts and any(v is not None for a in report.artifacts for v in a.per_class_iou):
        head, rows = _class_rows(report)
        lines += ["", "## Per-class IoU (%)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines += ["", "`-`: the class is in neither the ground truth nor the prediction."]
    for a in report.artifacts:
        lines += ["", f"## `{a.path}`", "",
                  f"- thresholds ({a.precision}): agreement >= {a.thresholds['min_agreement']} %, "
                  f"mIoU drop <= {a.thresholds['max_miou_drop']}; manifest precision: {a.manifest_precision}",
                  f"- precision {a.precision}: {precision_source_text(a.precision_source)}"]
        if a.precision_detail and "attention" in a.precision_detail:  # an engine: its layers
            counts = a.precision_detail.get("counts") or {}
            att = a.precision_detail.get("attention") or {}
            lines.append("- engine layers per precision (TensorRT engine inspector): "
                         + ", ".join(f"{k} {v}" for k, v in counts.items() if v)
                         + "; attention layers: " + (", ".join(f"{k} {v}" for k, v in sorted(att.items())) or "none found"))
        elif a.precision_detail:
            counts = a.precision_detail.get("counts") or {}
            lines.append("- compute nodes per precision in the graph: "
                         + ", ".join(f"{k} {v}" for k, v in counts.items() if v)
                         + f"; attention MatMuls quantized: {a.precision_detail.get('attention_quantized') or 'none'}")
        if a.attention:
            lines.append("- " + attention_line(a.attention))
        if a.precision_detail and a.precision_detail.get("cost"):
            from ..graph.cost import format_cost

            lines += ["- " + line for line in format_cost(a.precision_detail["cost"])]
            lines.append("  (FLOPs from the static shapes by the precision each node runs at; latency bounds from "
                         "published dense GPU peaks, an estimate that knows no kernel, fusion or launch cost)")
        lines += [f"- note: {n}" for n in a.notes]
        lines += [f"- FAIL: {f}" for f in a.failures]
        if a.picture:
            lines += ["", f"![disagreement]({Path(a.picture).name})",
                      "", "Columns: image | ground truth (labelled data) | reference | artifact | disagreement "
                      "(white on the darkened image); the frames with most disagreement, legend below."]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------ charts
def per_class_iou_figure(report: CheckReport) -> Any:
    """Grouped bar chart: IoU (%) per class, one bar for the reference and one per artifact (a matplotlib Figure).

    Raises:
        MissingDependencyError: matplotlib is not importable.
    """
    from ..core.optional import import_matplotlib

    import_matplotlib()
    import matplotlib.pyplot as plt

    series = [("reference (PyTorch FP32)", report.artifacts[0].reference_per_class_iou)]
    series += [(Path(a.path).name, a.per_class_iou) for a in report.artifacts]
    k = len(report.classes)
    x = np.arange(k)
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.55 * k * max(1, len(series)) ** 0.5 + 2), 4.8), dpi=110)
    for j, (name, vals) in enumerate(series):
        v = np.array([np.nan if i >= len(vals) or vals[i] is None else vals[i] for i in range(k)], float)
        ax.bar(x - 0.4 + width * (j + 0.5), np.nan_to_num(v), width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(report.classes, rotation=40 if k > 6 else 0, ha="right" if k > 6 else "center")
    ax.set_xlabel("class")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"Per-class IoU on {report.dataset or 'the evaluation set'} ({report.frames} images)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, title="model")
    fig.tight_layout()
    return fig


def confusion_figure(mat: np.ndarray, classes: Sequence[str], title: str) -> Any:
    """Row-normalised confusion matrix (%, each true class's pixels over the predicted classes) as a heat map
    with a colour bar (its legend); values written in the cells up to 20 classes. Returns a matplotlib Figure.

    Args:
        mat: ``(K, K)`` pixel counts, ``mat[true, predicted]`` (``metrics.ConfusionMatrix.mat``).

    Raises:
        MissingDependencyError: matplotlib is not importable.
    """
    from ..core.optional import import_matplotlib

    import_matplotlib()
    import matplotlib.pyplot as plt

    m = np.asarray(mat, np.float64)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(100.0 * m, rows, out=np.zeros_like(m), where=rows > 0)
    k = len(classes)
    side = max(5.0, 0.45 * k + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=100)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("share of the true class's pixels (%)")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(classes, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (ground truth)")
    ax.set_title(title, fontsize=10)
    if k <= 20:
        for t in range(k):
            for p in range(k):
                if rows[t, 0] > 0:
                    ax.text(p, t, f"{norm[t, p]:.0f}", ha="center", va="center", fontsize=7 if k > 12 else 8,
                            color="white" if norm[t, p] > 55 else "black")
    fig.tight_layout()
    return fig


def _png_b64(fig_or_image: Any) -> str:
    buf = io.BytesIO()
    if hasattr(fig_or_image, "savefig"):
        import matplotlib.pyplot as plt

        fig_or_image.savefig(buf, format="png")
        plt.close(fig_or_image)
    else:
        fig_or_image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    # a wide table scrolls inside its own box, so a narrow window never scrolls the whole page sideways
    return f"<div class='scroll'><table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>"


def _figure(b64: str, alt: str, caption: str) -> str:
    return (f'<figure><img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


_CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:16px;margin:24px;color:#111;
max-width:1600px}table{border-collapse:collapse;margin:8px 0 16px}th,td{border:1px solid #bbb;padding:4px 8px;
text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}img{max-width:100%;height:auto;
border:1px solid #ddd}figure{margin:12px 0 24px}figcaption{font-size:14px;color:#444}.pass{color:#070}
.fail{color:#b00}.warn{color:#a60}.scroll{overflow-x:auto;max-width:100%}code{overflow-wrap:anywhere}"""


def write_html(report: CheckReport, accs: list[ArtifactStats], ref_cms: Sequence[ConfusionMatrix],
               palette: list[list[int]], path: Path, labelled: bool = True, ignore_index: int | None = 255) -> Path:
    """``report.html``: one self-contained page (images embedded as base64 PNG); see the module docstring.

    Args:
        accs: the per-artifact running state of the check (confusion matrices, worst frames).
        ref_cms: the reference's confusion matrix at each artifact's size, in artifact order.

    Without matplotlib the charts are left out and ``report.warnings`` gets one line. Written atomically.
    """
    title = f"danet-edge accuracy check: {'PASSED' if report.passed else 'FAILED'}"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1 class='{'pass' if report.passed else 'fail'}'>{html.escape(title)}</h1>",
             f"<p>Reference <code>{html.escape(report.reference)}</code>, data set "
             f"{html.escape(report.dataset or '-')}, {report.frames} images, {len(report.classes)} classes. mIoU, "
             "IoU and pixel accuracy in %, ΔmIoU in points (artifact − reference); agreement: share of pixels whose "
             "class equals the reference's.</p>",
             "<h2>Summary</h2>", _table(_SUMMARY_HEAD, _summary_rows(report))]
    charts = True
    try:
        from ..core.optional import import_matplotlib

        import_matplotlib()
    except MissingDependencyError:
        charts = False
        report.warnings.append(f"{path.name}: charts left out, matplotlib is not installed "
                               "(pip install matplotlib, i.e. the 'plot' extra of danet-edge)")
        parts.append("<p class='warn'>Charts left out: matplotlib is not installed (pip install "
                     "'danet-edge[plot]'). The tables and pictures below are complete.</p>")
    has_iou = labelled and report.artifacts and any(v is not None for a in report.artifacts for v in a.per_class_iou)
    if has_iou:
        parts.append("<h2>Per-class IoU</h2>")
        if charts:
            parts.append(_figure(_png_b64(per_class_iou_figure(report)), "per-class IoU bar chart",
                                 "IoU (%) per class: the PyTorch FP32 reference and each artifact."))
        parts.append(_table(*_class_rows(report)))
        if charts:
            worst = min(range(len(report.artifacts)), key=lambda i: report.artifacts[i].agreement)
            wname = Path(report.artifacts[worst].path).name
            parts.append("<h2>Confusion matrices (row-normalised)</h2>")
            parts.append(_figure(_png_b64(confusion_figure(ref_cms[worst].mat, report.classes,
                                                           "Reference (PyTorch FP32): confusion matrix")),
                                 "reference confusion matrix", "Each row: where the pixels of one true class went "
                                 "(% of that class's pixels)."))
            parts.append(_figure(_png_b64(confusion_figure(accs[worst].cm.mat, report.classes,
                                                           f"{wname} (least agreement): confusion matrix")),
                                 f"{wname} confusion matrix",
                                 f"{wname}: the artifact that agrees least with the reference "
                                 f"({report.artifacts[worst].agreement:.3f} %)."))
    elif not labelled:
        parts.append("<p>The reference bundle has no labels: no IoU or confusion matrix, agreement only.</p>")
    if any(acc.worst for acc in accs):
        parts.append("<h2>Frames with the most disagreement</h2>")
    for res, acc in zip(report.artifacts, accs):
        if not acc.worst:
            continue
        rows, caps = _worst_rows(acc, labelled)
        pic = disagreement_picture(rows, palette, report.classes, Path(res.path).name, caps, ignore_index)
        parts.append(f"<h3>{html.escape(Path(res.path).name)}</h3>")
        parts.append(_figure(_png_b64(pic), f"{Path(res.path).name} disagreement",
                             "Columns: image | ground truth | reference | artifact | disagreement (white on the "
                             "darkened image); legend of every class below."))
    for a in report.artifacts:
        extra = [*(f"note: {n}" for n in a.notes), *(f"FAIL: {f}" for f in a.failures)]
        if extra:
            parts.append(f"<h3>{html.escape(Path(a.path).name)}: notes</h3><ul>"
                         + "".join(f"<li>{html.escape(x)}</li>" for x in extra) + "</ul>")
    parts.append("</body></html>")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return path
