"""The base install in a fresh venv (no torch, torchvision, matplotlib): infer, check against a reference
bundle and bench give what the full install gives. Needs the package registry (pip); marked slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _runtime_helpers import export_tiny, random_frames

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, env=env, **kw)


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory) -> Path:
    """A venv with ``danet-edge[ort,video]`` only: the device runtime on a workstation (ONNX Runtime and
    OpenCV from PyPI; a Jetson has its own)."""
    import shutil

    work = tmp_path_factory.mktemp("basevenv")
    src = work / "src"  # a copy: building in the checkout would leave build/ and egg-info there
    shutil.copytree(REPO / "danet_edge", src / "danet_edge", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    root = work / "venv"
    venv.create(root, with_pip=True)
    py = root / "bin" / "python"
    r = _run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{src}[ort,video]"])
    if r.returncode != 0:
        if "Could not find a version" in r.stderr or "Failed to establish" in r.stderr or "No matching" in r.stderr:
            pytest.skip(f"package registry not reachable: {r.stderr.strip().splitlines()[-1]}")
        raise AssertionError(r.stderr[-3000:])
    return root


def test_base_install_runs_the_device_commands_like_the_full_install(base_venv, tiny_checkpoint, tmp_path):
    from danet_edge.core.manifest import read_manifest
    from danet_edge.export.reference import make_bundle

    py = base_venv / "bin" / "python"
    missing = _run([py, "-c", "import importlib.util as u; print([m for m in ('torch', 'torchvision', 'matplotlib') "
                              "if u.find_spec(m)])"])
    assert missing.stdout.strip() == "[]", missing.stdout + missing.stderr
    onnx_path = export_tiny(tiny_checkpoint, tmp_path / "model.onnx")
    frames = tmp_path / "frames"
    frames.mkdir()
    images = random_frames(3, 72, 100)
    for i, f in enumerate(images):
        Image.fromarray(f).save(frames / f"f{i}.png")
    labels = [np.random.default_rng(i).integers(0, 5, f.shape[:2]) for i, f in enumerate(images)]
    bundle = make_bundle(tiny_checkpoint, read_manifest(onnx_path), images, labels, 255, "random", tmp_path / "ref")

    outs = {}
    for name, exe in (("base", base_venv / "bin" / "danet-edge"), ("full", Path(sys.executable).parent / "danet-edge")):
        out = tmp_path / name
        for args in (["infer", onnx_path, frames, "-o", out / "infer", "--save-labels"],
                     ["check", onnx_path, "--reference", bundle, "--json", out / "check.json"],
                     ["bench", onnx_path, "--warmup", "0", "--runs", "2", "--json", out / "bench.json"]):
            r = _run([exe, *args])
            assert r.returncode == 0, f"{name} {args[0]}: {r.stderr[-2000:]}"
        outs[name] = out
    for png in sorted((outs["full"] / "infer" / "labels").glob("*.png")):
        np.testing.assert_array_equal(np.asarray(Image.open(png)),
                                      np.asarray(Image.open(outs["base"] / "infer" / "labels" / png.name)))
    base, full = (json.loads((outs[n] / "check.json").read_text())["artifacts"][0] for n in ("base", "full"))
    assert base["agreement"] == full["agreement"] and base["miou_delta"] == full["miou_delta"]
    assert base["passed"] and base["frames"] == 3
    bench = json.loads((outs["base"] / "bench.json").read_text())
    assert bench["entries"][0]["latency_p50_ms"] > 0 and bench["machine"]["torch"] is None
