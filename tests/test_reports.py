"""Reports people read at a glance: check's self-contained HTML and pictures, the bench charts, palettes.

Charts are inspected as matplotlib figure objects (titles, axis labels with units, legends, label boxes that
do not overlap) and the HTML as text (embedded PNGs, tables, every artifact); a slow test screenshots the HTML
with Chromium when one is installed.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from danet_edge.check.config import CheckConfig
from danet_edge.check.run import check_artifacts
from danet_edge.check.report import (MIN_TILE_HEIGHT, confusion_figure, disagreement_picture,
                                      per_class_iou_figure, precision_source_text)

from test_checks import _dataset, _perturbed_copy, sensitive_checkpoint

UNIT = re.compile(r"\((%|ms|points|ms per batch)[^)]*\)|%")


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """A check of a good and a broken FP32 graph against a tiny 8-class checkpoint, with every report."""
    from danet_edge.export.export import ExportConfig, export_model

    root = tmp_path_factory.mktemp("reports")
    ckpt = sensitive_checkpoint(root / "tiny.pt")
    good = export_model(ckpt, ExportConfig(out=root / "export", fused_io=False)).artifacts[0].path
    bad = _perturbed_copy(good, root / "broken.onnx")
    cfg = CheckConfig(json_path=root / "check.json", report_dir=root / "report", pictures=2)
    rep = check_artifacts([good, bad], ckpt, _dataset(4), cfg)
    return {"root": root, "ckpt": ckpt, "good": good, "bad": bad, "report": rep}


def _embedded_pngs(text: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(m)))
            for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_html_report_is_self_contained_with_charts_tables_and_pictures(checked):
    rep = checked["report"]
    html = Path(rep.html_path).read_text()
    assert Path(rep.html_path) == checked["root"] / "report" / "report.html"
    for a in rep.artifacts:
        assert Path(a.path).name in html
    for name in rep.classes:
        assert f"<td>{name}</td>" in html  # the per-class IoU table
    assert "Per-class IoU" in html and "Confusion matrices (row-normalised)" in html
    assert "<img src=\"http" not in html and "src=\"file" not in html  # nothing outside the page
    pngs = _embedded_pngs(html)
    # per-class chart + reference and worst confusion matrices + one disagreement picture per artifact
    assert len(pngs) == 3 + 2
    for im in pngs:
        im.load()
        assert im.width >= 500 and im.height >= 300
    import html as html_mod

    assert "precision_report" not in html and "read from the ONNX graph's node types" in html_mod.unescape(html)


def test_markdown_shows_per_class_iou_and_a_human_precision_source(checked):
    rep = checked["report"]
    md = Path(rep.markdown_path).read_text()
    assert "## Per-class IoU (%)" in md
    table = md.split("## Per-class IoU (%)")[1].split("\n\n")[1]
    rows = [r for r in table.splitlines() if r.startswith("| ") and not r.startswith("| class")]
    assert [r.split("|")[1].strip() for r in rows] == rep.classes
    ref = rep.artifacts[0].reference_per_class_iou
    first = next(k for k, v in enumerate(ref) if v is not None)
    assert f"{ref[first]:.2f}" in rows[first]
    assert "precision_report" not in md and "read from the ONNX graph's node types" in md
    assert precision_source_text("precision.precision_report") == "read from the ONNX graph's node types"


def test_reports_do_not_change_the_numbers(checked):
    plain = check_artifacts([checked["good"], checked["bad"]], checked["ckpt"], _dataset(4), CheckConfig())
    for a, b in zip(plain.artifacts, checked["report"].artifacts):
        assert (a.miou, a.agreement, a.miou_delta, a.per_class_iou) == (b.miou, b.agreement, b.miou_delta,
                                                                        b.per_class_iou)
        assert a.reference_per_class_iou == b.reference_per_class_iou and len(a.reference_per_class_iou) == 8


def test_disagreement_picture_is_large_with_ground_truth_and_legend(checked):
    rep = checked["report"]
    pic = Image.open(rep.artifacts[1].picture)
    # 5 columns (image, ground truth, reference, artifact, disagreement) of tiles at least MIN_TILE_HEIGHT high
    f = -(-MIN_TILE_HEIGHT // 64)
    assert pic.width >= 5 * 96 * f and pic.height >= 2 * 64 * f
    # the legend: every class's colour appears as a swatch in the bottom strip
    strip = np.asarray(pic.convert("RGB"))[-120:]
    from danet_edge.core.manifest import read_manifest

    for colour in read_manifest(checked["good"]).palette:
        assert (strip == np.asarray(colour, np.uint8)).all(-1).sum() > 50, colour


def test_disagreement_picture_without_ground_truth_has_four_columns():
    img = np.zeros((10, 20, 3), np.uint8)
    lab = np.zeros((10, 20), np.uint8)
    pic = disagreement_picture([(img, None, lab, lab)], [[0, 0, 0], [255, 0, 0]], ["a", "b"], "x.onnx")
    f = -(-MIN_TILE_HEIGHT // 10)
    assert 4 * 20 * f <= pic.width < 5 * 20 * f


def _has_solid_square(img: np.ndarray, colour, side: int) -> bool:
    """Whether ``img`` (h, w, 3) holds a ``side`` x ``side`` block of exactly ``colour``."""
    hit = (img == np.asarray(colour, np.uint8)).all(-1).astype(np.int32)
    c = np.pad(hit.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = c[side:, side:] - c[:-side, side:] - c[side:, :-side] + c[:-side, :-side]
    return bool((sums == side * side).any())


def test_legend_names_the_black_of_unlabelled_ground_truth():
    img = np.full((40, 60, 3), 200, np.uint8)
    lab = np.ones((40, 60), np.uint8)
    palette, classes = [[255, 0, 0], [0, 255, 0]], ["a", "b"]
    gt = lab.copy()
    gt[:5] = 255
    side = 14  # a swatch is font_px (>= 16) square, outlined
    with_void = np.asarray(disagreement_picture([(img, gt, lab, lab)], palette, classes, "x", ignore_index=255))
    without = np.asarray(disagreement_picture([(img, lab, lab, lab)], palette, classes, "x", ignore_index=255))
    legend_h = with_void.shape[0] - without.shape[0] + 80  # bottom strip (same height here: one legend row)
    assert _has_solid_square(with_void[-legend_h:], (0, 0, 0), side)
    assert not _has_solid_square(without[-legend_h:], (0, 0, 0), side)


def _assert_readable_chart(fig) -> None:
    """Every axes has a title, labelled axes (units for the value axis) and a legend or a colour bar;
    tick labels and texts inside the figure do not overlap each other."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    main = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert main
    for ax in main:
        assert ax.get_title().strip(), "axes without a title"
        assert ax.get_xlabel().strip() and ax.get_ylabel().strip()
        assert UNIT.search(ax.get_xlabel() + ax.get_ylabel()) or any(
            UNIT.search(c.get_ylabel()) for c in fig.axes if c.get_label() == "<colorbar>"), "no unit on an axis"
        has_cbar = any(c.get_label() == "<colorbar>" for c in fig.axes)
        assert ax.get_legend() is not None or has_cbar, "no legend"
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [t.get_window_extent(renderer) for t in axis.get_ticklabels() if t.get_text()]
            for i in range(len(boxes) - 1):
                assert not boxes[i].overlaps(boxes[i + 1]), f"tick labels overlap: {axis}"


def test_per_class_and_confusion_figures_have_titles_units_and_legends(checked):
    import matplotlib.pyplot as plt

    rep = checked["report"]
    fig = per_class_iou_figure(rep)
    _assert_readable_chart(fig)
    ax = fig.axes[0]
    assert "%" in ax.get_ylabel() and [t.get_text() for t in ax.get_xticklabels()] == rep.classes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["reference (PyTorch FP32)", "model.onnx",
                                                                  "broken.onnx"]
    plt.close(fig)
    mat = np.array([[8, 2], [0, 0]])
    fig = confusion_figure(mat, ["road", "car"], "t")
    _assert_readable_chart(fig)
    img = fig.axes[0].images[0].get_array()
    assert np.allclose(img[0], [80, 20]) and np.allclose(img[1], [0, 0])  # row-normalised, empty row stays 0
    plt.close(fig)


def test_html_without_matplotlib_is_one_warning(checked, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    cfg = CheckConfig(report_dir=tmp_path / "r", pictures=1)
    rep = check_artifacts([checked["good"]], checked["ckpt"], _dataset(2), cfg)
    html = Path(rep.html_path).read_text()
    assert len(rep.warnings) == 1 and "matplotlib is not installed" in rep.warnings[0]
    assert "Charts left out" in html and len(_embedded_pngs(html)) == 1  # the disagreement picture only
    assert "<td>" + rep.classes[0] + "</td>" in html


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


# Injected into a copy of the report: after load, measure the real layout and write it into the DOM as JSON.
_LAYOUT_PROBE = """<script>
window.addEventListener('load', () => {
  const r = e => e.getBoundingClientRect();
  const imgs = [...document.images];
  const boxes = [...document.querySelectorAll('img, figcaption, h1, h2, h3, table')].map(r)
    .filter(b => b.width > 0 && b.height > 0);
  let overlaps = 0;
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const a = boxes[i], b = boxes[j];
    if (a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1) overlaps++;
  }
  const out = {images: imgs.length, decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    min_rendered_width: Math.min(...imgs.map(i => r(i).width)), overlaps: overlaps,
    page_width: document.documentElement.scrollWidth, window_width: window.innerWidth};
  const pre = document.createElement('pre'); pre.id = 'layout'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _headless(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Chromium headless with the flags a closed network needs (no background connections, fresh profile)."""
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("width", [1400, 800])
def test_html_in_headless_chromium_renders_every_image_without_overlap(checked, tmp_path, width):
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium / Chrome executable on PATH (chromium, chromium-browser, google-chrome)")
    html = Path(checked["report"].html_path).read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", _LAYOUT_PROBE + "</body>"))
    r = _headless(exe, tmp_path / "profile", f"--window-size={width},3000", "--virtual-time-budget=5000",
                  "--dump-dom", probed.as_uri())
    m = re.search(r'<pre id="layout">(.*?)</pre>', r.stdout)
    assert m, r.stderr[-2000:]
    layout = json.loads(m.group(1))
    n_png = len(_embedded_pngs(html))
    assert layout["images"] == n_png >= 4 and layout["decoded"] == n_png  # every embedded chart decodes
    assert layout["overlaps"] == 0  # no image, caption, heading or table lies over another
    assert layout["page_width"] <= layout["window_width"]  # images scale down: no sideways scrolling
    assert layout["min_rendered_width"] >= min(300, width // 4)

    shot = tmp_path / "report.png"
    _headless(exe, tmp_path / "profile2", f"--window-size={width},3000", f"--screenshot={shot}",
              Path(checked["report"].html_path).as_uri())
    arr = np.asarray(Image.open(shot).convert("RGB"))
    assert arr.shape[1] == width and arr.std() > 10  # a rendered page, not a blank one


# ------------------------------------------------------------------------------------------ bench plot
def _bench_report(mious=(55.04, 55.00, 54.94)):
    from danet_edge.bench.results import BenchEntry, BenchReport

    def entry(name, backend, provider, p50, p99, miou, ref=False, speed=None):
        return BenchEntry(name=name, path=name, backend=backend, provider=provider, precision="fp32",
                          image_size=[360, 480], batch=1, runs=20, latency_p50_ms=p50, latency_p99_ms=p99,
                          latency_mean_ms=p50, miou=miou, is_reference=ref, speedup_vs_reference=speed,
                          speedup_baseline="pytorch-fp32-eager (reference) 360x480")

    rep = BenchReport(machine={"cpu": "Test CPU"}, config={})
    rep.entries = [entry("pytorch-fp32-eager (reference) 360x480", "torch", "PyTorch 2.5 eager FP32 on cpu",
                         400.0, 430.0, mious[0], ref=True, speed=1.0),
                   entry("model.onnx", "onnxruntime", "ONNX Runtime 1.20.1 CPUExecutionProvider", 300.0, 320.0,
                         mious[1], speed=1.33),
                   entry("model_int8_trt.onnx", "onnxruntime", "ONNX Runtime 1.20.1 CPUExecutionProvider",
                         290.0, 350.0, mious[2], speed=1.38)]
    from danet_edge.bench.results import BenchEntry as _E

    rep.entries.append(_E(name="pytorch-fp16-autocast", path="x", backend="torch", precision="fp16",
                          image_size=[360, 480], batch=1, runs=0, skipped="no CUDA GPU here"))
    return rep


def _texts_do_not_overlap(fig, texts) -> None:
    """No two texts overlap, and each lies inside the figure."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(t, r) for t in texts]  # the text itself, not an annotation's leader line
    fb = fig.bbox
    for t, b in zip(texts, boxes):
        assert b.x0 >= fb.x0 - 1 and b.x1 <= fb.x1 + 1 and b.y0 >= fb.y0 - 1 and b.y1 <= fb.y1 + 1, t.get_text()
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (texts[i].get_text(), texts[j].get_text())


def test_bench_figure_latency_bars_name_the_provider_and_the_speedup():
    import matplotlib.pyplot as plt

    from danet_edge.bench.plot import bench_figure

    fig = bench_figure(_bench_report())
    _assert_readable_chart(fig)
    lat = fig.axes[0]
    assert "(ms)" in lat.get_xlabel() and "p50" in lat.get_title() and "p99" in lat.get_title()
    assert "not timed: pytorch-fp16-autocast" in lat.get_title()
    notes = [t.get_text() for t in lat.texts]
    assert len(notes) == 3 and all("ran on " in t and "p50" in t and "p99" in t for t in notes)
    assert any("model_int8_trt" not in t and "ONNX Runtime 1.20.1 CPUExecutionProvider" in t and "1.38x faster than the reference" in t
               for t in notes)
    ticks = sorted(zip(lat.get_yticks(), (t.get_text() for t in lat.get_yticklabels())))
    assert ticks[-1][1].startswith("pytorch-fp32-eager")  # the reference on top
    _texts_do_not_overlap(fig, [*lat.texts, *lat.get_legend().get_texts()])
    leg = lat.get_legend().get_window_extent()
    assert all(not leg.overlaps(t.get_window_extent()) for t in lat.texts)
    plt.close(fig)


def test_bench_bar_captions_end_inside_the_latency_axes():
    """A long provider (TensorRT on a named board) and a 'slower than' caption still end inside the axes."""
    import matplotlib.pyplot as plt

    from danet_edge.bench.plot import bench_figure

    rep = _bench_report()
    rep.entries[2].provider = "TensorRT 10.3.0 on NVIDIA Jetson AGX Orin Developer Kit (MAXN, jetson_clocks on)"
    rep.entries[2].speedup_vs_reference = 0.8
    fig = bench_figure(rep)
    fig.canvas.draw()
    lat = fig.axes[0]
    right = lat.get_window_extent().x1
    assert any("slower than the reference" in t.get_text() for t in lat.texts)
    bars = [b.get_window_extent() for b in lat.patches]
    for t in lat.texts:
        box = t.get_window_extent()
        assert box.x1 <= right + 1 and t.get_fontsize() >= 6, t.get_text()
        assert not any(box.overlaps(b) for b in bars), t.get_text()
    _texts_do_not_overlap(fig, list(lat.texts))
    plt.close(fig)


def test_bench_figure_accuracy_axis_is_honest_and_labels_do_not_overlap():
    import matplotlib.pyplot as plt

    from danet_edge.bench.plot import MIN_ACCURACY_SPAN, accuracy_limits, bench_figure

    fig = bench_figure(_bench_report())
    acc = fig.axes[1]
    low, high = acc.get_ylim()
    assert high - low >= MIN_ACCURACY_SPAN - 1e-9 and low <= 54.94 and high >= 55.04  # reference included
    assert acc.get_xlim()[0] == 0.0 and "(ms)" in acc.get_xlabel() and "mIoU (%)" == acc.get_ylabel()
    labels = [t for t in acc.texts]
    assert len(labels) == 3 and any("CPUExecutionProvider" in t.get_text() for t in labels)
    _texts_do_not_overlap(fig, labels)
    plt.close(fig)
    assert accuracy_limits([99.9, 100.0]) == pytest.approx((98.0, 100.0))
    assert accuracy_limits([10.0, 60.0])[1] - accuracy_limits([10.0, 60.0])[0] == pytest.approx(65.0)
    assert accuracy_limits([0.1]) == pytest.approx((0.0, 2.0))


def _label_distances(fig, ax):
    """Per label: (px from its point to the nearest edge of the label's text box, the text box, the point)."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    from matplotlib.text import Text

    out = []
    for t in ax.texts:
        b = Text.get_window_extent(t, r)
        px, py = ax.transData.transform(t.xy)
        dx = max(b.x0 - px, 0.0, px - b.x1)
        dy = max(b.y0 - py, 0.0, py - b.y1)
        out.append(((dx * dx + dy * dy) ** 0.5, b, (px, py)))
    return out


@pytest.mark.parametrize("crowded", [False, True, "long"])
def test_bench_scatter_labels_sit_next_to_their_points(crowded):
    """Each label within a short reach of its own point (not in a column at the side), none over another label,
    a point, or the axes' edge; also when six points crowd together, and when a label is too wide for either
    side of its point (a TensorRT provider on a named board)."""
    import matplotlib.pyplot as plt

    from danet_edge.bench.plot import bench_figure

    rep = _bench_report()
    if crowded == "long":
        rep.entries[2].provider = "TensorRT 10.3.0 on NVIDIA Jetson AGX Orin Developer Kit (MAXN, jetson_clocks on)"
    elif crowded:
        base = rep.entries[1]
        from dataclasses import replace

        rep.entries[3:3] = [replace(base, name=f"model_{k}.onnx", latency_p50_ms=295.0 + 3 * k,
                                    miou=54.9 + 0.02 * k) for k in range(3)]
    fig = bench_figure(rep)
    acc = fig.axes[1]
    found = _label_distances(fig, acc)
    assert len(found) == len([e for e in rep.entries if e.skipped is None])
    height = max(b.height for _, b, _ in found)
    for dist, b, _ in found:
        assert dist <= 12 + 4 * height, dist  # next to its point: within a few label heights
    if not crowded:
        assert min(d for d, _, _ in found) <= 12  # an uncrowded label sits right beside its point
    _texts_do_not_overlap(fig, acc.texts)
    ab = acc.get_window_extent()
    points = [p for _, _, p in found]
    for _, b, own in found:
        assert ab.x0 <= b.x0 and b.x1 <= ab.x1 and ab.y0 <= b.y0 and b.y1 <= ab.y1
        assert not any(b.x0 - 3 < x < b.x1 + 3 and b.y0 - 3 < y < b.y1 + 3 for x, y in points if (x, y) != own)
    plt.close(fig)


def test_bench_plot_written_and_without_matplotlib_raises_one_line(tmp_path, monkeypatch):
    from danet_edge.bench.plot import write_plot
    from danet_edge.core.errors import MissingDependencyError

    path = write_plot(_bench_report(), tmp_path / "b.png")
    with Image.open(path) as im:
        assert im.width >= 1000 and im.height >= 700
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match="matplotlib"):
        write_plot(_bench_report(), tmp_path / "c.png")


# ------------------------------------------------------------------------------------------ palettes
def test_standard_palettes_are_picked_when_the_classes_are_theirs():
    from danet_edge.core.palettes import (CAMVID_CLASSES, CAMVID_PALETTE, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE,
                                     default_palette, palette_for)

    assert palette_for(CAMVID_CLASSES) == CAMVID_PALETTE
    assert palette_for([c.lower() for c in CAMVID_CLASSES]) == CAMVID_PALETTE
    assert palette_for([c.replace(" ", "_") for c in CITYSCAPES_CLASSES]) == CITYSCAPES_PALETTE
    assert palette_for(CAMVID_CLASSES[::-1]) == default_palette(11)  # another order: not CamVid's colours
    assert palette_for(["a", "b"]) == default_palette(2)
    assert CAMVID_PALETTE[0] == [128, 128, 128] and CITYSCAPES_PALETTE[10] == [70, 130, 180]  # Sky, sky


def test_checkpoint_without_palette_gets_the_standard_one(tmp_path):
    from danet_edge.model.checkpoint import _validate_data
    from danet_edge.core.palettes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE

    data = {"classes": list(CITYSCAPES_CLASSES), "mean": [0.5] * 3, "std": [0.5] * 3, "ignore_index": 255,
            "image_size": [64, 64]}
    out = _validate_data(data, 19, tmp_path / "x.pt")
    assert out["palette"] == CITYSCAPES_PALETTE
