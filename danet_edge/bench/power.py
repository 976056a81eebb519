"""Jetson power: INA3221 rails from sysfs or tegrastats lines, sampled while bench times a window (W per rail,
mJ per frame, FPS/W). Parsers are tested on recorded AGX Orin and Orin Nano outputs; on another machine every
field says NOT_JETSON."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from .jetson import _INA3221, Rail, _read_int, find_ina3221_rails

__all__ = ['INPUT_RAILS', 'PowerReport', 'PowerSampler', 'parse_tegrastats_line', 'read_rails_mw', 'summarize_power', 'total_power_w']


#: Rails that measure the module's whole input (the total when present), in order of preference.
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN")


# NAME <now>[mW][/<avg>[mW]...]: one rail; the lookahead keeps "RAM 13031/62841MB" and "IRAM 0/252kB" out.
_RAIL = re.compile(r"(?<![\w@])([A-Z][A-Z0-9_]*)\s+(-?\d+)(mW)?((?:/-?\d+(?:mW)?)*)(?=\s|$)")


def parse_tegrastats_line(line: str) -> dict[str, float]:
    """Rails of one ``tegrastats`` line, in W (the instantaneous value; tegrastats' running average is dropped).

    Orin (JetPack 5 / 6): ``VDD_GPU_SOC 2389mW/2389mW VDD_CPU_CV 1991mW/1991mW ...``; Nano / TX2 / Xavier
    (JetPack 4): ``POM_5V_IN 2746/2911`` or ``GPU 463/463`` (mW without the unit). A bare number without mW or
    a slash (``APE 174``, ``VIC_FREQ 115``) is not a rail.

    Returns:
        ``{rail: watts}`` in the line's order (empty when the line has no rail).
    """
    out: dict[str, float] = {}
    for name, now, unit, rest in _RAIL.findall(line):
        if not unit and not rest:
            continue
        out[name] = int(now) / 1000.0
    return out






def read_rails_mw(rails: Sequence[Rail]) -> dict[str, float]:
    """One reading of each rail in mW (mV x mA / 1000); a rail that cannot be read now is left out."""
    out: dict[str, float] = {}
    for rail in rails:
        mv, ma = _read_int(rail.voltage), _read_int(rail.current)
        if mv is not None and ma is not None:
            out[rail.label] = mv * ma / 1000.0
    return out


def total_power_w(rails_w: Mapping[str, float]) -> tuple[float, str]:
    """The module's total in W and where it comes from: the input rail (``VDD_IN``, ``POM_5V_IN``) when there
    is one, else the sum of every rail (AGX Orin, AGX Xavier)."""
    for name in INPUT_RAILS:
        if name in rails_w:
            return float(rails_w[name]), name
    return float(sum(rails_w.values())), "sum of " + " + ".join(rails_w) if rails_w else "no rails"


@dataclass
class PowerReport:
    """Average power over a timed run and what it cost per frame.

    Attributes:
        source: ``"sysfs"`` (INA3221 hwmon) or ``"tegrastats"``.
        samples: readings averaged; ``interval_s``: the asked sampling interval (s).
        duration_s: wall time between enter and exit (s).
        rails_w: average power per rail (W).
        total_w: average total power (W); ``total_source`` says which rail or sum it is.
        frames: frames processed in the run (None when not given).
        energy_j: ``total_w x duration_s`` (J).
        energy_per_frame_mj: ``energy_j / frames`` in mJ.
        fps: ``frames / duration_s``; ``fps_per_w``: ``fps / total_w`` (frames per joule).
    """

    source: str
    samples: int
    interval_s: float
    duration_s: float
    rails_w: dict[str, float]
    total_w: float
    total_source: str
    frames: int | None = None
    energy_j: float | None = None
    energy_per_frame_mj: float | None = None
    fps: float | None = None
    fps_per_w: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize_power(readings_w: Sequence[Mapping[str, float]], duration_s: float, frames: int | None = None,
                    source: str = "sysfs", interval_s: float = 0.0) -> PowerReport:
    """Average a run's rail readings (each ``{rail: W}``) into a :class:`PowerReport`.

    Raises:
        ConfigError: no readings, a duration that is not positive, or a negative frame count.
    """
    if not readings_w:
        raise ConfigError("power: no reading was taken (the run was shorter than one sampling interval?)")
    if not duration_s > 0:
        raise ConfigError(f"power: duration must be positive, got {duration_s}")
    if frames is not None and frames < 0:
        raise ConfigError(f"power: frames must be >= 0, got {frames}")
    names: list[str] = []
    for r in readings_w:
        names += [n for n in r if n not in names]
    rails = {n: sum(r[n] for r in readings_w if n in r) / sum(1 for r in readings_w if n in r) for n in names}
    totals = [total_power_w(r)[0] for r in readings_w]
    total_w = sum(totals) / len(totals)
    _, total_source = total_power_w(rails)
    rep = PowerReport(source=source, samples=len(readings_w), interval_s=interval_s, duration_s=duration_s,
                      rails_w=rails, total_w=total_w, total_source=total_source, frames=frames,
                      energy_j=total_w * duration_s)
    if "sum of" in total_source:
        rep.notes.append("no input rail on this module: the total is the sum of its rails (no carrier board)")
    if frames:
        rep.energy_per_frame_mj = rep.energy_j / frames * 1000.0
        rep.fps = frames / duration_s
        rep.fps_per_w = rep.fps / total_w if total_w > 0 else None
    return rep


class PowerSampler:
    """Sample the power rails in the background while a timed run goes on.

    ``with PowerSampler(interval_s=0.05) as ps: run()`` then ``ps.report(frames=n)``. Reads the INA3221 rails in
    sysfs from a thread every ``interval_s``; where no rail can be read, runs ``tegrastats --interval MS`` and
    parses its lines. One reading is taken on entry and one on exit, so even a run shorter than the interval
    has two.

    Args:
        interval_s: sampling interval in s (tegrastats takes whole ms, at least 1).
        root: file-system root of sysfs (tests).
        tegrastats: the tegrastats executable (name or path), or None to never use it.

    Raises:
        ConfigError: on entry, when there is neither a readable INA3221 rail nor tegrastats (not a Jetson).
    """

    def __init__(self, interval_s: float = 0.05, root: str | os.PathLike[str] = "/",
                 tegrastats: str | None = "tegrastats") -> None:
        if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)) or not 0.001 <= interval_s <= 60:
            raise ConfigError(f"power sampling interval must be in 0.001..60 s, got {interval_s!r}")
        self.interval_s = float(interval_s)
        self.root = Path(root)
        self.tegrastats = tegrastats
        self.source: str | None = None
        self.readings: list[dict[str, float]] = []
        self._rails: list[Rail] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._t0 = self._t1 = 0.0
        self._lock = threading.Lock()

    # -- sources
    def _sysfs_reading(self) -> dict[str, float]:
        return {k: v / 1000.0 for k, v in read_rails_mw(self._rails).items()}

    def _add(self, reading: dict[str, float]) -> None:
        if reading:
            with self._lock:
                self.readings.append(reading)

    def _sysfs_loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._add(self._sysfs_reading())

    def _tegrastats_loop(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if self._stop.is_set():
                break
            self._add(parse_tegrastats_line(line))

    def __enter__(self) -> "PowerSampler":
        self._rails = find_ina3221_rails(self.root)
        first = self._sysfs_reading() if self._rails else {}
        exe = shutil.which(self.tegrastats) if self.tegrastats else None
        self.readings, self._stop = [], threading.Event()
        if first:
            self.source = "sysfs"
            self._add(first)
            target = self._sysfs_loop
        elif exe:
            self.source = "tegrastats"
            ms = max(1, int(round(self.interval_s * 1000)))
            try:
                self._proc = subprocess.Popen([exe, "--interval", str(ms)], stdout=subprocess.PIPE,
                                              stderr=subprocess.DEVNULL, text=True, bufsize=1)
            except OSError as e:
                raise ConfigError(f"power: cannot run {exe}: {e}") from None
            target = self._tegrastats_loop
        else:
            raise ConfigError("power: no power monitor here (no readable INA3221 rail under "
                              f"{self.root / _INA3221}, no tegrastats on PATH): power is measured on a Jetson")
        self._thread = threading.Thread(target=target, name="danet-edge-power", daemon=True)
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._t1 = time.perf_counter()
        self._stop.set()
        if self.source == "sysfs":
            self._add(self._sysfs_reading())
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._proc = None

    @property
    def duration_s(self) -> float:
        return max(self._t1 - self._t0, 0.0)

    def report(self, frames: int | None = None, duration_s: float | None = None) -> PowerReport:
        """Average W per rail and total over the run; with ``frames``, mJ per frame and FPS/W.

        Args:
            duration_s: the window the frames took (s), when it is not the sampler's own enter-to-exit time.

        Raises:
            ConfigError: no reading was taken (tegrastats printed nothing before the run ended).
        """
        with self._lock:
            readings = list(self.readings)
        return summarize_power(readings, (self.duration_s if duration_s is None else duration_s) or 1e-9, frames,
                               self.source or "none", self.interval_s)
