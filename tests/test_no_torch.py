"""The device runtime without PyTorch (a Jetson as its users install it: ``pip install danet-edge[jetson]``).

Each scenario runs in a fresh interpreter whose ``sys.meta_path`` starts with a finder that makes importing
torch, torchvision and matplotlib (and, per scenario, OpenCV or ONNX Runtime) raise ImportError, as on a
device where they are not installed. The ``.onnx`` it runs was exported here first, with the full install.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _runtime_helpers import export_tiny, random_frames

NEVER = ("torch", "torchvision", "matplotlib")  # the workstation's packages: the runtime must not need them

# The interpreter prelude: block the packages, then run the device commands through the CLI's main and
# print what happened as one JSON line.
PRELUDE = '''
import importlib.abc, json, sys
BLOCKED = set(json.loads(sys.argv[1]))

class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: device runtime test)", name=name)
        return None

sys.meta_path.insert(0, _Block())
commands = json.loads(sys.argv[2])
sys.argv[1:] = []

import danet_edge.cli
from danet_edge.cli import main
after_import = sorted(m for m in ("cv2", "onnxruntime", "onnx") if m in sys.modules)

codes = {}
for name, argv in commands:
    sys.argv = ["danet-edge", *argv]
    try:
        main()
        codes[name] = 0
    except SystemExit as e:
        codes[name] = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    print(f"--- {name} done", file=sys.stderr, flush=True)
print("RESULT " + json.dumps({"codes": codes, "after_import": after_import,
                              "loaded": sorted(m for m in BLOCKED | {"torch", "cv2", "onnxruntime"}
                                               if sys.modules.get(m) is not None),
                              "torch": "torch" in sys.modules}))
'''


def run_device(commands: list[tuple[str, list[str]]], blocked: tuple[str, ...] = NEVER) -> tuple[dict, str]:
    """Run ``commands`` (name, argv) in one fresh interpreter with ``blocked`` packages unimportable.
    Returns the printed result and stderr."""
    r = subprocess.run([sys.executable, "-c", PRELUDE, json.dumps(list(blocked)),
                        json.dumps([[n, [str(a) for a in argv]] for n, argv in commands])],
                       capture_output=True, text=True, timeout=600)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):]), r.stderr


@pytest.fixture(scope="module")
def device_files(tiny_checkpoint, tmp_path_factory):
    """A tiny static-shape ``.onnx`` (with its manifest), exported with the full install, and 3 frames."""
    root = tmp_path_factory.mktemp("device")
    onnx_path = export_tiny(tiny_checkpoint, root / "model.onnx")
    frames = root / "frames"
    frames.mkdir()
    images = random_frames(3, 72, 100)
    for i, f in enumerate(images):  # not the model's 64x96: resize in and out
        Image.fromarray(f).save(frames / f"f{i}.png")
    from danet_edge.core.manifest import read_manifest
    from danet_edge.export.reference import make_bundle

    labels = [np.random.default_rng(i).integers(0, 5, f.shape[:2]) for i, f in enumerate(images)]
    bundle = make_bundle(tiny_checkpoint, read_manifest(onnx_path), images, labels, 255, "random frames",
                         root / "reference")
    return {"onnx": onnx_path, "frames": frames, "root": root, "bundle": bundle, "ckpt": tiny_checkpoint,
            "images": images, "labels": labels}


def test_device_commands_run_without_torch(device_files, tmp_path):
    onnx_path, frames = device_files["onnx"], device_files["frames"]
    commands = [
        ("help", ["--help"]),
        ("infer", ["infer", onnx_path, frames, "-o", tmp_path / "infer", "--save-labels"]),
        ("bench", ["bench", onnx_path, "--warmup", "0", "--runs", "2", "--warmup-s", "0", "--duration", "0", "--json", tmp_path / "bench.json"]),
        ("check", ["check", onnx_path, "--reference", device_files["bundle"], "--json", tmp_path / "check.json"]),
    ]
    result, stderr = run_device(commands)
    assert result["codes"] == {name: 0 for name, _ in commands}, stderr[-3000:]
    assert result["torch"] is False and not set(NEVER) & set(result["loaded"]), result
    # importing the CLI (and --help) loads neither OpenCV nor ONNX Runtime: only the commands that use them do
    assert not {"cv2", "onnxruntime"} & set(result["after_import"]), result
    summary = json.loads((tmp_path / "infer" / "summary.json").read_text())
    assert summary["frames"] == 3 and len(list((tmp_path / "infer" / "labels").glob("*.png"))) == 3
    bench = json.loads((tmp_path / "bench.json").read_text())
    (entry,) = bench["entries"]
    assert entry["name"] == "model.onnx" and entry["latency_p50_ms"] > 0 and not entry["is_reference"]
    assert entry["speedup_vs_reference"] == 1.0 and entry["speedup_baseline"] == "model.onnx"
    assert any("PyTorch reference not timed" in n for n in bench["notes"])
    assert bench["machine"]["torch_threads"] is None and bench["machine"]["cpu_count"] >= 1
    # check against the bundle, without torch, reports what the full install reports against the checkpoint
    from danet_edge.check.run import check_artifacts

    class _Data(list):
        info = type("Info", (), {"classes": [f"c{i}" for i in range(5)], "ignore_index": 255, "name": "random"})

    full = check_artifacts([onnx_path], device_files["ckpt"], _Data(zip(device_files["images"], device_files["labels"])))
    (got,) = json.loads((tmp_path / "check.json").read_text())["artifacts"]
    (want,) = full.artifacts
    assert abs(got["agreement"] - want.agreement) < 1e-6 and abs(got["miou_delta"] - want.miou_delta) < 1e-6
    assert abs(got["miou"] - want.miou) < 1e-6 and got["frames"] == 3


def _one_error_line(stderr: str, name: str) -> str:
    part = stderr.split(f"--- {name} done")[0].rsplit("done\n", 1)[-1]
    assert "Traceback" not in part, part
    lines = [ln for ln in part.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, part
    return lines[0]


def test_missing_packages_are_one_line_with_exit_4(device_files, tmp_path):
    """No OpenCV: infer says so in one line (exit 4) and bench still runs. A .pt reference without torch:
    one line naming the extras."""
    onnx_path, frames = device_files["onnx"], device_files["frames"]
    ckpt = tmp_path / "fake.pt"
    ckpt.write_bytes(b"never read: the missing torch is found first")
    commands = [
        ("infer", ["infer", onnx_path, frames, "-o", tmp_path / "infer"]),
        ("bench", ["bench", onnx_path, "--warmup", "0", "--runs", "1", "--warmup-s", "0", "--duration", "0", "--json", tmp_path / "b.json"]),
        ("bench-reference", ["bench", onnx_path, "--reference", ckpt, "--runs", "1"]),
        ("train", ["train", "--epochs", "1", "--out", tmp_path / "train"]),  # torch imported at module level
    ]
    result, stderr = run_device(commands, blocked=NEVER + ("cv2",))
    assert result["codes"] == {"infer": 4, "bench": 0, "bench-reference": 4, "train": 4}, stderr[-3000:]
    assert "danet-edge[train]" in _one_error_line(stderr, "train")
    line = _one_error_line(stderr, "infer")
    assert "OpenCV is not importable" in line and "--system-site-packages" in line and "danet-edge[video]" in line
    line = _one_error_line(stderr, "bench-reference")
    assert "PyTorch is not importable" in line and "danet-edge[train]" in line
    assert json.loads((tmp_path / "b.json").read_text())["entries"][0]["latency_p50_ms"] > 0
    assert not (tmp_path / "infer").exists() or not list((tmp_path / "infer").iterdir())


def test_onnx_without_onnxruntime_is_one_line(device_files, tmp_path):
    clip_dir = device_files["frames"]
    result, stderr = run_device([("infer", ["infer", device_files["onnx"], clip_dir, "-o", tmp_path])],
                                blocked=NEVER + ("onnxruntime",))
    assert result["codes"] == {"infer": 4}
    line = _one_error_line(stderr, "infer")
    assert "ONNX Runtime is not importable" in line and "danet-edge[ort]" in line and "onnxruntime-gpu" in line


@pytest.mark.parametrize("name, module, words", [
    ("import_cv2", "cv2", ["OpenCV", "python3-opencv", "danet-edge[video]"]),
    ("import_onnxruntime", "onnxruntime", ["onnxruntime-gpu", "danet-edge[ort]"]),
    ("import_torch", "torch", ["NVIDIA's torch", "danet-edge[train]", "danet-edge[export]"]),
    ("import_matplotlib", "matplotlib", ["danet-edge[plot]"]),
])
def test_optional_imports_name_the_extra(monkeypatch, name, module, words):
    from danet_edge.core import optional as _optional
    from danet_edge.core.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependencyError) as e:
        getattr(_optional, name)()
    msg = str(e.value)
    assert "\n" not in msg and e.value.exit_code == 4 and all(w in msg for w in words), msg


def test_optional_imports_return_the_module():
    from danet_edge.core import optional as _optional

    cv2 = _optional.import_cv2()
    assert _optional.import_onnxruntime().InferenceSession and cv2.resize
    assert np.array_equal(cv2.resize(np.zeros((4, 4, 3), np.uint8), (2, 2)), np.zeros((2, 2, 3), np.uint8))


def test_cv2_numpy_abi_hint(monkeypatch):
    """JetPack's OpenCV is built for NumPy 1.x: a NumPy 2 in the venv breaks its import; the hint says so."""
    import importlib

    from danet_edge.core import optional as _optional
    from danet_edge.core.errors import MissingDependencyError

    real = importlib.import_module

    def fake_import(name, *a, **k):
        if name == "cv2":
            raise ImportError("numpy.core.multiarray failed to import")
        return real(name, *a, **k)

    monkeypatch.delitem(sys.modules, "cv2", raising=False)
    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(MissingDependencyError, match=r"numpy<2"):
        _optional.import_cv2()


def test_readme_gstreamer_strings_are_pipelines():
    """The source strings the Jetson page (docs/jetson.md) gives are taken as GStreamer pipelines by ``infer``."""
    import re

    from danet_edge.infer.sources import is_gstreamer

    page = (Path(__file__).resolve().parents[1] / "docs" / "jetson.md").read_text()
    section = page.split("## On a Jetson (JetPack 6)", 1)[1].split("\n## ", 1)[0]
    pipelines = re.findall(r'danet-edge infer \S+ "([^"]+)"', section)
    assert len(pipelines) >= 2 and all(is_gstreamer(p) and p.rstrip().split("!")[-1].strip().startswith("appsink")
                                       for p in pipelines), pipelines


def test_cli_turns_a_module_level_import_error_into_one_line(monkeypatch):
    """``missing_dependency``: the CLI's last resort for stages that import torch & co. at module level."""
    from danet_edge.core.optional import missing_dependency

    monkeypatch.setitem(sys.modules, "torch", None)
    err = missing_dependency(ModuleNotFoundError("No module named 'torch'", name="torch.nn"))
    assert err is not None and err.exit_code == 4 and "danet-edge[train]" in str(err)
    assert "danet-edge[train]" in str(missing_dependency(ModuleNotFoundError("x", name="torchvision")))
    assert "danet-edge[export]" in str(missing_dependency(ModuleNotFoundError("x", name="onnxslim")))
    assert missing_dependency(ModuleNotFoundError("x", name="numpy")) is None  # not an optional package
    assert missing_dependency(ImportError("cannot import name 'x' from 'cv2'", name="cv2")) is None  # cv2 is there
