"""Procedural street scenes: the default, file-free data set and the demo video.

A scene is a set of shapes drawn with OpenCV into an image and a label map at once, so the
labels are exact: sky (gradient), buildings with windows, trees, sidewalk, a road in perspective
with lane marks, poles with signs, cars and pedestrians scaled by their distance to the horizon.
Per-class texture noise, a low-frequency illumination field, random colours and exposure keep the
task from being solvable by colour alone. Everything comes from one ``numpy.random.Generator``,
so ``(seed, split, index)`` fixes a sample.

``synthetic_frames`` draws one scene over time (cars and pedestrians move, lane marks scroll as
if the camera drove forward) for a coherent demo video; ``write_synthetic_video`` writes it as
MP4 (OpenCV ``VideoWriter``, ``mp4v``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..core.optional import import_cv2
from ..core.errors import ConfigError, DataError
from ..core.utils import atomic_path

__all__ = ["SYNTHETIC_CLASSES", "SYNTHETIC_PALETTE", "make_scene", "draw_scene", "render_scene",
           "synthetic_frames", "write_synthetic_video"]

SYNTHETIC_CLASSES = ("sky", "building", "road", "sidewalk", "vegetation", "pole", "car", "person")
SYNTHETIC_PALETTE = ((70, 130, 180), (70, 70, 70), (128, 64, 128), (244, 35, 232), (107, 142, 35),
                     (153, 153, 153), (0, 0, 142), (220, 20, 60))
SKY, BUILDING, ROAD, SIDEWALK, VEG, POLE, CAR, PERSON = range(8)
_TEXTURE = np.array([2.0, 9.0, 6.0, 7.0, 18.0, 4.0, 5.0, 8.0], np.float32)  # luminance noise std per class


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(min(lo, hi), max(lo, hi)))


def _colour(rng: np.random.Generator, base: tuple[int, int, int], spread: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(b + rng.integers(-spread, spread + 1), 0, 255)) for b in base)  # type: ignore[return-value]


def make_scene(rng: np.random.Generator, h: int, w: int) -> dict[str, Any]:
    """Random scene parameters for an ``h x w`` view (pure data; ``draw_scene`` renders them)."""
    hz = h * _u(rng, 0.36, 0.52)
    vx, cx = w * _u(rng, 0.4, 0.6), w * _u(rng, 0.35, 0.65)
    road = {"vx": vx, "cx": cx, "top": w * _u(rng, 0.005, 0.02) + 1, "bottom": w * _u(rng, 0.4, 0.7),
            "colour": _colour(rng, (85, 85, 90), 20), "edge_lines": bool(rng.random() < 0.6),
            "dashes": int(rng.integers(4, 8)), "phase": _u(rng, 0, 1), "mark": _colour(rng, (230, 230, 220), 20)}

    def road_x(y: float) -> tuple[float, float]:
        s = (y - hz) / (h - hz)
        c = vx + s * (cx - vx)
        half = road["top"] + s * (road["bottom"] - road["top"])
        return c - half, c + half

    sky_top = (_colour(rng, (90, 140, 215), 30) if rng.random() < 0.75 else _colour(rng, (150, 155, 165), 20))
    scene: dict[str, Any] = {"h": h, "w": w, "hz": hz, "road": road,
                             "sky": (sky_top, tuple(min(255, c + 50) for c in sky_top)),
                             "sidewalk": _colour(rng, (165, 160, 150), 25),
                             "exposure": _u(rng, 0.75, 1.25), "light": rng.normal(size=(3, 4)) * 0.08}
    buildings, x = [], -w * _u(rng, 0, 0.1)
    while x < w:
        bw = w * _u(rng, 0.12, 0.35)
        if rng.random() < 0.15:
            x += bw * 0.5
            continue
        tone = (_colour(rng, (120, 110, 100), 45))
        buildings.append({"x0": x, "x1": x + bw, "top": _u(rng, 0.04 * h, hz - 0.08 * h), "colour": tone,
                          "win": _colour(rng, (60, 70, 90), 25) if rng.random() < 0.7 else _colour(rng, (220, 200, 120), 20),
                          "wsize": _u(rng, 0.025, 0.05) * h, "wgap": _u(rng, 1.6, 2.4)})
        x += bw
    scene["buildings"] = buildings
    scene["trees"] = [{"x": _u(rng, 0, w), "base": hz + _u(rng, 0.0, 0.08) * h, "r": _u(rng, 0.06, 0.14) * h,
                       "colour": _colour(rng, (70, 120, 45), 30), "trunk": _colour(rng, (90, 65, 45), 15)}
                      for _ in range(int(rng.integers(0, 5)))]
    poles = []
    for _ in range(int(rng.integers(0, 3))):
        y = hz + _u(rng, 0.15, 0.9) * (h - hz)
        lx, rx = road_x(y)
        s = (y - hz) / (h - hz)
        side = -1 if rng.random() < 0.5 else 1
        poles.append({"x": (lx if side < 0 else rx) + side * _u(rng, 0.02, 0.1) * w * s, "y": y,
                      "len": (y - hz) * _u(rng, 1.6, 2.6) + 0.1 * h, "width": max(1.5, 0.04 * (y - hz)),
                      "sign": int(rng.integers(0, 3)), "sign_colour": [(200, 30, 30), (30, 60, 190), (230, 200, 30)][int(rng.integers(3))]})
    scene["poles"] = poles
    cars = []
    for _ in range(int(rng.integers(0, 5))):
        y = hz + _u(rng, 0.15, 1.05) * (h - hz)
        lx, rx = road_x(min(y, h))
        s = (y - hz) / (h - hz)
        cw = s * w * _u(rng, 0.3, 0.45)
        cars.append({"x": _u(rng, lx + cw * 0.3, rx - cw * 0.3) if rx - lx > cw * 0.6 else (lx + rx) / 2,
                     "y": y, "w": cw, "h": cw * _u(rng, 0.5, 0.65), "v": _u(rng, -3, 3) * s * w / 160,
                     "colour": tuple(int(c) for c in rng.integers(20, 236, 3)), "van": bool(rng.random() < 0.25)})
    scene["cars"] = sorted(cars, key=lambda c: c["y"])
    people = []
    for _ in range(int(rng.integers(0, 5))):
        y = hz + _u(rng, 0.1, 0.95) * (h - hz)
        lx, rx = road_x(y)
        s = (y - hz) / (h - hz)
        x = _u(rng, -0.05 * w, lx - 2) if rng.random() < 0.5 else _u(rng, rx + 2, 1.05 * w)
        people.append({"x": x, "y": y, "h": s * h * _u(rng, 0.45, 0.65) + 4, "v": _u(rng, -0.6, 0.6) * w / 160,
                       "shirt": tuple(int(c) for c in rng.integers(20, 236, 3)),
                       "legs": _colour(rng, (50, 50, 70), 30), "skin": _colour(rng, (190, 150, 120), 40)})
    scene["people"] = sorted(people, key=lambda p: p["y"])
    return scene


def _poly(img: np.ndarray, mask: np.ndarray, pts: Any, colour: tuple[int, ...], cls: int) -> None:
    cv2 = import_cv2()
    p = np.round(np.asarray(pts, np.float64) * 4).astype(np.int32)  # 2 fractional bits
    cv2.fillPoly(img, [p], colour, cv2.LINE_8, 2)
    cv2.fillPoly(mask, [p], cls, cv2.LINE_8, 2)


def _rect(img: np.ndarray, mask: np.ndarray, x0: float, y0: float, x1: float, y1: float,
          colour: tuple[int, ...], cls: int) -> None:
    _poly(img, mask, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)], colour, cls)


def _ellipse(img: np.ndarray, mask: np.ndarray, cx: float, cy: float, rx: float, ry: float,
             colour: tuple[int, ...], cls: int) -> None:
    cv2 = import_cv2()
    c, a = (int(round(cx * 4)), int(round(cy * 4))), (max(1, int(round(rx * 4))), max(1, int(round(ry * 4))))
    cv2.ellipse(img, c, a, 0, 0, 360, colour, -1, cv2.LINE_8, 2)
    cv2.ellipse(mask, c, a, 0, 0, 360, cls, -1, cv2.LINE_8, 2)


def _wrap(x: float, w: float, margin: float) -> float:
    return (x + margin) % (w + 2 * margin) - margin


def draw_scene(scene: dict[str, Any], t: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render ``scene`` at time ``t`` (frames) -> ``(image (h, w, 3) uint8 RGB, mask (h, w) int64)``.

    ``rng`` supplies the sensor noise only (the geometry is in ``scene``).

    Raises:
        MissingDependencyError: OpenCV (which draws the shapes) is not importable.
    """
    cv2 = import_cv2()
    h, w, hz = scene["h"], scene["w"], scene["hz"]
    img = np.empty((h, w, 3), np.uint8)
    mask = np.full((h, w), SKY, np.uint8)
    top, bottom = (np.asarray(c, np.float32) for c in scene["sky"])
    a = np.clip(np.arange(h, dtype=np.float32) / max(hz, 1), 0, 1)[:, None]
    img[:] = (top * (1 - a) + bottom * a)[:, None, :].astype(np.uint8)
    for b in scene["buildings"]:
        _rect(img, mask, b["x0"], b["top"], b["x1"], hz + 0.03 * h, b["colour"], BUILDING)
        ws, gap = b["wsize"], b["wsize"] * b["wgap"]
        y = b["top"] + gap * 0.6
        while y + ws < hz - 0.02 * h:
            x = b["x0"] + gap * 0.5
            while x + ws < b["x1"] - gap * 0.3:
                _rect(img, mask, x, y, x + ws, y + ws * 1.3, b["win"], BUILDING)
                x += gap
            y += gap * 1.3
    for tr in scene["trees"]:
        r, x, base = tr["r"], tr["x"], tr["base"]
        _rect(img, mask, x - r * 0.12, base - r * 1.6, x + r * 0.12, base, tr["trunk"], VEG)
        for dx, dy, k in ((0, -2.0, 1.0), (-0.6, -1.6, 0.75), (0.6, -1.6, 0.75)):
            _ellipse(img, mask, x + dx * r, base + dy * r, r * k, r * k * 0.85, tr["colour"], VEG)
    _rect(img, mask, -1, hz, w + 1, h + 1, scene["sidewalk"], SIDEWALK)
    rd = scene["road"]
    vx, cx, tw, bw = rd["vx"], rd["cx"], rd["top"], rd["bottom"]
    _poly(img, mask, [(vx - tw, hz), (vx + tw, hz), (cx + bw, h), (cx - bw, h)], rd["colour"], ROAD)

    def on_line(s: float, off: float) -> tuple[float, float]:  # point at depth s in [0, 1], lateral offset
        c = vx + s * (cx - vx)
        half = tw + s * (bw - tw)
        return c + off * half, hz + s * (h - hz)

    n = rd["dashes"]
    phase = (rd["phase"] + 0.05 * t) % 1.0
    for i in range(n + 1):
        s0, s1 = ((i + phase) / (n + 1)) ** 2, ((i + phase + 0.45) / (n + 1)) ** 2
        if s0 >= 1:
            continue
        s1 = min(s1, 1.0)
        hw0, hw1 = 0.012 * s0 + 0.002, 0.012 * s1 + 0.002
        p = [on_line(s0, -hw0 * w / max(bw, 1)), on_line(s0, hw0 * w / max(bw, 1)),
             on_line(s1, hw1 * w / max(bw, 1)), on_line(s1, -hw1 * w / max(bw, 1))]
        _poly(img, mask, p, rd["mark"], ROAD)
    if rd["edge_lines"]:
        for off in (-0.92, 0.92):
            _poly(img, mask, [on_line(0, off), on_line(0, off * 0.97), on_line(1, off * 0.97), on_line(1, off)],
                  rd["mark"], ROAD)
    for p in scene["poles"]:
        x, y, ln, pw = p["x"], p["y"], p["len"], p["width"]
        _rect(img, mask, x - pw / 2, y - ln, x + pw / 2, y, (120, 120, 125), POLE)
        r = pw * 3
        if p["sign"] == 1:
            _ellipse(img, mask, x, y - ln, r, r, p["sign_colour"], POLE)
        elif p["sign"] == 2:
            _rect(img, mask, x - r, y - ln - r, x + r, y - ln + r, p["sign_colour"], POLE)
    for c in scene["cars"]:
        x, y, cw, ch = _wrap(c["x"] + c["v"] * t, w, c["w"]), c["y"], c["w"], c["h"]
        dark = tuple(int(v * 0.55) for v in c["colour"])
        _rect(img, mask, x - cw / 2, y - ch * 0.62, x + cw / 2, y - ch * 0.12, c["colour"], CAR)
        roof = 0.45 if c["van"] else 0.3
        _poly(img, mask, [(x - cw * 0.42, y - ch * 0.6), (x - cw * roof, y - ch), (x + cw * roof, y - ch),
                          (x + cw * 0.42, y - ch * 0.6)], c["colour"], CAR)
        _poly(img, mask, [(x - cw * 0.36, y - ch * 0.63), (x - cw * (roof - 0.04), y - ch * 0.93),
                          (x + cw * (roof - 0.04), y - ch * 0.93), (x + cw * 0.36, y - ch * 0.63)], (40, 50, 60), CAR)
        _rect(img, mask, x - cw * 0.46, y - ch * 0.5, x - cw * 0.36, y - ch * 0.42, (230, 60, 40), CAR)
        _rect(img, mask, x + cw * 0.36, y - ch * 0.5, x + cw * 0.46, y - ch * 0.42, (230, 60, 40), CAR)
        for wx in (-0.3, 0.3):
            _ellipse(img, mask, x + wx * cw, y - ch * 0.12, cw * 0.1, ch * 0.12, (20, 20, 20), CAR)
        _rect(img, mask, x - cw / 2, y - ch * 0.3, x + cw / 2, y - ch * 0.25, dark, CAR)
    for p in scene["people"]:
        x, y, ph = _wrap(p["x"] + p["v"] * t, w, p["h"]), p["y"], p["h"]
        step = 0.08 * ph * np.sin(0.6 * t + x)
        _poly(img, mask, [(x - 0.06 * ph, y - 0.48 * ph), (x - 0.01 * ph, y - 0.48 * ph), (x - step - 0.02 * ph, y),
                          (x - step - 0.07 * ph, y)], p["legs"], PERSON)
        _poly(img, mask, [(x + 0.01 * ph, y - 0.48 * ph), (x + 0.06 * ph, y - 0.48 * ph), (x + step + 0.07 * ph, y),
                          (x + step + 0.02 * ph, y)], p["legs"], PERSON)
        _rect(img, mask, x - 0.1 * ph, y - 0.82 * ph, x + 0.1 * ph, y - 0.45 * ph, p["shirt"], PERSON)
        _ellipse(img, mask, x, y - 0.9 * ph, 0.07 * ph, 0.09 * ph, p["skin"], PERSON)

    light = cv2.resize(scene["light"].astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    out = img.astype(np.float32) * (scene["exposure"] * (1.0 + light))[..., None]
    out += rng.normal(size=(h, w, 1)).astype(np.float32) * _TEXTURE[mask][..., None]
    out += rng.normal(scale=3.0, size=(h, w, 3)).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8), mask.astype(np.int64)


def render_scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One random street scene ``(image (h, w, 3) uint8 RGB, mask (h, w) int64)`` from ``rng``."""
    return draw_scene(make_scene(rng, h, w), 0.0, rng)


def synthetic_frames(num_frames: int, size: tuple[int, int] = (240, 320), seed: int = 0
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A coherent moving sequence: one scene whose cars and pedestrians move and lane marks scroll.

    Yields ``num_frames`` pairs ``(frame (H, W, 3) uint8 RGB, mask (H, W) int64)``.
    """
    h, w = int(size[0]), int(size[1])
    scene = make_scene(np.random.default_rng([seed, 99]), h, w)
    if not scene["cars"]:  # a demo needs something that moves
        scene["cars"] = make_scene(np.random.default_rng([seed, 100]), h, w)["cars"] or []
    for t in range(num_frames):
        yield draw_scene(scene, float(t), np.random.default_rng([seed, 99, t]))


def write_synthetic_video(path: str | os.PathLike[str], num_frames: int = 90, size: tuple[int, int] = (240, 320),
                          fps: float = 15.0, seed: int = 0) -> Path:
    """Write ``synthetic_frames`` as an MP4 (``mp4v``) video, atomically. Returns ``path``.

    Raises:
        ConfigError: bad frame count, size or fps.
        DataError: OpenCV cannot open a writer for ``path``.
        MissingDependencyError: OpenCV is not importable.
    """
    cv2 = import_cv2()
    path = Path(path)
    h, w = int(size[0]), int(size[1])
    if num_frames < 1 or h < 32 or w < 32 or fps <= 0:
        raise ConfigError(f"video needs >= 1 frame, size >= 32x32 and fps > 0; got {num_frames}, {h}x{w}, {fps}")
    with atomic_path(path) as tmp:
        video_tmp = tmp.with_name(tmp.name + (path.suffix or ".mp4"))  # OpenCV picks the container by suffix
        try:
            writer = cv2.VideoWriter(str(video_tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
            if not writer.isOpened():
                raise DataError(f"{path}: OpenCV cannot write an mp4v video here")
            try:
                for frame, _ in synthetic_frames(num_frames, (h, w), seed):
                    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            finally:
                writer.release()
            os.replace(video_tmp, tmp)
        finally:
            if video_tmp.exists():
                video_tmp.unlink()
    return path
