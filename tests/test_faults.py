"""Faults a deployment meets (issue "a full disk, a poisoned cache, two runs in one folder"):

1. a full disk: every command that writes ends in one ``error:`` line, exit 5, no temporary file left, nothing
   already written changed; ``infer``'s video stays playable up to its last frame;
2. an output file name taken by a folder is refused before any work;
3. a run holds its output folder (``utils.run_lock``): a second run into it is refused in one line;
4. ONNX Runtime's ``-inferred.onnx`` never lands in ``--out`` (a Ctrl-C during calibration left it there);
5. a calibration ranges cache is validated (its record's SHA-256, its tensors, finite ranges) or recalibrated,
   and every recipe's export verification has an agreement floor;
6. usage errors, ``cost`` of empty or dynamic graphs, engine sidecars without their size + SHA-256 pair, graphs
   whose external data points outside their folder: one line, the documented exit code.

The full-disk cases mount a small tmpfs and skip where that is not allowed (not root).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from _runtime_helpers import export_tiny, make_tiny_checkpoint, random_frames, run_cli
from test_runtime import read_video, write_video
from danet_edge.core.errors import RunLocked, StorageError
from danet_edge.core.runfolder import LOCK_NAME, run_lock
from danet_edge.core.utils import append_line, atomic_path

SYNTH = ["--dataset", "synthetic", "--synthetic-size", "64", "96"]
TRAIN = ["train", *SYNTH, "--limit-train", "4", "--limit-val", "2", "-b", "2", "--epochs", "1", "--workers", "0",
         "--no-progress"]


def _cli(args, capsys) -> tuple[int, list[str]]:
    code, _, err = run_cli(["-q", *map(str, args)], capsys)
    return code, err


def _one_line(code: int, err: list[str], want: int, phrase: str) -> None:
    text = "\n".join(err)
    assert "Traceback" not in text and "Usage:" not in text, text
    assert code == want, text
    assert len(err) == 1 and err[0].startswith("error: "), text
    assert phrase in err[0], text


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, Path]:
    """An 8-class tiny checkpoint (synthetic data has 8 classes), its FP32 graph, a clip and calibration images."""
    import cv2

    root = tmp_path_factory.mktemp("faults")
    ckpt = make_tiny_checkpoint(root / "t8.pt", num_classes=8)
    graph = export_tiny(ckpt, root / "exp" / "model.onnx")
    clip = write_video(root / "clip.mp4", random_frames(24, 64, 96), fps=10.0)
    calib = root / "calib"
    calib.mkdir()
    for i, f in enumerate(random_frames(6, 64, 96, seed=3)):
        cv2.imwrite(str(calib / f"{i}.png"), f)
    return {"root": root, "ckpt": ckpt, "onnx": graph, "clip": clip, "calib": calib}


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")


def _fill(folder: Path, leave: int = 0) -> None:
    """Fill the file system of ``folder`` until ``leave`` bytes (about) are free."""
    with open(folder / ".filler", "wb") as f:
        chunk = b"\0" * 65536
        while shutil.disk_usage(folder).free > leave + len(chunk):
            f.write(chunk)
            f.flush()
        try:
            while shutil.disk_usage(folder).free > leave:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC


@pytest.fixture
def full(tmp_path):
    """A 1 MiB tmpfs with no byte free."""
    mnt = tmp_path / "full"
    _mount_tmpfs(mnt, "1m")
    _fill(mnt)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _strays(folder: Path) -> list[str]:
    """What a failed command left on the full disk: nothing at all (no temporary file, partial video, lock file
    or empty folder) but the filler."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name != ".filler")


# ------------------------------------------------------------------------------------------ 1. a full disk
FULL_CASES = [
    ("export", ["export", "{ckpt}", "-o", "{full}/e"]),
    ("export_fp16", ["export", "{ckpt}", "--fp16", "-o", "{full}/e"]),
    ("train", [*TRAIN, "-o", "{full}/t"]),
    ("eval_json", ["eval", "{ckpt}", "--limit", "1", "--json", "{full}/x.json"]),
    ("calib_fill", ["calib", "fill", "-d", "synthetic", "-o", "{full}/c"]),
    ("check_report", ["check", "{onnx}", "-r", "{ckpt}", "--limit", "1", "-o", "{full}/r"]),
    ("check_json", ["check", "{onnx}", "-r", "{ckpt}", "--limit", "1", "--json", "{full}/r.json"]),
    ("cost_json", ["cost", "{onnx}", "--json", "{full}/c.json"]),
    ("bench_json", ["bench", "{onnx}", "--runs", "1", "--warmup", "0", "--json", "{full}/b.json"]),
    ("bench_plot", ["bench", "{onnx}", "--runs", "1", "--warmup", "0", "--plot", "{full}/b.png"]),
    ("infer", ["infer", "{onnx}", "{clip}", "-o", "{full}/i"]),
    ("deploy_triton", ["deploy", "{onnx}", "--triton", "{full}/repo"]),
    ("export_nested_out", ["export", "{ckpt}", "-o", "{full}/a/b"]),
]


@pytest.mark.parametrize("argv", [c[1] for c in FULL_CASES], ids=[c[0] for c in FULL_CASES])
def test_full_disk_is_one_line_and_leaves_nothing(ws, full, capsys, argv):
    args = [a.format(full=full, **ws) for a in argv]
    code, err = _cli(args, capsys)
    _one_line(code, err, 5, "")
    assert "no space left" in err[0] or "nearly full" in err[0], err[0]
    assert _strays(full) == [], _strays(full)


def test_full_disk_keeps_the_run_it_resumes(ws, tmp_path, capsys):
    """``train --resume`` onto a disk that fills: one line, exit 5, last.pt / best.pt / metrics unchanged."""
    src = tmp_path / "run"
    code, err = _cli([*TRAIN, "-o", src], capsys)
    assert code == 0, err
    mnt = tmp_path / "disk"
    used = sum(p.stat().st_size for p in src.iterdir())
    _mount_tmpfs(mnt, str(used + (4 << 20)))
    try:
        run = mnt / "run"
        shutil.copytree(src, run)
        _fill(mnt, leave=64 << 10)  # room for config.json and the metrics, not for a checkpoint
        before = _tree(run)
        code, err = _cli([*TRAIN[:-3], "--epochs", "2", "--no-progress", "--resume", "-o", run], capsys)
        _one_line(code, err, 5, "no space left")
        assert {k: v for k, v in _tree(run).items() if k != "config.json"} == \
               {k: v for k, v in before.items() if k != "config.json"}
        assert [p.name for p in run.iterdir() if p.name.endswith(".tmp") or p.name == LOCK_NAME] == []
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_append_line_never_leaves_half_a_line(tmp_path):
    mnt = tmp_path / "disk"
    _mount_tmpfs(mnt, "1m")
    try:
        path = mnt / "metrics.jsonl"
        path.write_text('{"epoch": 0}\n')
        _fill(mnt, leave=0)
        with pytest.raises(StorageError, match="no space left"):
            append_line(path, json.dumps({"epoch": 1, "pad": "x" * 100_000}))
        assert path.read_text() == '{"epoch": 0}\n'
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_atomic_path_turns_a_library_full_disk_into_storage_error(tmp_path):
    """PyTorch's zip writer says "file write failed" in a RuntimeError, without an errno."""
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")
    with pytest.raises(StorageError, match="last.pt: no space left"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing "
                               "file data/0: file write failed")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def _decoded_frames(path: Path) -> int:
    return read_video(path)[0]


def test_infer_video_stays_playable_when_the_disk_fills(ws, tmp_path, capsys, monkeypatch):
    """The free space falls below the video's reserve after 10 frames: the video is closed there, playable."""
    import danet_edge.infer.render as render

    frames = {"n": 0}
    real = render.VideoOut.write

    def counting(self, rgb):
        real(self, rgb)
        frames["n"] = self.frames

    monkeypatch.setattr(render.VideoOut, "write", counting)
    monkeypatch.setattr(render, "free_bytes", lambda _p: 1 << 40 if frames["n"] < 10 else 1 << 20)
    code, err = _cli(["infer", ws["onnx"], ws["clip"], "-o", tmp_path / "i"], capsys)
    _one_line(code, err, 5, "nearly full")
    video = tmp_path / "i" / "clip_overlay.mp4"
    assert "the 10 frames before are in" in err[0] and str(video) in err[0]
    assert _decoded_frames(video) == 10
    assert sorted(p.name for p in (tmp_path / "i").iterdir()) == ["clip_overlay.mp4", "summary.json"]


# ----------------------------------------------------------------------------- 2. names taken by folders
TAKEN = [
    ("export_graph", "model.onnx", ["export", "{ckpt}", "-o", "{out}"]),
    ("export_sidecar", "model.onnx.json", ["export", "{ckpt}", "-o", "{out}"]),
    ("export_fp16_sidecar", "model_fp16.onnx.json", ["export", "{ckpt}", "--fp16", "-o", "{out}"]),
    ("infer_summary", "summary.json", ["infer", "{onnx}", "{clip}", "-o", "{out}"]),
    ("infer_video", "clip_overlay.mp4", ["infer", "{onnx}", "{clip}", "-o", "{out}"]),
    ("check_report", "report.html", ["check", "{onnx}", "-r", "{ckpt}", "--limit", "1", "-o", "{out}"]),
    ("train_last", "last.pt", [*TRAIN, "--exist-ok", "-o", "{out}"]),
    ("calib_record", "calib.json", ["calib", "fill", "-d", "synthetic", "-o", "{out}"]),
]


@pytest.mark.parametrize("name,argv", [c[1:] for c in TAKEN], ids=[c[0] for c in TAKEN])
def test_output_name_taken_by_a_folder_is_refused_before_work(ws, tmp_path, capsys, name, argv):
    out = tmp_path / "out"
    (out / name).mkdir(parents=True)
    code, err = _cli([a.format(out=out, **ws) for a in argv], capsys)
    _one_line(code, err, 2, f"{name} would be written there, but it is a folder")
    assert [str(p.relative_to(out)) for p in out.rglob("*")] == [name]


# ------------------------------------------------------------------------------------ 3. one run a folder
def test_run_lock_refuses_a_second_holder_and_tidies_up(tmp_path):
    folder = tmp_path / "run"
    with run_lock(folder, "train") as lock:
        assert lock.read_text().startswith(f"pid {os.getpid()}, danet-edge train")
        with pytest.raises(RunLocked, match=r"another run is writing there \(pid \d+, danet-edge train"):
            with run_lock(folder, "export"):
                pass
    assert not folder.exists()  # made by the lock, left empty: removed
    folder.mkdir()
    (folder / LOCK_NAME).write_text("pid 1, danet-edge train, since 00:00:00\n")  # a killed run's file: no holder
    with run_lock(folder, "infer"):
        pass
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("argv", [
    [*TRAIN, "-o", "{out}"],
    ["export", "{ckpt}", "-o", "{out}"],
    ["infer", "{onnx}", "{clip}", "-o", "{out}"],
    ["calib", "fill", "-d", "synthetic", "-o", "{out}"],
], ids=["train", "export", "infer", "calib_fill"])
def test_second_run_into_a_held_folder_is_refused(ws, tmp_path, capsys, argv):
    """Another process holds the folder (as a run in progress does): the command is refused in one line and
    writes nothing there."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from danet_edge.core.runfolder import run_lock\n"
        f"with run_lock({str(out)!r}, 'train'):\n print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = _cli([a.format(out=out, **ws) for a in argv], capsys)
        _one_line(code, err, 2, f"another run is writing there (pid {holder.pid}, danet-edge train")
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]
    finally:
        holder.kill()
        holder.wait()


def test_export_removes_what_a_killed_export_left(ws, tmp_path):
    """``kill -9`` during the write of a graph leaves ``.model.onnx.<random>.tmp``; the next export into the folder
    (which holds it, so no live run is writing there) removes it; other hidden files stay."""
    from danet_edge.export.export import ExportConfig, export_model

    out = tmp_path / "e"
    out.mkdir()
    stale = [out / ".model.onnx.k9xq2a.tmp", out / ".model.onnx.json.a1b2c3.tmp"]
    for f in stale:
        f.write_bytes(b"half a graph")
    (out / ".keep.tmp").write_text("not ours")
    export_model(ws["ckpt"], ExportConfig(out=str(out), reference_images=0, fused_io=False))
    assert not any(f.exists() for f in stale) and (out / ".keep.tmp").exists()


# --------------------------------------------------------------- 4. ORT's inferred model stays out of --out
def test_interrupted_calibration_leaves_no_inferred_graph(ws, tmp_path, monkeypatch):
    """ONNX Runtime writes ``<input>-inferred.onnx`` beside the graph it quantizes; a Ctrl-C before it removes
    it used to leave one in ``--out``. Here the stand-in writes that file, then is interrupted."""
    import onnxruntime.quantization as ortq

    from danet_edge.core.errors import Interrupted
    from danet_edge.export.export import ExportConfig, export_model

    def interrupted(model_input, *a, **k):
        Path(model_input).with_name(Path(model_input).stem + "-inferred.onnx").write_bytes(b"x")
        raise KeyboardInterrupt

    monkeypatch.setattr(ortq, "quantize_static", interrupted)
    out = tmp_path / "e"
    with pytest.raises(Interrupted):
        export_model(ws["ckpt"], ExportConfig(recipes=("int8-cpu",), calib=str(ws["calib"]), out=str(out),
                                              reference_images=0))
    assert [p.name for p in out.iterdir() if "inferred" in p.name or p.name.endswith(".tmp")] == []


# ------------------------------------------------------------------ 5. calibration caches and the floor
def _poison(ranges: Path, record: Path | None = None) -> None:
    data = json.loads(ranges.read_text())
    for entry in data["data"].values():
        entry["lowest"], entry["highest"] = -1e30, 1e30
    ranges.write_text(json.dumps(data))
    if record is not None:  # a consistent poison: the record's hash made to match
        r = json.loads(record.read_text())
        r["ranges_sha256"] = hashlib.sha256(ranges.read_bytes()).hexdigest()
        record.write_text(json.dumps(r))


@pytest.fixture(scope="module")
def int8_run(ws, tmp_path_factory):
    from danet_edge.export.export import ExportConfig

    out = tmp_path_factory.mktemp("int8") / "e"
    cfg = ExportConfig(recipes=("int8-cpu",), calib=str(ws["calib"]), out=str(out), reference_images=0,
                       fused_io=False)
    from danet_edge.export.export import export_model

    export_model(ws["ckpt"], cfg)
    return out, cfg


@pytest.mark.parametrize("consistent", [False, True], ids=["ranges_changed", "record_changed_too"])
def test_poisoned_ranges_cache_is_not_used(ws, int8_run, tmp_path, consistent):
    from danet_edge.export.export import export_model

    src, cfg = int8_run
    out = tmp_path / "e"
    shutil.copytree(src, out)
    ranges = next(out.glob("calib_*.ranges.json"))
    record = ranges.with_name(ranges.name.replace(".ranges.json", ".json"))
    _poison(ranges, record if consistent else None)
    lines: list[str] = []
    from dataclasses import replace

    result = export_model(ws["ckpt"], replace(cfg, out=str(out)), log=lines.append)
    why = "range -1e+30..1e+30" if consistent else "SHA-256 is not the one its record holds"
    assert any("not used" in line and why in line and "calibrated again" in line for line in lines), lines
    int8 = next(a for a in result.artifacts if a.manifest.precision == "int8")
    ref = json.loads((src / "model_int8_cpu.onnx.json").read_text())["extra"]["verification"]
    assert int8.verification["label_agreement_vs_fp32"] == pytest.approx(ref["label_agreement_vs_fp32"])
    assert ranges.read_bytes() != b"" and "1e+30" not in ranges.read_text()


def test_agreement_floor_refuses_a_broken_int8_graph(ws, int8_run, tmp_path, monkeypatch, capsys):
    """With the cache check bypassed, the poisoned ranges reach the graph: export's own verification now
    refuses it (the INT8 recipes had no floor) and the graph is not left behind."""
    import danet_edge.export.quantize as quantize

    src, _ = int8_run
    out = tmp_path / "e"
    shutil.copytree(src, out)
    ranges = next(out.glob("calib_*.ranges.json"))
    _poison(ranges, ranges.with_name(ranges.name.replace(".ranges.json", ".json")))
    monkeypatch.setattr(quantize, "ranges_cache_problem", lambda *a: None)
    before = {n: (out / n).read_bytes() for n in ("model_int8_cpu.onnx", "model_int8_cpu.onnx.json")}
    code, err = _cli(["export", ws["ckpt"], "--recipe", "int8-cpu", "--calib", ws["calib"], "-o", out, "--calib-size", "6",
                      "--reference-images", "0", "--logits"], capsys)
    _one_line(code, err, 5, "int8-cpu graph differs from FP32 by relative L2")
    assert "(limit 10)" in err[0] and "not kept" in err[0]
    # the broken graph is gone, the good one exported before is back, byte for byte
    assert {n: (out / n).read_bytes() for n in before} == before
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


def test_every_recipe_has_an_agreement_floor_and_an_error_ceiling():
    from danet_edge.export.export import _verification_problem
    from danet_edge.export.plan import ExportPlan
    from danet_edge.export.recipes import RECIPES

    assert RECIPES and all(0 < r.min_label_kappa < 1 and 0 < r.max_rel_l2 <= 10 for r in RECIPES.values())
    plan = ExportPlan.__new__(ExportPlan)
    plan.cfg = type("Cfg", (), {"fp16_tolerance": None})()
    int8 = RECIPES["int8-cpu"]
    ok = {"rel_l2_vs_fp32": 0.7, "label_agreement_vs_fp32": 0.54, "label_kappa_vs_fp32": 0.31}  # poor, honest
    assert _verification_problem(plan, int8, ok) is None
    broken = {"rel_l2_vs_fp32": 0.9, "label_agreement_vs_fp32": 0.955, "label_kappa_vs_fp32": 0.004}
    assert "95.500% of the verification pixels, kappa 0.004 (floor 0.1" in _verification_problem(plan, int8, broken)
    degenerate = {"rel_l2_vs_fp32": 0.05, "label_agreement_vs_fp32": 0.99984, "label_kappa_vs_fp32": 0.0}
    assert _verification_problem(plan, int8, degenerate) is None  # FP32's maps are one class: kappa says nothing
    assert "relative L2 2.6e+30 (limit 10)" in \
        _verification_problem(plan, int8, {**ok, "rel_l2_vs_fp32": 2.6e30})


def test_kappa_is_zero_for_one_class_everywhere_and_one_for_equal_maps():
    """Cohen's kappa of class maps: a map of the majority class agrees on its share of pixels (here 90 %) and
    still scores 0; equal maps score 1."""
    from danet_edge.core.compare import OutputComparison, chance_agreement, cohen_kappa

    ref = np.zeros((1, 10, 10), np.int64)
    ref[0, 0] = 3  # 10 % of the pixels are class 3
    c = OutputComparison()
    c.update(np.zeros_like(ref), ref)
    assert c.agreement == pytest.approx(0.9) and chance_agreement(np.zeros_like(ref), ref) == pytest.approx(0.9)
    assert cohen_kappa(np.zeros_like(ref), ref) == pytest.approx(0.0)
    both = np.concatenate([ref, ref])
    assert cohen_kappa(both, both) == pytest.approx(1.0)


# ------------------------------------------------------------------------- 6. one line, the right code
USAGE = [
    ("unknown_command", ["bogus"], "No such command 'bogus'"),
    ("unknown_option", ["train", "--bogus"], "No such option: --bogus"),
    ("missing_argument", ["export"], "Missing argument"),
    ("bad_recipe", ["export", "x.pt", "--recipe", "int9"], "'int9' is not one of"),
    ("bad_calib_method", ["export", "x.pt", "--int8", "--calib-method", "median"], "'median' is not one of"),
    ("imgsz_one_number", ["export", "x.pt", "--imgsz", "3"], "requires 2 arguments"),
    ("verbose_and_quiet", ["-v", "cost", "x.onnx"], "-v and -q contradict each other"),
]


@pytest.mark.parametrize("argv,phrase", [c[1:] for c in USAGE], ids=[c[0] for c in USAGE])
def test_usage_errors_are_one_error_line(capsys, argv, phrase):
    code, err = _cli(argv, capsys)
    _one_line(code, err, 2, phrase)


def test_no_arguments_prints_the_help(capsys):
    code, out, err = run_cli([], capsys)
    assert code == 0 and "Usage: " in out and "Commands" in out and err == []


def _dynamic_batch_graph(src: Path, dst: Path) -> Path:
    model = onnx.load(str(src))
    for v in (*model.graph.input, *model.graph.output):
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.save(model, str(dst))
    return dst


def test_cost_refuses_what_it_cannot_cost(ws, tmp_path, capsys):
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("empty.onnx", "empty.pt"):
        code, err = _cli(["cost", tmp_path / name], capsys)
        _one_line(code, err, 3, f"{name}: empty file (0 bytes)")
    dyn = _dynamic_batch_graph(ws["onnx"], tmp_path / "dyn.onnx")
    code, err = _cli(["cost", dyn], capsys)
    _one_line(code, err, 3, "has a dynamic or unknown dimension")
    (tmp_path / "nodes.onnx").write_bytes(onnx.ModelProto().SerializeToString() + b"\x08\x07")
    code, err = _cli(["cost", tmp_path / "nodes.onnx"], capsys)
    _one_line(code, err, 3, "nodes.onnx: not")


def test_engine_sidecar_without_its_pair_record_is_refused(ws, tmp_path, capsys):
    folder = tmp_path / "eng"
    folder.mkdir()
    engine = folder / "model.engine"
    engine.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    m = json.loads(Path(str(ws["onnx"]) + ".json").read_text())
    m.update(kind="engine", tensorrt={"version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"})
    Path(str(engine) + ".json").write_text(json.dumps(m))
    for argv in (["deploy", engine, "--triton", tmp_path / "repo"], ["infer", engine, ws["clip"], "-o", tmp_path / "i"]):
        code, err = _cli(argv, capsys)
        _one_line(code, err, 3, "records no engine size and SHA-256")
    assert not (tmp_path / "repo").exists() and not (tmp_path / "i").exists()


def test_external_data_outside_the_folder_is_one_line(ws, tmp_path, capsys):
    from onnx.external_data_helper import set_external_data

    folder = tmp_path / "g"
    folder.mkdir()
    model = onnx.load(str(ws["onnx"]))
    init = model.graph.initializer[0]
    set_external_data(init, location="../../etc/passwd", offset=0, length=16)
    init.data_location = onnx.TensorProto.EXTERNAL
    init.ClearField("raw_data")
    onnx.save(model, str(folder / "model.onnx"))
    shutil.copy(str(ws["onnx"]) + ".json", folder / "model.onnx.json")
    code, err = _cli(["deploy", folder / "model.onnx", "--triton", tmp_path / "repo"], capsys)
    _one_line(code, err, 3, "'../../etc/passwd' points outside")
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("argv,phrase", [
    (["import-official", "{ckpt}", "--imgsz", "0", "0", "-o", "{tmp}/o.pt"], "--imgsz must be two sizes H W"),
    (["infer", "{onnx}", "{clip}", "--backend", "torch", "-o", "{tmp}/i"], "the torch backend cannot run a .onnx"),
], ids=["import_official_imgsz_0", "infer_torch_backend_on_graph"])
def test_option_mistakes_exit_2(ws, tmp_path, capsys, argv, phrase):
    code, err = _cli([a.format(tmp=tmp_path, **ws) for a in argv], capsys)
    _one_line(code, err, 2, phrase)
    assert list(tmp_path.iterdir()) == []


def test_ranges_cache_of_an_older_record_is_recalibrated(ws, int8_run, tmp_path):
    """A record written before ``ranges_sha256`` existed: its cache is not trusted (said so), calibrated again."""
    from dataclasses import replace

    from danet_edge.export.export import export_model

    src, cfg = int8_run
    out = tmp_path / "e"
    shutil.copytree(src, out)
    record = next(p for p in out.glob("calib_*.json") if not p.name.endswith(".ranges.json"))
    old = json.loads(record.read_text())
    del old["ranges_sha256"]
    record.write_text(json.dumps(old))
    lines: list[str] = []
    export_model(ws["ckpt"], replace(cfg, out=str(out)), log=lines.append)
    assert any("record holds no SHA-256 of it (written by an older danet-edge): calibrated again" in line
               for line in lines), lines
    assert "ranges_sha256" in json.loads(record.read_text())


def test_tensorrt_calibration_cache_is_checked_before_use():
    """The implicit-INT8 cache TensorRT 10 reads back: tampered, poisoned or malformed bytes are refused (the
    calibrator then returns None and TensorRT calibrates again)."""
    import struct

    from danet_edge.trt.calibrator import calibration_cache_problem

    def cache(*scales: float) -> bytes:
        lines = ["TRT-100300-EntropyCalibration2"] + [f"t{i}: {struct.pack('>f', s).hex()}" for i, s in enumerate(scales)]
        return ("\n".join(lines) + "\n").encode()

    good = cache(0.0123, 0.5)
    assert calibration_cache_problem(good) is None
    assert calibration_cache_problem(good, {"cache_sha256": hashlib.sha256(good).hexdigest()}) is None
    assert "SHA-256" in calibration_cache_problem(good, {"cache_sha256": "0" * 64})
    assert "beyond" in calibration_cache_problem(cache(0.01, 1e30 / 127))
    assert "not finite" in calibration_cache_problem(cache(float("nan")))
    assert "not positive" in calibration_cache_problem(cache(0.0))
    assert "header" in calibration_cache_problem(b"TRT-100300-MinMaxCalibration\nt: 3c000000\n")
    assert "is not '<tensor>: <hex float32>'" in calibration_cache_problem(b"TRT-1-EntropyCalibration2\nt: zz\n")


def test_reference_bundle_with_non_finite_logits_is_refused(ws, tmp_path):
    from danet_edge.core.errors import DataError
    from danet_edge.core.manifest import read_manifest
    from danet_edge.export.reference import load_bundle, write_bundle

    m = read_manifest(ws["onnx"])
    h, w = m.input_shape[2:]
    logits = np.zeros((1, m.num_classes, h, w), np.float32)
    folder = write_bundle(tmp_path / "ref", m, list(random_frames(1, h, w)), None, np.zeros((1, h, w), np.uint8),
                          logits, "synthetic", {}, None)
    assert len(load_bundle(folder).images) == 1
    logits[0, 0, 0, 0] = np.inf
    folder = write_bundle(tmp_path / "bad", m, list(random_frames(1, h, w)), None, np.zeros((1, h, w), np.uint8),
                          logits, "synthetic", {}, None)
    with pytest.raises(DataError, match="reference_logits hold inf or NaN"):
        load_bundle(folder)


def test_sigterm_stops_infer_like_ctrl_c_and_the_video_plays(ws, tmp_path):
    """``kill`` (SIGTERM) used to end the process at once: the overlay video had no index. Now it is Ctrl-C:
    the video is closed, playable, and the one line says what was kept (exit 130)."""
    import signal

    clip = write_video(tmp_path / "long.mp4", random_frames(1500, 64, 96), fps=10.0)
    out = tmp_path / "i"
    proc = subprocess.Popen([sys.executable, "-m", "danet_edge.cli", "-q", "infer", str(ws["onnx"]), str(clip),
                             "-o", str(out)], stderr=subprocess.PIPE, text=True)
    partial = out / ".long_overlay.partial.mp4"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (partial.exists() and partial.stat().st_size > 0):
        time.sleep(0.05)
    assert proc.poll() is None, "infer ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 130, err
    assert len(lines) == 1 and lines[0].startswith("interrupted after ") and "playable" in lines[0], err
    frames = json.loads((out / "summary.json").read_text())["frames"]
    assert 0 < frames < 1500 and _decoded_frames(out / "long_overlay.mp4") == frames


# ------------------------------------------------- issue 32: a ranges cache that does not fit is calibrated again
def _edit_cache(ranges: Path, edit) -> None:
    """Change the cache with ``edit(data)`` and forge its record's SHA-256 to match (a careless edit, or a cache
    of a slightly different graph, looks like this)."""
    data = json.loads(ranges.read_text())
    edit(data)
    ranges.write_text(json.dumps(data))
    record = ranges.with_name(ranges.name.replace(".ranges.json", ".json"))
    r = json.loads(record.read_text())
    r["ranges_sha256"] = hashlib.sha256(ranges.read_bytes()).hexdigest()
    record.write_text(json.dumps(r))


def _drop_layer3(data) -> None:
    del data["data"][next(k for k in data["data"] if "layer3" in k)]


def _add_graph_tensor(data) -> None:  # a tensor of the graph that calibration does not measure (PAM's softmax)
    data["data"]["/head/sa/Softmax_output_0"] = {"lowest": 0.0, "highest": 1.0}


def _other_method(data) -> None:
    data["calibration_method"] = {"CLS": "CalibrationMethod", "value": "CalibrationMethod.MinMax"}


@pytest.mark.parametrize("edit,why", [
    (_drop_layer3, "no range for tensor '/backbone/layer3/"),
    (_add_graph_tensor, "is not one calibration measures in this graph"),
    (_other_method, "made by calibration method 'CalibrationMethod.MinMax', not entropy"),
], ids=["tensor_missing", "tensor_extra", "other_method"])
def test_ranges_cache_that_does_not_fit_the_graph_is_calibrated_again(ws, int8_run, tmp_path, edit, why):
    """Issue 32, case 5: a cache missing one tensor (its record's hash forged) reached ONNX Runtime, and every
    later ``export --int8`` stopped with "Quantization parameters are not specified for param ...", naming no
    cache. Now the cache must hold exactly the tensors calibration measures, by the method asked."""
    from dataclasses import replace

    from danet_edge.export.export import export_model

    src, cfg = int8_run
    out = tmp_path / "e"
    shutil.copytree(src, out)
    ranges = next(out.glob("calib_*.ranges.json"))
    _edit_cache(ranges, edit)
    lines: list[str] = []
    result = export_model(ws["ckpt"], replace(cfg, out=str(out)), log=lines.append)
    assert any(f"calibration cache {ranges.name} not used, " in line and why in line and "calibrated again" in line
               for line in lines), lines
    int8 = next(a for a in result.artifacts if a.manifest.precision == "int8")
    ref = json.loads((src / "model_int8_cpu.onnx.json").read_text())["extra"]["verification"]
    assert int8.verification["label_agreement_vs_fp32"] == pytest.approx(ref["label_agreement_vs_fp32"])
    assert json.loads(ranges.read_text())["data"].keys() == json.loads(
        next(src.glob("calib_*.ranges.json")).read_text())["data"].keys()  # the cache written again, whole


def test_ranges_cache_name_taken_by_a_folder_is_refused_before_work(ws, tmp_path, capsys):
    """Case 6: calibration ran, then the cache's rename hit the folder: an IsADirectoryError traceback, exit 1."""
    out = tmp_path / "e"
    (out / "calib_0123456789abcdef_entropy_res.ranges.json").mkdir(parents=True)
    code, err = _cli(["export", ws["ckpt"], "--int8", "--calib", ws["calib"], "-o", out], capsys)
    _one_line(code, err, 2, "calib_0123456789abcdef_entropy_res.ranges.json would be written there, but it is a folder")
    assert [p.name for p in out.iterdir()] == ["calib_0123456789abcdef_entropy_res.ranges.json"]
