"""Bad input is one line, never a traceback, and changes no file (issue "Hardening", items A-D).

A. Output paths (``--out`` an existing file, ``--json`` a folder, a read-only folder) are refused by every
   command before any work starts (``utils.ensure_output_dir`` / ``ensure_output_file``).
B. Checkpoint and manifest fields are validated for type and range where they are read, each failure naming
   the field (``checkpoint._validate_data``, ``manifest.Manifest.from_dict``); a sidecar nested too deeply
   for Python's JSON parser is one line; export validates what it writes by the same rules.
C. A graph beside another graph's sidecar (a kill between the two renames) is refused on every load
   (``manifest.verify_artifact_pair``): ONNX through the manifest embedded in the graph, engines through
   the size and SHA-256 recorded at build.
D. ``std`` 0 is refused by the validation (it used to surface as "relative L2 nan").
E. ``infer`` options that contradict each other or that this OpenCV cannot honour (``--hw-decode`` without
   GStreamer) are one line and exit 2 before a model loads.

Every CLI case asserts: exit code as expected, exactly one ``error:`` line on stderr (``-q``: nothing else),
no traceback, and an unchanged prepared folder (same files, same contents).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from _runtime_helpers import export_tiny, random_frames
from danet_edge.model.checkpoint import save_checkpoint
from danet_edge.core.errors import ManifestError
from danet_edge.core.onnx_meta import METADATA_KEY, embedded_manifest
from danet_edge.core.manifest import manifest_path, read_manifest, write_manifest
from danet_edge.model.config import ModelConfig

K = 5  # classes of the tiny checkpoint (conftest.tiny_checkpoint)
GOOD_DATA = {"dataset": "synthetic", "classes": [f"c{i}" for i in range(K)],
             "palette": [[i * 40, 0, 255 - i * 40] for i in range(K)], "mean": [0.485, 0.456, 0.406],
             "std": [0.229, 0.224, 0.225], "ignore_index": 255, "image_size": [64, 96]}

# bad checkpoint "data" fields (or the whole "model" entry): name -> (change, phrase of the one line)
BAD_CHECKPOINTS = {
    "model_list": ({"model": [torch.zeros(1)]}, "'model' must be a state_dict"),
    "palette_str": ({"palette": ["red"] + GOOD_DATA["palette"][1:]}, "data.palette[0]"),
    "palette_2ch": ({"palette": GOOD_DATA["palette"][:1] + [[1, 2]] + GOOD_DATA["palette"][2:]}, "data.palette[1]"),
    "palette_short": ({"palette": GOOD_DATA["palette"][:-1]}, "data.palette"),
    "mean_one": ({"mean": [0.5]}, "data.mean"),
    "mean_nan": ({"mean": [float("nan"), 0.5, 0.5]}, "data.mean"),
    "std_inf": ({"std": [0.2, float("inf"), 0.2]}, "data.std"),
    "std_zero": ({"std": [0.0, 0.224, 0.225]}, "data.std' must be positive"),
    "size_huge": ({"image_size": [100000, 100000]}, "outside 1..8192"),
    "classes_short": ({"classes": GOOD_DATA["classes"][:-1]}, "lists 4 names"),
    "classes_long": ({"classes": GOOD_DATA["classes"] + ["extra"]}, "lists 6 names"),
}


def _sidecar_changes(d: dict) -> dict:
    """Bad sidecars of the tiny graph: name -> (new sidecar dict or raw text, phrase of the one line)."""
    pal = d["palette"]
    return {
        "model_list": ({**d, "model": []}, "model must be an object"),
        "palette_str": ({**d, "palette": ["red"] + pal[1:]}, "palette[0]"),
        "palette_2ch": ({**d, "palette": pal[:1] + [[1, 2]] + pal[2:]}, "palette[1]"),
        "palette_short": ({**d, "palette": pal[:-1]}, "palette must hold one"),
        "mean_one": ({**d, "mean": [0.5]}, "mean must be three finite numbers"),
        "mean_nan": ({**d, "mean": [float("nan"), 0.5, 0.5]}, "mean must be three finite numbers"),
        "std_inf": ({**d, "std": [0.2, float("inf"), 0.2]}, "std must be three finite numbers"),
        "std_zero": ({**d, "std": [0.0, 0.224, 0.225]}, "std must be positive"),
        "size_huge": ({**d, "input_shape": [1, 3, 100000, 100000]}, "outside 1..8192"),
        "classes_short": ({**d, "classes": d["classes"][:-1], "palette": pal[:-1]}, "classes lists 4 names"),
        "classes_long": ({**d, "classes": d["classes"] + ["x"], "palette": pal + [[1, 2, 3]]}, "classes lists 6 names"),
        "deep": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    }


def _tree(folder: Path) -> dict[str, tuple]:
    """Every file under ``folder``: SHA-256 for small files, (size, mtime) for the 50 MB graph and checkpoint."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(folder))] = (hashlib.sha256(p.read_bytes()).hexdigest(),) if st.st_size < 1 << 20 \
                else (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def ws(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The prepared folder every case runs against (and must leave as it was), plus a scratch folder."""
    root = tmp_path_factory.mktemp("bad_input")
    prep, scratch = root / "prep", root / "scratch"
    (prep / "frames").mkdir(parents=True)
    scratch.mkdir()
    shutil.copy(tiny_checkpoint, prep / "tiny.pt")
    onnx_path = export_tiny(prep / "tiny.pt", prep / "exp" / "model.onnx")
    Image.fromarray(random_frames(1, 64, 96)[0]).save(prep / "frames" / "a.png")
    import cv2

    clip = cv2.VideoWriter(str(prep / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 64))
    for f in random_frames(2, 64, 96):
        clip.write(f)
    clip.release()
    (prep / "afile").write_text("not a folder\n")
    (prep / "adir").mkdir()
    # B: bad checkpoints (a one-tensor "state_dict": the data fields are refused before any weight is loaded)
    (prep / "ck").mkdir()
    cfg = ModelConfig(backbone="resnet18", num_classes=K).to_dict()
    for name, (change, _) in BAD_CHECKPOINTS.items():
        model = change.get("model", {"w": torch.zeros(1)})
        data = {**GOOD_DATA, **{k: v for k, v in change.items() if k != "model"}}
        save_checkpoint(prep / "ck" / f"{name}.pt", {"model": model, "model_config": cfg, "data": data})
    # B: bad sidecars beside (a hard link of) the good graph
    good = json.loads(manifest_path(onnx_path).read_text())
    for name, (content, _) in _sidecar_changes(good).items():
        (prep / "sc" / name).mkdir(parents=True)
        os.link(onnx_path, prep / "sc" / name / "model.onnx")
        text = content if isinstance(content, str) else json.dumps(content)
        manifest_path(prep / "sc" / name / "model.onnx").write_text(text)
    # C: a new graph (std 0.5 inside) beside the old sidecar (std 0.229), as a kill between the renames leaves
    (prep / "swap").mkdir()
    graph = onnx.load(str(onnx_path))
    entry = next(e for e in graph.metadata_props if e.key == METADATA_KEY)
    entry.value = json.dumps({**json.loads(entry.value), "std": [0.5, 0.5, 0.5]})
    onnx.save(graph, str(prep / "swap" / "model.onnx"))
    shutil.copy(manifest_path(onnx_path), manifest_path(prep / "swap" / "model.onnx"))
    # C: an engine beside the sidecar of another engine (size and SHA-256 recorded at build differ)
    (prep / "eng").mkdir()
    (prep / "eng" / "model.engine").write_bytes(b"\x00engine bytes of a newer build" * 100)
    engine_m = {**good, "kind": "engine", "tensorrt": {"version": "10.3.0", "gpu_name": "Orin",
                                                      "compute_capability": "8.7", "engine_bytes": 3100,
                                                      "engine_sha256": "0" * 64}}
    manifest_path(prep / "eng" / "model.engine").write_text(json.dumps(engine_m))
    return {"prep": prep, "scratch": scratch, "onnx": onnx_path, "ckpt": prep / "tiny.pt",
            "img": prep / "frames" / "a.png", "clip": prep / "clip.mp4"}


def _cli(args, capsys):
    """(exit code, stderr lines) of ``danet-edge ARGS`` run in-process."""
    from _runtime_helpers import run_cli

    code, _, err = run_cli(args, capsys)
    return code, err


def _run_case(ws: dict[str, Path], capsys, argv: str, code: int, phrase: str, case_id: str) -> list[str]:
    fill = {"prep": ws["prep"], "onnx": ws["onnx"], "ckpt": ws["ckpt"], "img": ws["img"], "clip": ws["clip"],
            "out": ws["scratch"] / case_id}
    args = ["-q", *[a.format(**fill) for a in argv.split()]]
    before = _tree(ws["prep"])
    got, err = _cli(args, capsys)
    text = "\n".join(err)
    assert "Traceback" not in text
    assert got == code, text
    assert len(err) == 1 and err[0].startswith("error: "), text
    assert phrase in err[0], text
    assert _tree(ws["prep"]) == before, f"{argv} changed a file of the prepared folder"
    return err


# ------------------------------------------------------------------------------------ A: output paths
BENCH = "bench {onnx} --runs 1 --warmup 0"
CHECK = "check {onnx} -r {ckpt} --limit 1"
OUTPUT_CASES = [
    ("infer_out_file", "infer {onnx} {img} -o {prep}/afile", "--out {prep}/afile: is a file, not a folder"),
    ("infer_out_below_file", "infer {onnx} {img} -o {prep}/afile/sub", "afile is a file, not a folder"),
    ("export_out_file", "export {ckpt} -o {prep}/afile", "--out {prep}/afile: is a file"),
    ("train_out_file", "train --epochs 1 -o {prep}/afile", "--out {prep}/afile: is a file"),
    ("eval_json_dir", "eval {ckpt} --limit 1 --json {prep}/adir", "--json {prep}/adir: is a folder, not a file"),
    ("check_json_dir", CHECK + " --json {prep}/adir", "--json {prep}/adir: is a folder"),
    ("check_report_file", CHECK + " -o {prep}/afile", "--report {prep}/afile: is a file"),
    ("bench_json_dir", BENCH + " --json {prep}/adir", "--json {prep}/adir: is a folder"),
    ("bench_plot_dir", BENCH + " --plot {prep}/adir", "--plot {prep}/adir: is a folder"),
    ("bench_out_file", BENCH + " -o {prep}/afile", "--out {prep}/afile: is a file"),
    ("calib_fill_out_file", "calib fill -d synthetic -o {prep}/afile", "--out {prep}/afile: is a file"),
    ("cost_json_dir", "cost {onnx} --json {prep}/adir", "--json {prep}/adir: is a folder"),
    ("build_out_below_file", "build {onnx} -o {prep}/afile/m.engine", "afile is a file, not a folder"),
    ("build_timing_cache_dir", "build {onnx} --timing-cache {prep}/adir", "--timing-cache {prep}/adir: is a folder"),
    ("import_official_out_dir", "import-official {ckpt} -o {prep}/adir", "--out {prep}/adir: is a folder"),
    ("demo_out_file", "demo --quick -o {prep}/afile", "--out {prep}/afile: is a file"),
]


@pytest.mark.parametrize("case_id,argv,phrase", OUTPUT_CASES, ids=[c[0] for c in OUTPUT_CASES])
def test_output_path_refused_before_work(ws, capsys, case_id, argv, phrase):
    _run_case(ws, capsys, argv, 2, phrase.format(prep=ws["prep"]), case_id)


# ------------------------------------------------------------------------- bench's warm-up and duration (s)
BENCH_TIME_CASES = [
    ("bench_warmup_s_negative", BENCH + " --warmup-s -1", "--warmup-s must be in 0..3600, got -1.0"),
    ("bench_warmup_s_inf", BENCH + " --warmup-s inf", "--warmup-s must be a number, got inf"),
    ("bench_duration_negative", BENCH + " --duration -0.5", "--duration must be in 0..3600, got -0.5"),
    ("bench_duration_nan", BENCH + " --duration nan", "--duration must be a number, got nan"),
    ("bench_duration_too_long", BENCH + " --duration 1e9", "--duration must be in 0..3600"),
]


@pytest.mark.parametrize("case_id,argv,phrase", BENCH_TIME_CASES, ids=[c[0] for c in BENCH_TIME_CASES])
def test_bench_time_options_refused(ws, capsys, case_id, argv, phrase):
    _run_case(ws, capsys, argv, 2, phrase, case_id)


# ------------------------------------------------------------------------------------ E: infer options
def _no_gstreamer() -> bool:
    """This OpenCV says it has no GStreamer (pip's wheels); False where it has, or cannot say."""
    from danet_edge.core.errors import MissingDependencyError
    from danet_edge.infer.videoio import gstreamer_support

    try:
        return gstreamer_support() is False
    except MissingDependencyError:
        return False


INFER_OPTION_CASES = [
    ("infer_low_latency_big_queue", "infer {onnx} {clip} --low-latency --queue-size 8 -o {out}",
     "--low-latency keeps at most 2 frames queued", True),
    ("infer_hw_decode_without_gstreamer", "infer {onnx} {clip} --hw-decode -o {out}",
     "--hw-decode needs an OpenCV built with GStreamer", _no_gstreamer()),
    ("infer_hw_decode_images", "infer {onnx} {img} --hw-decode -o {out}", "--hw-decode", True),
]


@pytest.mark.parametrize("case_id,argv,phrase,applies", INFER_OPTION_CASES, ids=[c[0] for c in INFER_OPTION_CASES])
def test_infer_option_refused_in_one_line(ws, capsys, case_id, argv, phrase, applies):
    if not applies:
        pytest.skip("this OpenCV has GStreamer: --hw-decode is honoured")
    _run_case(ws, capsys, argv, 2, phrase, case_id)
    assert not (ws["scratch"] / case_id).exists()


@pytest.fixture(scope="module")
def readonly_dir(tmp_path_factory):
    """A folder this process cannot write in (chmod 0o555); skips where that is not enforced (root)."""
    folder = tmp_path_factory.mktemp("readonly")
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        (folder / "probe").write_text("x")
    except OSError:
        yield folder
    else:
        (folder / "probe").unlink()
        pytest.skip("chmod 0o555 does not stop this user from writing (root)")
    finally:
        folder.chmod(0o755)


READONLY_CASES = [
    ("infer", "infer {onnx} {img} -o {ro}/infer", "--out"),
    ("export", "export {ckpt} -o {ro}/export", "--out"),
    ("train", "train --epochs 1 -o {ro}/train", "--out"),
    ("eval", "eval {ckpt} --limit 1 --json {ro}/eval.json", "--json"),
    ("check", CHECK + " --json {ro}/check.json", "--json"),
    ("bench", BENCH + " --plot {ro}/bench.png", "--plot"),
    ("calib_fill", "calib fill -d synthetic -o {ro}/calib", "--out"),
    ("cost", "cost {onnx} --json {ro}/cost.json", "--json"),
]


@pytest.mark.parametrize("case_id,argv,option", READONLY_CASES, ids=[c[0] for c in READONLY_CASES])
def test_read_only_folder_refused_before_work(ws, capsys, readonly_dir, case_id, argv, option):
    err = _run_case(ws, capsys, argv.replace("{ro}", str(readonly_dir)), 2, option, case_id)
    assert "cannot write there" in err[0]
    assert not any(readonly_dir.iterdir())


def test_output_helpers_write_nothing(tmp_path):
    from danet_edge.core.errors import ConfigError
    from danet_edge.core.utils import ensure_output_dir, ensure_output_file

    assert ensure_output_dir(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"
    assert ensure_output_file(tmp_path / "c" / "r.json", "--json") == tmp_path / "c" / "r.json"
    (tmp_path / "r.json").write_text("{}")
    ensure_output_file(tmp_path / "r.json", "--json")  # an existing file is replaced atomically later: fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no folder made, no probe left
    with pytest.raises(ConfigError, match=r"^--json .*r\.json/x: .*r\.json is a file, not a folder$"):
        ensure_output_file(tmp_path / "r.json" / "x", "--json")


# --------------------------------------------------------------------- B, D: checkpoint fields
@pytest.mark.parametrize("name", list(BAD_CHECKPOINTS))
def test_bad_checkpoint_field_one_line(ws, capsys, name):
    phrase = BAD_CHECKPOINTS[name][1]
    _run_case(ws, capsys, f"export {{prep}}/ck/{name}.pt -o {{out}}", 3, phrase, f"ck_export_{name}")
    assert not (ws["scratch"] / f"ck_export_{name}").exists()


@pytest.mark.parametrize("name", ["palette_2ch", "std_zero", "size_huge", "classes_long"])
def test_bad_checkpoint_field_infer_and_eval(ws, capsys, name):
    phrase = BAD_CHECKPOINTS[name][1]
    _run_case(ws, capsys, f"infer {{prep}}/ck/{name}.pt {{img}} -o {{out}}", 3, phrase, f"ck_infer_{name}")
    _run_case(ws, capsys, f"eval {{prep}}/ck/{name}.pt --limit 1", 3, phrase, f"ck_eval_{name}")


# --------------------------------------------------------------------- B, D: sidecar fields
SIDECAR_NAMES = ["model_list", "palette_str", "palette_2ch", "palette_short", "mean_one", "mean_nan", "std_inf",
                 "std_zero", "size_huge", "classes_short", "classes_long", "deep"]


@pytest.mark.parametrize("name", SIDECAR_NAMES)
def test_bad_sidecar_field_one_line(ws, capsys, name):
    phrase = _sidecar_changes(json.loads(manifest_path(ws["onnx"]).read_text()))[name][1]
    err = _run_case(ws, capsys, f"infer {{prep}}/sc/{name}/model.onnx {{img}} -o {{out}}", 3, phrase,
                    f"sc_infer_{name}")
    assert "model.onnx.json" in err[0]  # the sidecar is named
    assert not (ws["scratch"] / f"sc_infer_{name}").exists()


@pytest.mark.parametrize("command", [BENCH.replace("{onnx}", "{prep}/sc/std_zero/model.onnx"),
                                     CHECK.replace("{onnx}", "{prep}/sc/std_zero/model.onnx"),
                                     "build {prep}/sc/std_zero/model.onnx -o {out}/m.engine"])
def test_bad_sidecar_refused_by_every_reader(ws, capsys, command):
    _run_case(ws, capsys, command, 3, "std must be positive", "sc_readers")


def test_export_never_writes_a_sidecar_infer_rejects(ws, tmp_path):
    m = read_manifest(ws["onnx"])
    for bad, phrase in ((replace(m, std=[0.0, 0.2, 0.2]), "std must be positive"),
                        (replace(m, mean=[float("nan")] * 3), "mean must be three finite"),
                        (replace(m, palette=m.palette[:-1]), "palette must hold one"),
                        (replace(m, input_shape=[1, 3, 9000, 96]), "outside 1..8192")):
        with pytest.raises(ManifestError, match=phrase):
            write_manifest(tmp_path / "model.onnx", bad)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------- C: a graph and another's sidecar
@pytest.mark.parametrize("command", ["infer {prep}/swap/model.onnx {img} -o {out}",
                                     BENCH.replace("{onnx}", "{prep}/swap/model.onnx"),
                                     CHECK.replace("{onnx}", "{prep}/swap/model.onnx"),
                                     "build {prep}/swap/model.onnx -o {out}/m.engine"],
                         ids=["infer", "bench", "check", "build"])
def test_graph_beside_another_graphs_sidecar_is_refused(ws, capsys, command):
    err = _run_case(ws, capsys, command, 3, "disagree on std", "swap")
    assert "model.onnx and model.onnx.json" in err[0] and "re-export" in err[0]


@pytest.mark.parametrize("command", ["infer {prep}/eng/model.engine {img} -o {out}",
                                     BENCH.replace("{onnx}", "{prep}/eng/model.engine")], ids=["infer", "bench"])
def test_engine_beside_another_engines_sidecar_is_refused(ws, capsys, command):
    err = _run_case(ws, capsys, command, 3, "disagree", "engine")
    assert "recorded 3100" in err[0] and "rebuild" in err[0]


def test_engine_hash_is_checked_when_the_size_matches(ws, tmp_path):
    from danet_edge.core.manifest import Manifest

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"abc" * 1000)
    m = replace(read_manifest(ws["onnx"]), kind="engine",
                tensorrt={"engine_bytes": 3000, "engine_sha256": hashlib.sha256(b"abc" * 1000).hexdigest()})
    write_manifest(engine, m)
    assert isinstance(read_manifest(engine), Manifest)
    engine.write_bytes(b"abd" * 1000)  # same size, other bytes (a rebuild with equal size)
    with pytest.raises(ManifestError, match="SHA-256 is not the one its sidecar recorded"):
        read_manifest(engine)


def test_kill_between_the_renames_is_detected(ws, tmp_path, monkeypatch):
    """``export._finalize`` renames the graph, then the sidecar; a kill in between leaves the new graph beside
    the old sidecar, and the next load refuses the pair instead of running with the old normalisation."""
    from danet_edge.core import utils
    from danet_edge.export.fp32 import finalize as _finalize

    path = tmp_path / "model.onnx"
    shutil.copy(ws["onnx"], path)
    shutil.copy(manifest_path(ws["onnx"]), manifest_path(path))
    old = read_manifest(path)
    real_replace = os.replace

    def killed_before_the_sidecar(src, dst):
        if str(dst).endswith(".json"):
            raise KeyboardInterrupt  # the process dies here: the graph is renamed, the sidecar is not
        real_replace(src, dst)

    monkeypatch.setattr(utils.os, "replace", killed_before_the_sidecar)
    with pytest.raises(KeyboardInterrupt):
        _finalize(onnx.load(str(path)), path, replace(old, std=[0.5, 0.5, 0.5]), "tensorrt")
    monkeypatch.undo()
    assert embedded_manifest(path)["std"] == [0.5, 0.5, 0.5]  # the new graph
    assert json.loads(manifest_path(path).read_text())["std"] == old.std  # the old sidecar
    with pytest.raises(ManifestError, match=r"model\.onnx and model\.onnx\.json disagree on std .*re-export"):
        read_manifest(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.json"]  # no temp file left


def test_embedded_manifest_is_read_without_loading_the_graph(ws):
    graph = onnx.load(str(ws["onnx"]), load_external_data=False)
    inside = json.loads(next(e.value for e in graph.metadata_props if e.key == METADATA_KEY))
    assert embedded_manifest(ws["onnx"]) == inside
    assert embedded_manifest(ws["ckpt"]) is None  # not an ONNX protobuf: left to the loader
    assert np.isclose(read_manifest(ws["onnx"]).std, inside["std"]).all()


def test_a_timing_cache_shared_through_a_link_is_the_users_choice(ws, capsys):
    """--timing-cache names the user's own file: a link to a shared cache passes the checks before work (only the
    fixed names danet-edge makes are refused as links); here the build then stops for want of TensorRT (exit 4)."""
    real = ws["scratch"] / "shared.cache"
    real.write_bytes(b"")
    link = ws["scratch"] / "link.cache"
    link.symlink_to(real)
    code, err = _cli(["-q", "build", str(ws["onnx"]), "--timing-cache", str(link), "-o",
                      str(ws["scratch"] / "tc" / "m.engine")], capsys)
    assert code == 4 and "symbolic link" not in "\n".join(err) and "TensorRT" in "\n".join(err)
