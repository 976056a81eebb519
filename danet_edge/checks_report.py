"""What ``check`` writes for people: ``report.md`` and the disagreement pictures (one PNG per artifact)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .utils import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from .checks import CheckReport, _Acc

__all__ = ["write_pictures", "write_markdown"]


def _colour(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    return palette[np.clip(labels, 0, len(palette) - 1)]


def _panel_row(img: np.ndarray, ref: np.ndarray, art: np.ndarray, palette: np.ndarray) -> np.ndarray:
    diff = ref != art
    highlight = (img.astype(np.float32) * 0.35).astype(np.uint8)
    highlight[diff] = (255, 255, 255)
    return np.concatenate([img, _colour(ref, palette), _colour(art, palette), highlight], axis=1)


def write_pictures(report: CheckReport, accs: list[_Acc], palette: list[list[int]], out: Path) -> None:
    """One PNG per artifact: rows of ``image | reference | artifact | disagreement`` (disagreeing
    pixels white on the darkened image), the frames with most disagreement first."""
    from PIL import Image, ImageDraw

    pal = np.asarray(palette, np.uint8)
    for i, (res, acc) in enumerate(zip(report.artifacts, accs)):
        if not acc.worst:
            continue
        rows = [_panel_row(img, r, a, pal) for _, _, img, r, a in sorted(acc.worst, reverse=True)]
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
        header = np.full((16, width, 3), 255, np.uint8)
        pic = Image.fromarray(np.concatenate([header, *rows], axis=0))
        draw = ImageDraw.Draw(pic)
        w = rows[0].shape[1] // 4
        for j, title in enumerate(("image", "reference", Path(res.path).name, "disagreement")):
            draw.text((j * w + 2, 2), title, fill=(0, 0, 0))
        name = out / f"{i:02d}_{Path(res.path).name}_disagreement.png"
        with atomic_path(name) as tmp:
            pic.save(tmp, format="PNG")
        res.picture = str(name)


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def write_markdown(report: CheckReport, path: Path) -> None:
    lines = [f"# danet-edge accuracy check: {'PASSED' if report.passed else 'FAILED'}", "",
             f"Reference `{report.reference}`, data set {report.dataset or '-'}, {report.frames} images, "
             f"{len(report.classes)} classes. Images resized to each artifact's static size, labels brought back "
             "to the image size (the `infer` path); agreement and logit errors at the artifact's size.", "",
             "| artifact | precision (source) | mIoU | ref mIoU | ΔmIoU | pixel acc | agreement % | max abs | rel L2 "
             "| cosine | inf/NaN | result |", "|" + "---|" * 12]
    for a in report.artifacts:
        lines.append(
            f"| `{Path(a.path).name}` | {a.precision} ({a.precision_source}) | {a.miou:.2f} | {a.reference_miou:.2f} | "
            f"{a.miou_delta:+.3f} | {a.pixel_accuracy:.2f} | {a.agreement:.3f} | {_fmt(a.max_abs_error, '.3g')} | "
            f"{_fmt(a.rel_l2_error, '.2e')} | {_fmt(a.cosine_similarity, '.6f')} | {_fmt(a.nonfinite, 'd')} | "
            f"{'pass' if a.passed else 'FAIL: ' + '; '.join(a.failures)} |")
    for a in report.artifacts:
        lines += ["", f"## `{a.path}`", "",
                  f"- thresholds ({a.precision}): agreement >= {a.thresholds['min_agreement']} %, "
                  f"mIoU drop <= {a.thresholds['max_miou_drop']}; manifest precision: {a.manifest_precision}"]
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
        if a.precision_detail and a.precision_detail.get("cost"):
            from .cost import format_cost

            lines += ["- " + line for line in format_cost(a.precision_detail["cost"])]
            lines.append("  (FLOPs from the static shapes by the precision each node runs at; latency bounds from "
                         "published dense GPU peaks, an estimate that knows no kernel, fusion or launch cost)")
        lines += [f"- note: {n}" for n in a.notes]
        lines += [f"- FAIL: {f}" for f in a.failures]
        if a.picture:
            lines += ["", f"![disagreement]({Path(a.picture).name})",
                      "", "Columns: image | reference | artifact | disagreement (white on the darkened image); "
                      "the frames with most disagreement."]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
