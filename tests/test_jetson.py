"""Jetson facts and power sampling (danet_edge/jetson.py) on recorded real outputs and a fake sysfs tree.

The samples in tests/data/jetson/ are quotes of real tegrastats / nv_tegra_release / jetson_clocks outputs; each
file's header says where it comes from. The sysfs trees below are fake: their layout (paths, labels, the
``sum of shunt voltages`` channel 7) is the one the hwmon ina3221 driver gives on Orin, their values are made up.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import pytest

from danet_edge.bench import jetson, power
from danet_edge.core.errors import ConfigError

DATA = Path(__file__).parent / "data" / "jetson"


def sample(name: str) -> list[str]:
    """The data lines of a sample file (after its cited header, which ends at a line ``---``)."""
    text = (DATA / name).read_text().splitlines()
    return [line for line in text[text.index("---") + 1:] if line.strip()]


# ---------------------------------------------------------------------------------------------- tegrastats

def test_agx_orin_tegrastats_rails_in_watts():
    lines = sample("tegrastats_agx_orin_64gb.txt")
    assert len(lines) == 4
    first = power.parse_tegrastats_line(lines[0])
    # only the four rails: RAM 13031/62841MB, SWAP, EMC_FREQ 1%@2133, APE 174, temperatures are not rails
    assert first == {"VDD_GPU_SOC": 2.389, "VDD_CPU_CV": 1.991, "VIN_SYS_5V0": 3.634, "VDDQ_VDD2_1V8AO": 0.807}
    second = power.parse_tegrastats_line(lines[1])
    assert second["VDD_CPU_CV"] == 2.389  # the instantaneous value, not tegrastats' running average (2190)
    dla = power.parse_tegrastats_line(lines[3])  # JetPack 6 line with NVDLA0_FREQ @1600, upper-case sensors
    assert dla == {"VDD_GPU_SOC": 3.15, "VDD_CPU_CV": 14.312, "VIN_SYS_5V0": 4.968, "VDDQ_VDD2_1V8AO": 1.091}
    total, source = power.total_power_w(first)  # AGX Orin has no input rail: the sum, said so
    assert total == pytest.approx(2.389 + 1.991 + 3.634 + 0.807) and source.startswith("sum of VDD_GPU_SOC")


def test_orin_nano_tegrastats_total_is_vdd_in():
    lines = sample("tegrastats_orin_nano.txt")
    loaded = power.parse_tegrastats_line(lines[0])
    assert loaded == {"VDD_IN": 12.479, "VDD_CPU_GPU_CV": 4.667, "VDD_SOC": 2.817}
    assert power.total_power_w(loaded) == (12.479, "VDD_IN")
    idle = power.parse_tegrastats_line(lines[1])
    assert idle == {"VDD_IN": 4.824, "VDD_CPU_GPU_CV": 0.518, "VDD_SOC": 1.475}


def test_pre_orin_tegrastats_without_units():
    nano, xavier, tx2 = (power.parse_tegrastats_line(line) for line in sample("tegrastats_legacy.txt"))
    assert nano == {"POM_5V_IN": 2.746, "POM_5V_GPU": 0.159, "POM_5V_CPU": 0.796}  # IRAM 0/252kB is not a rail
    assert power.total_power_w(nano) == (2.746, "POM_5V_IN")
    assert xavier == {"GPU": 0.463, "CPU": 0.618, "SOC": 2.936, "CV": 0.0, "VDDRQ": 0.309, "SYS5V": 3.306}
    assert power.total_power_w(xavier)[0] == pytest.approx(0.463 + 0.618 + 2.936 + 0.309 + 3.306)
    assert tx2["VDD_IN"] == 1.931 and len(tx2) == 6  # "APE 150" and "MTS fg 1%" are not rails
    assert power.parse_tegrastats_line("RAM 100/200MB APE 25 VIC_FREQ 115") == {}


# ---------------------------------------------------------------------------------------------- board facts

def test_release_power_mode_and_clock_parsers():
    nano, tx2 = (jetson.parse_nv_tegra_release(line) for line in sample("nv_tegra_release.txt"))
    assert nano == {"l4t": "32.7.6", "release": "R32", "revision": "7.6", "jetpack": "4.6.6", "board": "t210ref"}
    assert tx2["l4t"] == "32.5.1" and tx2["jetpack"] is None  # not in the table: no guess
    assert jetson.parse_nv_tegra_release("# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic")["jetpack"] == "6.1"
    assert jetson.parse_nv_tegra_release("Ubuntu 22.04") == {}
    clocks = jetson.parse_jetson_clocks_show("\n".join(sample("jetson_clocks_show_tx1.txt")))
    assert clocks["gpu"] == {"min_mhz": 998.4, "max_mhz": 998.4, "cur_mhz": 998.4} and clocks["locked"] is True
    assert clocks["emc"]["cur_mhz"] == 1600.0 and clocks["emc"]["min_mhz"] == 12.75
    assert jetson.parse_nvpmodel_query("NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN\n0\n") == \
        {"mode": "MAXN", "id": 0}
    assert jetson.parse_nvpmodel_query("nvpmodel: command not found") == {}


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text + "\n")


def _ina3221(root: Path, dev: str, hwmon: str, channels: dict[int, tuple[str, int, int]]) -> None:
    """Channels {n: (label, mV, mA)} of one INA3221 in the hwmon layout, plus channel 7 (sum of shunts)."""
    base = f"sys/bus/i2c/drivers/ina3221/{dev}/hwmon/{hwmon}"
    for n, (label, mv, ma) in channels.items():
        _write(root, f"{base}/in{n}_label", label)
        _write(root, f"{base}/in{n}_input", str(mv))
        _write(root, f"{base}/curr{n}_input", str(ma))
    _write(root, f"{base}/in7_label", "sum of shunt voltages")
    _write(root, f"{base}/in7_input", "1234")


def agx_orin_tree(root: Path) -> Path:
    """A fake AGX Orin: rails on 1-0040 (three) and 1-0041 (one), JetPack 6.1, clocks pinned by jetson_clocks."""
    _write(root, "proc/device-tree/model", "NVIDIA Jetson AGX Orin Developer Kit\x00")
    _write(root, "etc/nv_tegra_release", "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic")
    gpu = "sys/class/devfreq/17000000.gpu"
    for k, v in (("cur_freq", 1300500000), ("min_freq", 1300500000), ("max_freq", 1300500000)):
        _write(root, f"{gpu}/{k}", str(v))
    _write(root, f"{gpu}/available_frequencies", "306000000 612000000 1300500000")
    _write(root, "sys/kernel/debug/bpmp/debug/clk/emc/rate", "3199000000")
    _ina3221(root, "1-0040", "hwmon3", {1: ("VDD_GPU_SOC", 19000, 200), 2: ("VDD_CPU_CV", 19000, 100),
                                        3: ("VIN_SYS_5V0", 5000, 700)})
    _ina3221(root, "1-0041", "hwmon2", {1: ("VDDQ_VDD2_1V8AO", 5000, 160)})
    return root


def test_read_board_on_a_fake_agx_orin(tmp_path):
    root = agx_orin_tree(tmp_path)
    calls = []

    def run(argv):
        calls.append(list(argv))
        return "NV Power Mode: MAXN\n0\n" if argv[0] == "nvpmodel" else None  # jetson_clocks needs root: None

    board = jetson.read_board(root, run=run)
    assert board["jetson"] is True and board["model"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert board["l4t"]["l4t"] == "36.4.0" and board["l4t"]["jetpack"] == "6.1"
    assert board["nvpmodel"] == {"mode": "MAXN", "id": 0}
    assert board["jetson_clocks"] is True and "devfreq 17000000.gpu" in board["clocks_source"]
    assert board["gpu"]["cur_mhz"] == 1300.5 and board["gpu"]["available_mhz"] == [306.0, 612.0, 1300.5]
    assert board["emc"]["cur_mhz"] == 3199.0 and board["dla0"] is None  # unreadable: None, not a guess
    assert board["power_rails"] == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"]
    assert ["nvpmodel", "-q"] in calls
    # dynamic clocks: min < max
    (root / "sys/class/devfreq/17000000.gpu/min_freq").write_text("306000000\n")
    assert jetson.read_board(root, run=lambda argv: None)["jetson_clocks"] is False


def test_read_board_off_a_jetson(tmp_path):
    _write(tmp_path, "proc/device-tree/model", "Raspberry Pi 5 Model B Rev 1.0")
    assert jetson.read_board(tmp_path, run=lambda argv: None) == {"jetson": False, "note": "not a Jetson"}
    assert jetson.read_board(tmp_path / "empty", run=lambda argv: None) == {"jetson": False, "note": "not a Jetson"}


def test_ina3221_rails_from_sysfs(tmp_path):
    root = agx_orin_tree(tmp_path)
    rails = jetson.find_ina3221_rails(root)
    assert [r.label for r in rails] == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"]  # no channel 7
    assert power.read_rails_mw(rails) == {"VDD_GPU_SOC": 3800.0, "VDD_CPU_CV": 1900.0, "VIN_SYS_5V0": 3500.0,
                                           "VDDQ_VDD2_1V8AO": 800.0}


# ---------------------------------------------------------------------------------------------- sampling

def test_power_sampler_on_sysfs(tmp_path):
    root = tmp_path
    _ina3221(root, "1-0040", "hwmon1", {1: ("VDD_IN", 5000, 1000), 2: ("VDD_CPU_GPU_CV", 5000, 300),
                                        3: ("VDD_SOC", 5000, 200)})
    with power.PowerSampler(interval_s=0.01, root=root, tegrastats=None) as ps:
        time.sleep(0.15)
    rep = ps.report(frames=30)
    assert rep.source == "sysfs" and rep.samples >= 3
    assert rep.rails_w == {"VDD_IN": 5.0, "VDD_CPU_GPU_CV": 1.5, "VDD_SOC": 1.0}
    assert rep.total_w == 5.0 and rep.total_source == "VDD_IN"  # VDD_IN is the total, not the sum
    assert rep.duration_s >= 0.15
    assert rep.energy_j == pytest.approx(5.0 * rep.duration_s)
    assert rep.energy_per_frame_mj == pytest.approx(rep.energy_j / 30 * 1000)
    assert rep.fps_per_w == pytest.approx(30 / rep.energy_j)  # FPS/W = frames per joule


def test_power_sampler_falls_back_to_tegrastats(tmp_path):
    """No readable sysfs: a tegrastats subprocess (here a script replaying the recorded Orin Nano lines)."""
    lines = sample("tegrastats_orin_nano.txt")
    (tmp_path / "lines.txt").write_text("\n".join(lines) + "\n")
    fake = tmp_path / "tegrastats"
    fake.write_text(f"#!{sys.executable}\nimport sys, time\n"
                    f"assert sys.argv[1:] == ['--interval', '20'], sys.argv\n"
                    f"lines = open({str(tmp_path / 'lines.txt')!r}).read().splitlines()\n"
                    "while True:\n    for l in lines:\n        print(l, flush=True)\n        time.sleep(0.02)\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    with power.PowerSampler(interval_s=0.02, root=tmp_path / "nosys", tegrastats=str(fake)) as ps:
        deadline = time.time() + 10
        while len(ps.readings) < 4 and time.time() < deadline:
            time.sleep(0.02)
    rep = ps.report(frames=100)
    assert rep.source == "tegrastats" and rep.samples >= 4 and rep.total_source == "VDD_IN"
    assert 4.824 <= rep.total_w <= 12.479 and set(rep.rails_w) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
    assert rep.energy_per_frame_mj == pytest.approx(rep.total_w * rep.duration_s / 100 * 1000)


def test_power_sampler_refuses_a_machine_without_monitor(tmp_path):
    with pytest.raises(ConfigError, match="no power monitor"):
        with power.PowerSampler(root=tmp_path, tegrastats=None):
            pass
    with pytest.raises(ConfigError, match="interval"):
        power.PowerSampler(interval_s=0)
    with pytest.raises(ConfigError, match="no reading"):
        power.summarize_power([], 1.0)
    rep = power.summarize_power([{"VDD_GPU_SOC": 2.0, "VDD_CPU_CV": 1.0}], 2.0, frames=0)
    assert rep.total_w == 3.0 and rep.energy_j == 6.0 and rep.fps is None and rep.notes


def test_jetson_module_imports_no_torch():
    import subprocess

    code = "import sys, danet_edge.bench.jetson; sys.exit(bool({'torch', 'onnx', 'onnxruntime'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], env={**os.environ}, timeout=60).returncode == 0
