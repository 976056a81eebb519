"""Jetson facts (board, L4T / JetPack, power mode, clocks) and power sampling during timed runs.

Standard library and numpy only (no torch): this runs on a device install.

**Board facts** (:func:`read_board`): the model from ``/proc/device-tree/model``; the L4T release from
``/etc/nv_tegra_release`` (``# R36 (release), REVISION: 4.0, ...`` is L4T 36.4.0); the JetPack release
where NVIDIA's archive ties it to that L4T (https://developer.nvidia.com/embedded/jetpack-archive); the
``nvpmodel -q`` power mode; whether ``jetson_clocks`` pinned the clocks; GPU, EMC and DLA clocks in MHz.

**Power** (:class:`PowerSampler`): the module's INA3221 monitors through the Linux hwmon driver
(``/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/``: ``inN_label`` the rail, ``inN_input`` bus voltage in mV,
``currN_input`` current in mA; https://docs.kernel.org/hwmon/ina3221.html), sampled in a background thread;
where sysfs cannot be read, ``tegrastats --interval MS`` as a subprocess (its rails print as
``NAME <now>mW/<avg>mW``; before Orin as ``NAME <now>/<avg>`` in mW). NVIDIA describes both in the Jetson Linux
Developer Guide, "Platform Power and Performance" (Jetson Orin Nano / NX / AGX Orin: "Power Monitoring",
"tegrastats Utility"): https://docs.nvidia.com/jetson/archives/r36.4/DeveloperGuide/SD/PlatformPowerAndPerformance/JetsonOrinNanoSeriesJetsonOrinNxSeriesAndJetsonAgxOrinSeries.html

Which rail is the total: Orin NX / Nano (and Xavier NX) have ``VDD_IN``, the module's input; the original Nano
and TX1 ``POM_5V_IN``. AGX Orin has no input rail (``VDD_GPU_SOC``, ``VDD_CPU_CV``, ``VIN_SYS_5V0``,
``VDDQ_VDD2_1V8AO``): there the total is the sum of the rails and says so (``total_source``). None of them
measures the carrier board: a meter at the wall reads more.

Units: power in W (rails in mW are converted), energy in J and mJ per frame, clocks in MHz, efficiency in
FPS/W (= frames per joule).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError

__all__ = ["read_board", "board_summary", "NOT_JETSON", "parse_nv_tegra_release", "parse_nvpmodel_query", "parse_jetson_clocks_show",
           "parse_tegrastats_line", "find_ina3221_rails", "read_rails_mw", "total_power_w", "summarize_power",
           "PowerSampler", "PowerReport", "Rail", "INPUT_RAILS", "JETPACK_FOR_L4T"]

#: What every Jetson field of a benchmark record says on another machine (a string, never a silent None).
NOT_JETSON = "not a Jetson"

#: Rails that measure the module's whole input (the total when present), in order of preference.
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN")

#: L4T release -> JetPack release, from NVIDIA's JetPack archive
#: (https://developer.nvidia.com/embedded/jetpack-archive).
#: An L4T not listed here reports ``jetpack: None`` rather than a guess.
JETPACK_FOR_L4T = {
    "36.4.4": "6.2.1", "36.4.3": "6.2", "36.4.0": "6.1", "36.3.0": "6.0", "36.2.0": "6.0 DP",
    "35.6.1": "5.1.5", "35.6.0": "5.1.4", "35.5.0": "5.1.3", "35.4.1": "5.1.2", "35.3.1": "5.1.1",
    "35.2.1": "5.1", "35.1.0": "5.0.2", "32.7.6": "4.6.6", "32.7.5": "4.6.5", "32.7.4": "4.6.4",
}

# sysfs / procfs paths, relative to the injectable root.
_MODEL = "proc/device-tree/model"
_RELEASE = "etc/nv_tegra_release"
_DEVFREQ = "sys/class/devfreq"
_INA3221 = "sys/bus/i2c/drivers/ina3221"
_BPMP_CLK = "sys/kernel/debug/bpmp/debug/clk"
#: devfreq device names of Tegra GPUs (Orin: 17000000.ga10b on JetPack 5, 17000000.gpu on JetPack 6).
_GPU_NAMES = ("gpu", "ga10b", "gv11b", "gp10b", "gm20b")
#: BPMP debugfs clocks (root only): EMC and the two DLA cores of Orin / Xavier.
_BPMP_CLOCKS = {"emc": "emc", "dla0": "nafll_dla0", "dla1": "nafll_dla1"}

CommandRunner = Callable[[Sequence[str]], "str | None"]


def _run_command(argv: Sequence[str], timeout: float = 5.0) -> str | None:
    """stdout of ``argv``, or None when the tool is absent, fails or hangs (tools that need root: jetson_clocks)."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 and r.stdout.strip() else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").replace("\x00", "").strip()
    except OSError:  # absent, or needs root (debugfs)
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------- board facts

def parse_nv_tegra_release(text: str) -> dict[str, Any]:
    """Parse ``/etc/nv_tegra_release`` (``# R36 (release), REVISION: 4.0, GCID: ..., BOARD: generic, ...``).

    Returns:
        ``{"l4t": "36.4.0", "release": "R36", "revision": "4.0", "jetpack": "6.1" or None, "board": ...}``;
        ``{}`` when the text has no ``R<major> (release), REVISION: x.y`` line.
    """
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not m:
        return {}
    major, revision = m.group(1), m.group(2).rstrip(".")
    parts = revision.split(".") + ["0"] * 2
    l4t = ".".join([major, parts[0], parts[1]])
    board = re.search(r"BOARD:\s*([^,\s]+)", text)
    return {"l4t": l4t, "release": f"R{major}", "revision": revision, "jetpack": JETPACK_FOR_L4T.get(l4t),
            "board": board.group(1) if board else None}


def parse_nvpmodel_query(text: str) -> dict[str, Any]:
    """Parse ``nvpmodel -q``: ``NV Power Mode: MAXN`` then the mode id on its own line (``0``).

    Returns:
        ``{"mode": "MAXN", "id": 0}`` (``id`` None when absent); ``{}`` when no mode line.
    """
    m = re.search(r"NV Power Mode:\s*(\S+)", text)
    if not m:
        return {}
    ident = re.search(r"^\s*(\d+)\s*$", text[m.end():], re.MULTILINE)
    return {"mode": m.group(1), "id": int(ident.group(1)) if ident else None}


def parse_jetson_clocks_show(text: str) -> dict[str, Any]:
    """Parse ``jetson_clocks --show`` (root): the ``GPU`` / ``EMC`` lines ``MinFreq=.. MaxFreq=.. CurrentFreq=..``
    in Hz, converted to MHz.

    Returns:
        ``{"gpu": {"min_mhz", "max_mhz", "cur_mhz"}, "emc": {...}, "locked": bool | None}``; ``locked`` is True
        when the GPU's min equals its max (what ``jetson_clocks`` sets), None without a GPU line.
    """
    out: dict[str, Any] = {}
    for name in ("GPU", "EMC"):
        m = re.search(rf"^\s*{name}\s+MinFreq=(\d+)\s+MaxFreq=(\d+)\s+CurrentFreq=(\d+)", text, re.MULTILINE)
        if m:
            lo, hi, cur = (int(g) / 1e6 for g in m.groups())
            out[name.lower()] = {"min_mhz": lo, "max_mhz": hi, "cur_mhz": cur}
    out["locked"] = (out["gpu"]["min_mhz"] == out["gpu"]["max_mhz"]) if "gpu" in out else None
    return out


def _devfreq(root: Path) -> dict[str, dict[str, Any]]:
    """Every devfreq device: ``{name: {"cur_mhz", "min_mhz", "max_mhz", "available_mhz"}}`` (sysfs is in Hz)."""
    out: dict[str, dict[str, Any]] = {}
    base = root / _DEVFREQ
    if not base.is_dir():
        return out
    for dev in sorted(base.iterdir()):
        vals = {k: _read_int(dev / f"{k}_freq") for k in ("cur", "min", "max")}
        if all(v is None for v in vals.values()):
            continue
        avail = (_read(dev / "available_frequencies") or "").split()
        out[dev.name] = {f"{k}_mhz": (v / 1e6 if v is not None else None) for k, v in vals.items()}
        out[dev.name]["available_mhz"] = [int(a) / 1e6 for a in avail if a.isdigit()]
    return out


def _bpmp_clock(root: Path, clk: str) -> dict[str, Any] | None:
    d = root / _BPMP_CLK / clk
    vals = {k: _read_int(d / k) for k in ("rate", "min_rate", "max_rate")}
    if vals["rate"] is None:
        return None
    return {"cur_mhz": vals["rate"] / 1e6, "min_mhz": _mhz(vals["min_rate"]), "max_mhz": _mhz(vals["max_rate"])}


def _mhz(hz: int | None) -> float | None:
    return hz / 1e6 if hz is not None else None


def read_board(root: str | os.PathLike[str] = "/", run: CommandRunner | None = None) -> dict[str, Any]:
    """What the board is and how it is set, for a benchmark record.

    Args:
        root: file-system root (a fake sysfs tree in tests).
        run: ``argv -> stdout or None``; runs ``nvpmodel -q`` and ``jetson_clocks --show`` (default: a subprocess
            with a 5 s limit; None output when a tool is absent or needs root).

    Returns:
        ``{"jetson": False, "note": "not a Jetson"}`` off a Jetson (no ``/etc/nv_tegra_release`` and no Tegra in
        the device-tree model); else ``{"jetson": True, "model", "l4t": {...}, "nvpmodel": {...} or None,
        "jetson_clocks": bool or None, "clocks_source", "gpu": {cur/min/max MHz} or None, "emc", "dla0", "dla1",
        "devfreq": {every devfreq device}, "power_rails": [labels]}``. Clocks that cannot be read (debugfs needs
        root) are None, never guessed.
    """
    r = Path(root)
    run = run or _run_command
    model = _read(r / _MODEL)
    release_text = _read(r / _RELEASE)
    is_jetson = release_text is not None or any(w in (model or "").lower() for w in ("jetson", "tegra"))
    if not is_jetson:
        return {"jetson": False, "note": NOT_JETSON}
    devfreq = _devfreq(r)
    gpu_name = next((n for n in devfreq if any(g in n.lower() for g in _GPU_NAMES)), None)
    gpu = devfreq.get(gpu_name) if gpu_name else None
    nvp_text = run(["nvpmodel", "-q"])
    clocks_text = run(["jetson_clocks", "--show"])
    clocks = parse_jetson_clocks_show(clocks_text) if clocks_text else {}
    if clocks.get("locked") is not None:
        locked, source = clocks["locked"], "jetson_clocks --show"
    elif gpu and gpu.get("min_mhz") is not None and gpu.get("max_mhz") is not None:
        locked, source = gpu["min_mhz"] == gpu["max_mhz"], f"devfreq {gpu_name} min == max"
    else:
        locked, source = None, "unknown (no jetson_clocks --show, no GPU devfreq)"
    out: dict[str, Any] = {
        "jetson": True, "model": model, "l4t": parse_nv_tegra_release(release_text or ""),
        "nvpmodel": (parse_nvpmodel_query(nvp_text) or None) if nvp_text else None,
        "jetson_clocks": locked, "clocks_source": source,
        "gpu": ({"device": gpu_name, **gpu} if gpu else (clocks.get("gpu"))),
        "devfreq": devfreq,
        "power_rails": [rail.label for rail in find_ina3221_rails(r)],
    }
    for key, clk in _BPMP_CLOCKS.items():
        out[key] = _bpmp_clock(r, clk)
    if out["emc"] is None and "emc" in clocks:
        out["emc"] = clocks["emc"]
    return out


def board_summary(root: str | os.PathLike[str] = "/", run: CommandRunner | None = None) -> dict[str, Any]:
    """The board facts a benchmark record carries, flat (:func:`read_board` underneath).

    Returns:
        On a Jetson: ``{"jetson": True, "board": model, "l4t": "36.4.0", "jetpack": "6.1" or None,
        "nvpmodel": {"mode", "id"} or None, "jetson_clocks": bool or None, "clocks_source",
        "clocks": {"gpu", "emc", "dla0", "dla1"} (each ``{cur_mhz, min_mhz, max_mhz}`` or None),
        "power_rails": [labels], "devfreq": {...}}``. Elsewhere ``"jetson": False`` and :data:`NOT_JETSON`
        for every other key, so a reader sees why there is no figure.
    """
    b = read_board(root, run)
    keys = ("board", "l4t", "jetpack", "nvpmodel", "jetson_clocks", "clocks_source", "clocks", "power_rails")
    if not b["jetson"]:
        return {"jetson": False, **{k: NOT_JETSON for k in keys}}
    l4t = b.get("l4t") or {}
    return {"jetson": True, "board": b["model"], "l4t": l4t.get("l4t"), "jetpack": l4t.get("jetpack"),
            "nvpmodel": b["nvpmodel"], "jetson_clocks": b["jetson_clocks"], "clocks_source": b["clocks_source"],
            "clocks": {k: b.get(k) for k in ("gpu", "emc", "dla0", "dla1")}, "power_rails": b["power_rails"],
            "devfreq": b["devfreq"]}


# ---------------------------------------------------------------------------------------------- power

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


@dataclass(frozen=True)
class Rail:
    """One INA3221 channel in hwmon: ``label`` (``VDD_IN``), ``voltage`` (``inN_input``, mV) and ``current``
    (``currN_input``, mA) file paths."""

    label: str
    voltage: Path
    current: Path


def find_ina3221_rails(root: str | os.PathLike[str] = "/") -> list[Rail]:
    """The labelled INA3221 channels under ``<root>/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/``.

    Channels without a ``currN_input`` (channel 7, ``sum of shunt voltages``) are left out; so are labels that
    cannot be read. Sorted by device, then channel.
    """
    rails: list[Rail] = []
    pattern = str(Path(root) / _INA3221 / "*" / "hwmon" / "hwmon*" / "in*_label")
    for label_path in sorted(glob.glob(pattern)):
        p = Path(label_path)
        m = re.fullmatch(r"in(\d+)_label", p.name)
        if not m:
            continue
        n = m.group(1)
        label, voltage, current = _read(p), p.with_name(f"in{n}_input"), p.with_name(f"curr{n}_input")
        if not label or "sum of shunt" in label.lower() or not current.exists() or not voltage.exists():
            continue
        rails.append(Rail(label, voltage, current))
    return rails


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
