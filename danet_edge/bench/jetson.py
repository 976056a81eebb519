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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


__all__ = ["read_board", "board_summary", "NOT_JETSON", "parse_nv_tegra_release", "parse_nvpmodel_query",
           "parse_jetson_clocks_show", "JETPACK_FOR_L4T", "Rail",
           "find_ina3221_rails"]

#: What every Jetson field of a benchmark record says on another machine (a string, never a silent None).
NOT_JETSON = "not a Jetson"


#: L4T release -> JetPack release, from NVIDIA's JetPack archive
#: (https://developer.nvidia.com/embedded/jetpack-archive; JetPack 7.0 is Jetson Linux 38.2 / 38.2.1, 7.1 is 38.4:
#: https://developer.nvidia.com/embedded/jetpack/downloads/archive-7.0, archive-7.1).
#: An L4T not listed here reports ``jetpack: None`` rather than a guess.
JETPACK_FOR_L4T = {
    "38.4.0": "7.1", "38.2.1": "7.0", "38.2.0": "7.0",
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
