"""Names a run makes inside its folder (issue 32): the run lock, temporaries, caches, graphs, reports and folders
are never opened through a link and must be regular files (``core.fixednames``); anything else is one line,
exit 2, and nothing outside the folder is created or changed (``core.runfolder``, ``core.utils``)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from _runtime_helpers import export_tiny, make_tiny_checkpoint, random_frames, run_cli
from danet_edge.core.errors import ConfigError
from danet_edge.core.runfolder import LOCK_NAME, previous_kept, run_lock
from danet_edge.core.utils import append_line, atomic_dir, atomic_path, ensure_output_names

SYNTH = ["--dataset", "synthetic", "--synthetic-size", "64", "96"]
TRAIN = ["train", *SYNTH, "--limit-train", "4", "--limit-val", "2", "-b", "2", "--epochs", "1", "--workers", "0",
         "--no-progress"]
GOOD = b"a file outside the run folder\n"


def _one_line(code: int, err: list[str], want: int, phrase: str) -> None:
    text = "\n".join(err)
    assert "Traceback" not in text, text
    assert code == want, text
    assert len(err) == 1 and err[0].startswith("error: "), text
    assert phrase in err[0], text


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (links not followed): a file's SHA-256, a link's target, a folder's mark."""
    out = {}
    for p in sorted(folder.rglob("*")):
        key = str(p.relative_to(folder))
        if p.is_symlink():
            out[key] = "-> " + os.readlink(p)
        elif p.is_file():
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[key] = "dir"
    return out


def _plant(path: Path, kind: str, outside: Path) -> None:
    """Put ``kind`` at ``path``: a link to a file outside, a dangling link whose target is outside, a folder, a FIFO,
    a hard link of a file outside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "link":
        path.symlink_to(outside / "good.txt")
    elif kind == "dangling":
        path.symlink_to(outside / "made_by_the_run")
    elif kind == "link_to_folder":
        path.symlink_to(outside / "folder", target_is_directory=True)
    elif kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "hardlink":
        os.link(outside / "good.txt", path)


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder beside the run folder, holding a file and a folder a link may point to."""
    o = tmp_path / "outside"
    (o / "folder").mkdir(parents=True)
    (o / "good.txt").write_bytes(GOOD)
    (o / "folder" / "keep.txt").write_bytes(GOOD)
    return o


# ------------------------------------------------------------------------------------------- the run lock
@pytest.mark.parametrize("kind", ["link", "dangling", "folder", "fifo", "hardlink"])
def test_run_lock_never_opens_anything_but_its_own_regular_file(tmp_path, outside, kind):
    """Issue 32, cases 1-3: the lock was opened following links (a file outside overwritten with ``pid N ...``, a
    dangling link's target created) and a folder there was a traceback; a hard link of a file outside was truncated
    and written the same way. Now: one ConfigError line, nothing outside changed or made."""
    run = tmp_path / "run"
    _plant(run / LOCK_NAME, kind, outside)
    before = _snapshot(outside)
    with pytest.raises(ConfigError, match=rf"^--out {run}: {LOCK_NAME} (is a symbolic link|would be written there, "
                                          r"but it is a folder|is a FIFO|has 1 other hard link)"):
        with run_lock(run, "infer"):
            pass
    assert _snapshot(outside) == before and (outside / "good.txt").read_bytes() == GOOD


def test_run_lock_that_cannot_be_written_is_one_line(tmp_path):
    """Case 4: an immutable lock file (``chattr +i``; root ignores permission bits) was a PermissionError
    traceback."""
    run = tmp_path / "run"
    run.mkdir()
    lock = run / LOCK_NAME
    lock.write_text("pid 1, danet-edge train, since 00:00:00\n")
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(lock)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        with pytest.raises(ConfigError, match=rf"{LOCK_NAME} cannot be opened \(Operation not permitted\)"):
            with run_lock(run, "calib fill"):
                pass
    finally:
        subprocess.run(["chattr", "-i", str(lock)], check=True)


# ------------------------------------------------------------------------------- the shared write helpers
@pytest.mark.parametrize("kind,why", [("link", "is a symbolic link"), ("hardlink", "has 1 other hard link")])
def test_append_line_does_not_write_through_a_link(tmp_path, outside, kind, why):
    _plant(tmp_path / "metrics.jsonl", kind, outside)
    with pytest.raises(ConfigError, match=f"metrics.jsonl {why}"):
        append_line(tmp_path / "metrics.jsonl", "{}")
    assert (outside / "good.txt").read_bytes() == GOOD


def test_atomic_dir_refuses_a_link_and_atomic_path_a_folder(tmp_path, outside):
    (tmp_path / "reference").symlink_to(outside / "folder", target_is_directory=True)
    with pytest.raises(ConfigError, match="reference: is a symbolic link"):
        with atomic_dir(tmp_path / "reference") as tmp:
            (tmp / "bundle.json").write_text("{}")
    assert _snapshot(outside / "folder") == {"keep.txt": hashlib.sha256(GOOD).hexdigest()}
    (tmp_path / "cache.json").mkdir()
    with pytest.raises(ConfigError, match="cache.json: would be written there, but it is a folder"):
        with atomic_path(tmp_path / "cache.json") as tmp:
            tmp.write_text("{}")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_atomic_dir_and_previous_kept_use_fresh_names_for_what_they_move_aside(tmp_path):
    """The old folder and the old graph were moved to fixed names (``.reference.old``, ``.model.onnx.prev.tmp``);
    a folder planted there made the rename fail with a traceback after the work was done."""
    ref = tmp_path / "reference"
    ref.mkdir()
    (ref / "old.txt").write_text("old")
    (tmp_path / ".reference.old").mkdir()
    (tmp_path / ".reference.old" / "x").write_text("planted")
    with atomic_dir(ref) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in ref.iterdir()] == ["new.txt"] and (tmp_path / ".reference.old" / "x").exists()
    graph = tmp_path / "model.onnx"
    graph.write_text("old graph")
    (tmp_path / ".model.onnx.prev.tmp").mkdir()
    with pytest.raises(RuntimeError):
        with previous_kept([graph]):
            graph.write_text("a graph that failed verification")
            raise RuntimeError("verification")
    assert graph.read_text() == "old graph"


def test_output_names_refuse_links_and_what_is_not_a_regular_file(tmp_path, outside):
    (tmp_path / "model.onnx").symlink_to(outside / "good.txt")
    with pytest.raises(ConfigError, match=r"^--out .*: model.onnx is a symbolic link"):
        ensure_output_names(tmp_path, "--out", ["model.onnx"])
    (tmp_path / "images").symlink_to(outside / "folder", target_is_directory=True)
    with pytest.raises(ConfigError, match="images is a symbolic link"):
        ensure_output_names(tmp_path, "--out", folders=["images"])
    os.mkfifo(tmp_path / "calib_0123_entropy.json")
    with pytest.raises(ConfigError, match="calib_0123_entropy.json is a FIFO"):
        ensure_output_names(tmp_path, "--out", patterns=["calib_*.json"])


# ------------------------------------------------------------------------------------------ by command
@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, Path]:
    """An 8-class tiny checkpoint, its FP32 graph, an image and a clip."""
    import cv2

    from test_runtime import write_video

    root = tmp_path_factory.mktemp("fixed")
    ckpt = make_tiny_checkpoint(root / "t8.pt", num_classes=8)
    graph = export_tiny(ckpt, root / "exp" / "model.onnx")
    img = root / "img.png"
    cv2.imwrite(str(img), random_frames(1, 64, 96)[0])
    clip = write_video(root / "clip.mp4", random_frames(6, 64, 96), fps=10.0)
    return {"ckpt": ckpt, "onnx": graph, "img": img, "clip": clip}


COMMANDS = {
    "train": [*TRAIN, "-o", "{out}"],
    "export": ["export", "{ckpt}", "-o", "{out}"],
    "infer": ["infer", "{onnx}", "{img}", "-o", "{out}"],
    "calib_fill": ["calib", "fill", "-d", "synthetic", "--count", "2", "-o", "{out}"],
}


@pytest.mark.parametrize("kind", ["link", "dangling", "folder", "fifo", "hardlink"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_refuses_a_planted_lock(ws, tmp_path, outside, capsys, command, kind):
    """The ten cases' lock faults, by every command that holds its folder: exit 2, one line, nothing outside
    the folder made or changed, nothing in it written."""
    out = tmp_path / "out"
    _plant(out / LOCK_NAME, kind, outside)
    before, inside = _snapshot(outside), _snapshot(out)
    code, _, err = run_cli(["-q", *[a.format(out=out, **ws) for a in COMMANDS[command]]], capsys)
    _one_line(code, err, 2, LOCK_NAME)
    assert _snapshot(outside) == before and _snapshot(out) == inside


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_refuses_a_broken_link_as_its_folder(ws, tmp_path, outside, capsys, command):
    """``-o OUT`` where OUT is a link to a folder that does not exist: ``mkdir`` failed on it with a FileExistsError
    traceback (exit 1). Now one line, exit 2, and no folder made at the link's target."""
    out = tmp_path / "out"
    out.symlink_to(outside / "made_by_the_run", target_is_directory=True)
    code, _, err = run_cli(["-q", *[a.format(out=out, **ws) for a in COMMANDS[command]]], capsys)
    _one_line(code, err, 2, f"{out}: is a broken link")
    assert not (outside / "made_by_the_run").exists() and out.is_symlink()


PLANTED = [  # (id, name in the run folder, what is planted, command)
    ("export_graph_link", "model.onnx", "link", ["export", "{ckpt}", "-o", "{out}"]),
    ("export_sidecar_dangling", "model.onnx.json", "dangling", ["export", "{ckpt}", "-o", "{out}"]),
    ("export_reference_link", "reference", "link_to_folder", ["export", "{ckpt}", "-o", "{out}"]),
    ("export_ranges_cache_folder", "calib_0123456789abcdef_entropy_res.ranges.json", "folder",
     ["export", "{ckpt}", "--int8", "--calib", "{calib}", "-o", "{out}"]),
    ("export_ranges_record_link", "calib_0123456789abcdef_entropy_res.json", "link",
     ["export", "{ckpt}", "--int8", "--calib", "{calib}", "-o", "{out}"]),
    ("infer_partial_video_link", ".clip_overlay.partial.mp4", "link", ["infer", "{onnx}", "{clip}", "-o", "{out}"]),
    ("infer_labels_link", "labels", "link_to_folder", ["infer", "{onnx}", "{img}", "--save-labels", "-o", "{out}"]),
    ("infer_summary_fifo", "summary.json", "fifo", ["infer", "{onnx}", "{img}", "-o", "{out}"]),
    ("train_metrics_link", "metrics.jsonl", "link", [*TRAIN, "--exist-ok", "-o", "{out}"]),
    ("calib_images_link", "images", "link_to_folder", ["calib", "fill", "-d", "synthetic", "--count", "2", "-o",
                                                        "{out}"]),
    ("check_report_link", "report.html", "link", ["check", "{onnx}", "-r", "{ckpt}", "--limit", "1", "-o", "{out}"]),
    ("build_sidecar_link", "model.engine.json", "link", ["build", "{onnx}", "-o", "{out}/model.engine"]),
    ("demo_stage_folder_link", "export", "link_to_folder", ["demo", "--out", "{out}"]),
]


@pytest.mark.parametrize("name,kind,argv", [c[1:] for c in PLANTED], ids=[c[0] for c in PLANTED])
def test_fixed_names_are_never_written_through_a_link(ws, tmp_path, outside, capsys, name, kind, argv):
    """Every other name a command writes by a fixed name (graphs, sidecars, caches, temporaries, report files,
    folders): a link, a folder or a FIFO there is refused before any work, in one line, exit 2."""
    out = tmp_path / "out"
    _plant(out / name, kind, outside)
    calib = tmp_path / "calib"
    calib.mkdir()
    shutil.copy(ws["img"], calib / "a.png")
    before, inside = _snapshot(outside), _snapshot(out)
    code, _, err = run_cli(["-q", *[a.format(out=out, calib=calib, **ws) for a in argv]], capsys)
    _one_line(code, err, 2, name)
    assert _snapshot(outside) == before and _snapshot(out) == inside


def test_deploy_refuses_a_model_folder_that_is_a_link(ws, tmp_path, outside, capsys):
    """Triton's ``REPO/<name>`` is a fixed name too: a link there was renamed aside and ``rmtree`` failed on it."""
    repo = tmp_path / "repo"
    _plant(repo / "danet", "link_to_folder", outside)
    before = _snapshot(outside)
    code, _, err = run_cli(["-q", "deploy", ws["onnx"], "--triton", repo, "--name", "danet"], capsys)
    _one_line(code, err, 2, "danet: is a symbolic link")
    assert _snapshot(outside) == before and (repo / "danet").is_symlink()
