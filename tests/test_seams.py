"""Issue 11: the shared seams, and the defects the drift between copies caused (each failed before)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from _runtime_helpers import export_tiny, random_frames


def test_one_image_suffix_list_for_every_stage():
    """Four lists had drifted (data, calib, engine, sources): a .webp calibration image was skipped by
    build and a .tif frame folder read by infer but not by the data sets."""
    from danet_edge.data import calib, frames
    from danet_edge.data import datasets as data
    from danet_edge.infer import sources

    assert calib.IMAGE_SUFFIXES is frames.IMAGE_SUFFIXES
    assert sources.IMAGE_SUFFIXES is frames.IMAGE_SUFFIXES
    assert data.IMAGE_EXTENSIONS is frames.IMAGE_SUFFIXES
    assert data.read_image is frames.read_image


def test_static_batches_pad_and_count():
    from danet_edge.core.errors import DataError
    from danet_edge.data.frames import static_batches

    fr = random_frames(5, 8, 12)
    out = list(static_batches(fr, 2))
    assert [n for _, n in out] == [2, 2, 1] and all(a.shape == (2, 8, 12, 3) for a, _ in out)
    assert np.array_equal(out[-1][0][1], fr[4])  # padded with the last real frame
    with pytest.raises(DataError):
        list(static_batches([fr[0], fr[0][:4]], 2))


def test_fp16_graph_checked_as_exported(tmp_path, tiny_checkpoint):
    """export verifies FP16 with ONNX Runtime's graph optimisation off (it fuses Casts and hides FP16
    overflow); check ran the same graph with optimisation on. Both now open it the same way."""
    import onnxruntime as ort

    from danet_edge.export.fp16 import convert_fp16
    from danet_edge.export.export import ExportConfig, export_model
    from danet_edge.runtime.backends import open_backend

    res = export_model(tiny_checkpoint, ExportConfig(fp16=True, out=tmp_path))
    fp16 = next(a.path for a in res.artifacts if a.manifest.precision == "fp16")
    fp32 = next(a.path for a in res.artifacts if a.manifest.precision == "fp32")
    with open_backend(fp16) as b16, open_backend(fp32) as b32:
        assert b16.session_options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        assert b32.session_options.graph_optimization_level != ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def test_bench_times_the_checkpoint_at_the_artifacts_size(tmp_path, tiny_checkpoint):
    """A .pt beside artifacts was timed at the checkpoint's own size unless --reference was given."""
    from danet_edge.bench.config import BenchConfig
    from danet_edge.bench.run import bench_artifacts
    from danet_edge.export.export import ExportConfig, export_model

    res = export_model(tiny_checkpoint, ExportConfig(imgsz=(32, 48), out=tmp_path))
    report = bench_artifacts([res.artifacts[0].path, tiny_checkpoint], BenchConfig(runs=1, warmup=0, warmup_s=0.0, duration_s=0.0))
    sizes = {Path(e.path).suffix: e.image_size for e in report.entries if not e.skipped}
    assert sizes[".pt"] == sizes[".onnx"] == [32, 48]


def test_bench_restores_torch_threads(tmp_path, tiny_checkpoint):
    import torch

    from danet_edge.bench.config import BenchConfig
    from danet_edge.bench.run import bench_artifacts

    before = torch.get_num_threads()
    bench_artifacts([tiny_checkpoint], BenchConfig(runs=1, warmup=0, warmup_s=0.0, duration_s=0.0, threads=1 if before != 1 else 2))
    assert torch.get_num_threads() == before


def test_calibration_leaves_logging_and_stdout_alone(tmp_path, tiny_checkpoint, monkeypatch):
    """quantize_int8 lowered the root logger to ERROR and redirected sys.stdout while it ran, hiding
    every other library's warnings meanwhile."""
    import cv2
    import onnxruntime.quantization as ortq

    from danet_edge.data.calib import load_calibration_set
    from danet_edge.export.quantize import quantize_int8

    src = export_tiny(tiny_checkpoint, tmp_path / "m.onnx")
    (tmp_path / "calib").mkdir()
    for i, f in enumerate(random_frames(2, 64, 96)):
        cv2.imwrite(str(tmp_path / "calib" / f"{i}.png"), f)
    seen = []
    real = ortq.quantize_static

    def probe(*a, **k):  # what the rest of the process sees while calibration runs
        seen.append((logging.getLogger().level, sys.stdout))
        logging.getLogger("other.library").warning("a warning from elsewhere")
        return real(*a, **k)

    monkeypatch.setattr(ortq, "quantize_static", probe)
    root = logging.getLogger()
    records = []

    class Spy(logging.Handler):
        def emit(self, record):
            records.append(record.name)

    spy = Spy(level=logging.DEBUG)
    root.addHandler(spy)
    level, stdout = root.level, sys.stdout
    try:
        quantize_int8(src, load_calibration_set(tmp_path / "calib"), tmp_path / "q.onnx", "tensorrt", "minmax")
    finally:
        root.removeHandler(spy)
    assert seen == [(level, stdout)] and root.level == level and sys.stdout is stdout
    assert "other.library" in records


def test_library_raises_only_its_own_errors():
    from danet_edge.core.errors import ConfigError, DataError
    from danet_edge.core.metrics import ConfusionMatrix
    from danet_edge.model.config import ModelConfig
    from danet_edge.model.danet import build_model

    with pytest.raises(ConfigError, match="unknown backbone"):
        build_model(ModelConfig(backbone="resnet7", num_classes=3))
    with pytest.raises(ConfigError):
        ConfusionMatrix(0)
    cm = ConfusionMatrix(3)
    with pytest.raises(DataError, match="target values"):
        cm.update(np.zeros((2, 2), np.int64), np.full((2, 2), 7, np.int64))


# ---------------------------------------------------------------- one file + one row per extension

def test_a_new_backbone_is_one_class_and_one_row():
    import torch
    from torch import nn

    from danet_edge.model.config import ModelConfig
    from danet_edge.model.danet import build_model
    from danet_edge.model.backbone import BACKBONE_REGISTRY, register_backbone

    class Toy(nn.Module):  # the encoder contract: (N, 3, H, W) -> (c3, c4) at H/OS, W/OS
        def __init__(self, output_stride=8, multi_grid=False, deep_stem=False):
            super().__init__()
            self.output_stride, self.c3_channels, self.out_channels = output_stride, 16, 32
            self.c3 = nn.Conv2d(3, 16, 3, output_stride, 1)
            self.c4 = nn.Conv2d(16, 32, 3, 1, 1)

        def forward(self, x):
            c3 = self.c3(x)
            return c3, self.c4(c3)

    register_backbone("toy", Toy)
    try:
        model = build_model(ModelConfig(backbone="toy", num_classes=3)).eval()
        with torch.no_grad():
            assert model(torch.zeros(1, 3, 64, 96)).shape == (1, 3, 64, 96)
    finally:
        del BACKBONE_REGISTRY["toy"]


def test_a_new_precision_recipe_is_one_function_and_one_row(tmp_path):
    import shutil

    from _runtime_helpers import make_tiny_checkpoint

    from danet_edge.check.config import CheckConfig
    from danet_edge.check.run import check_artifacts
    from danet_edge.check.thresholds import parse_threshold_overrides
    from danet_edge.data.datasets import build_dataset
    from danet_edge.export.export import ExportConfig, export_model
    from danet_edge.export.recipes import RECIPES, PrecisionRecipe, RecipeOutput, register_recipe

    def copy_graph(inp):  # a stand-in conversion: the FP32 graph itself
        shutil.copyfile(inp.fp32_path, inp.out)
        return RecipeOutput(inp.out, {}, ("copied",))

    register_recipe(PrecisionRecipe("fp32-copy", "fp32", "model_copy.onnx", copy_graph, max_rel_l2=1e-6,
                                    thresholds={"min_agreement": 99.99, "max_miou_drop": 0.0}))
    ckpt = make_tiny_checkpoint(tmp_path / "c8.pt", num_classes=8)  # the synthetic data set's 8 classes
    try:
        res = export_model(ckpt, ExportConfig(recipes=("fp32-copy",), out=tmp_path))
        (copy,) = [a for a in res.artifacts if a.path.name == "model_copy.onnx"]
        assert copy.manifest.extra["recipe"] == "fp32-copy" and copy.verification["rel_l2_vs_fp32"] == 0.0
        ds = build_dataset("synthetic", None, "val", limit=2, size=(64, 96))
        report = check_artifacts([copy.path], ckpt, ds, CheckConfig())
        assert report.artifacts[0].thresholds == {"min_agreement": 99.99, "max_miou_drop": 0.0}
        # limits given on the command line for another precision leave the recipe's own in force
        overrides = parse_threshold_overrides(["int8=97"], [])
        report = check_artifacts([copy.path], ckpt, ds, CheckConfig(thresholds=overrides))
        assert report.artifacts[0].thresholds == {"min_agreement": 99.99, "max_miou_drop": 0.0}
    finally:
        del RECIPES["fp32-copy"]


def test_a_new_backend_is_one_class_and_one_row(tmp_path, tiny_checkpoint):
    import shutil

    from danet_edge.core.errors import ConfigError
    from danet_edge.runtime.backends import BACKEND_TABLE, BackendSpec, open_backend, register_backend, segment_frames
    from danet_edge.runtime.ort_backend import OnnxRuntimeBackend

    class Renamed(OnnxRuntimeBackend):  # e.g. a vendor runtime reading the same graph under its own suffix
        name = "toy"

    src = export_tiny(tiny_checkpoint, tmp_path / "m.onnx")
    shutil.copyfile(src, tmp_path / "m.toy")
    shutil.copyfile(tmp_path / "m.onnx.json", tmp_path / "m.toy.json")
    register_backend(BackendSpec("toy", (".toy",), Renamed, ("threads",)))
    try:
        frames = list(random_frames(2, 64, 96))
        with open_backend(tmp_path / "m.toy", threads=1) as b, open_backend(src) as o:
            assert b.name == "toy"
            assert all(np.array_equal(x, y) for x, y in zip(segment_frames(b, frames), segment_frames(o, frames)))
        with pytest.raises(ConfigError, match="providers applies to the onnxruntime / onnxruntime-fused-attention backend only, not toy"):
            open_backend(tmp_path / "m.toy", providers=["cpu"])
    finally:
        del BACKEND_TABLE["toy"]


# ---------------------------------------------------------------- one vocabulary on the command line

def _cli(*args: str):
    import subprocess

    return subprocess.run([sys.executable, "-m", "danet_edge.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_version_quiet_output_and_exit_codes(tmp_path):
    from danet_edge import __version__

    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"danet-edge {__version__}"
    r = _cli("infer", str(tmp_path / "missing.onnx"), "clip.mp4", "-q")  # -q after the command
    assert r.returncode == 3 and r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    r = _cli("export", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "out"))
    assert r.returncode == 3 and "does not exist" in r.stderr and not (tmp_path / "out").exists()
    r = _cli("build", str(tmp_path / "m.onnx"), "--workspace-mib", "0")
    assert r.returncode == 2 and "workspace (MiB) must be in" in r.stderr  # options are checked before files
    r = _cli("build", str(tmp_path / "m.onnx"))
    assert r.returncode == 3  # then the missing file: bad input
    r = _cli("bench", "--frobnicate")
    assert r.returncode == 2  # usage
    r = _cli("-v", "-q", "version")
    assert r.returncode == 2 and "contradict" in (r.stderr + r.stdout)


@pytest.mark.parametrize("command", ["train", "export", "build", "infer", "check", "bench", "demo", "calib fill"])
def test_every_command_takes_o_for_its_output(command):
    r = _cli(*command.split(), "--help")
    assert r.returncode == 0 and "-o, --" in r.stdout


def test_closed_sets_have_one_home_and_fail_at_the_boundary():
    from danet_edge.core import choices
    from danet_edge.data import calib
    from danet_edge.data import datasets as data
    from danet_edge.core.errors import ManifestError
    from danet_edge.core.manifest import Manifest, Precision

    assert data.DATASET_NAMES == choices.DATASETS and calib.CALIB_METHODS is choices.CALIB_METHODS
    m = Manifest(kind="onnx", precision="fp16", model={}, classes=["a"], palette=[[0, 0, 0]], mean=[0, 0, 0],
                 std=[1, 1, 1])
    assert m.precision is Precision.FP16 and m.precision == "fp16" and f"{m.precision}" == "fp16"
    with pytest.raises(ManifestError, match="precision 'fp8' is not one of fp32, fp16, int8"):
        Manifest.from_dict({**m.to_dict(), "precision": "fp8"})
    r = _cli("export", "x.pt", "--target", "gpu")
    assert r.returncode == 2 and "tensorrt" in r.stderr and "cpu" in r.stderr


def test_long_steps_report_progress(tmp_path, tiny_checkpoint, monkeypatch):
    """infer advances its bar once per frame (the bar itself is drawn only on a terminal)."""
    import contextlib

    import cv2

    import danet_edge.infer.pipeline as pipeline_mod
    from danet_edge.infer.config import InferConfig
    from danet_edge.infer.pipeline import run_inference

    seen = {"total": None, "advanced": 0}

    @contextlib.contextmanager
    def recorder(description, total=None):
        seen["total"] = total

        def advance(n=1):
            seen["advanced"] += n
        yield advance

    monkeypatch.setattr(pipeline_mod, "task", recorder)
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for i, f in enumerate(random_frames(3, 64, 96)):
        cv2.imwrite(str(frames_dir / f"{i}.png"), f)
    src = export_tiny(tiny_checkpoint, tmp_path / "m.onnx")
    summary = run_inference(src, str(frames_dir), InferConfig(out_dir=tmp_path / "out", save_video=False))
    assert summary.frames == seen["advanced"] == seen["total"] == 3


# ---------------------------------------------------------------- one config style, defaults in one place

def _stage_configs():
    from danet_edge.bench.config import BenchConfig
    from danet_edge.check.config import CheckConfig
    from danet_edge.export.config import ExportConfig
    from danet_edge.model.config import ModelConfig
    from danet_edge.train.config import TrainConfig
    from danet_edge.demo import DemoConfig
    from danet_edge.trt.plan import EngineConfig
    from danet_edge.infer.config import InferConfig

    return {ModelConfig: {"output_stride": 32}, TrainConfig: {"epochs": 0}, ExportConfig: {"batch": 0},
            CheckConfig: {"pictures": -1}, BenchConfig: {"runs": 0}, DemoConfig: {"epochs": 0},
            EngineConfig: {"opt_level": 7}, InferConfig: {"alpha": 2.0}}


def test_every_stage_config_validates_the_same_way():
    """Construction, dataclasses.replace and validate() all refuse a bad value with ConfigError."""
    import dataclasses

    from danet_edge.core.config import Config
    from danet_edge.core.errors import ConfigError

    for cls, bad in _stage_configs().items():
        assert issubclass(cls, Config) and "__post_init__" not in cls.__dict__, cls  # one style: validate()
        good = cls()
        with pytest.raises(ConfigError):
            cls(**bad)
        with pytest.raises(ConfigError):
            dataclasses.replace(good, **bad)
        if not cls.__dataclass_params__.frozen:
            (field, value), = bad.items()
            setattr(good, field, value)
            with pytest.raises(ConfigError):
                good.validate()


def test_cli_defaults_are_the_config_defaults():
    """Every option that names a config field shows that field's default (none restated)."""
    import typer.main

    from danet_edge.cli import app
    from danet_edge.train.config import TrainConfig

    cmds = typer.main.get_command(app).commands
    tc = TrainConfig()
    pairs = {"train": {**vars(tc), **tc.model.to_dict(), "out": tc.out_dir}}
    for name, cls in (("export", "ExportConfig"), ("bench", "BenchConfig"), ("check", "CheckConfig"),
                      ("build", "EngineConfig"), ("infer", "InferConfig"), ("demo", "DemoConfig")):
        cfg = next(c for c in _stage_configs() if c.__name__ == cls)()
        pairs[name] = {**vars(cfg), "out": getattr(cfg, "out_dir", getattr(cfg, "out", None)),
                       "calib_size": getattr(cfg, "calib_images", getattr(cfg, "calib_size", None)),
                       "seed": getattr(cfg, "calib_seed", getattr(cfg, "seed", None))}
    compared = 0
    for name, fields in pairs.items():
        for p in cmds[name].params:
            if p.name in fields and p.default is not None and not callable(p.default):
                want = fields[p.name]
                got = p.default
                if isinstance(want, (tuple, list)) or isinstance(got, (tuple, list)):
                    want, got = list(want or []), list(got or [])
                assert str(got) == str(want), f"{name} --{p.name}: {got!r} vs the config's {want!r}"
                compared += 1
    assert compared >= 40, compared


def test_train_config_nests_the_model_config(tmp_path):
    from danet_edge.model.config import ModelConfig
    from danet_edge.train.config import TrainConfig

    cfg = TrainConfig(model=ModelConfig(backbone="resnet34", output_stride=16))
    back = TrainConfig.from_dict(cfg.to_dict())
    assert back == cfg and back.model.output_stride == 16
    assert cfg.model_config(11) == ModelConfig(backbone="resnet34", output_stride=16, num_classes=11)
    old = {"dataset": "synthetic", "backbone": "resnet50", "aux": True, "epochs": 3}  # 0.1 checkpoints: flat fields
    assert TrainConfig.from_dict(old).model == ModelConfig(backbone="resnet50", aux=True, num_classes=19)


def test_reading_configs_imports_no_torch_or_onnx():
    import subprocess

    code = ("import sys, danet_edge.cli\n"
            "from danet_edge.train.config import TrainConfig\nfrom danet_edge.export.config import ExportConfig\n"
            "from danet_edge.check.config import CheckConfig\nfrom danet_edge.bench.config import BenchConfig\n"
            "from danet_edge.infer.config import InferConfig\nfrom danet_edge.trt.plan import EngineConfig\n"
            "TrainConfig(); ExportConfig(); CheckConfig(); BenchConfig(); InferConfig(); EngineConfig()\n"
            "bad = [m for m in ('torch', 'onnx', 'onnxruntime', 'cv2') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _package_imports(lazy: bool) -> dict[str, set[str]]:
    """danet_edge module -> danet_edge modules it imports (module level only unless ``lazy``)."""
    import ast
    from pathlib import Path

    import danet_edge

    root = Path(danet_edge.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        mod = ".".join(("danet_edge",) + path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        nodes = ast.walk(tree) if lazy else tree.body
        deps = set()
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                target = f"{base}.{node.module}" if node.module else base
                deps.add(target)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("danet_edge"):
                deps.add(node.module)
        graph[mod] = {d for d in deps if d != mod}
    return graph


def test_module_dependencies_have_a_direction():
    """No import cycle between modules at import time; the promised separations hold even for lazy imports."""
    graph = _package_imports(lazy=False)
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path + [m]))
        if state.get(m) == 2 or m not in graph:
            return
        state[m] = 1
        for d in sorted(graph[m]):
            visit(d, path + [m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])
    lazy = _package_imports(lazy=True)
    assert "danet_edge.model.checkpoint" not in lazy["danet_edge.data.datasets"]
    assert not {"danet_edge.runtime.trt_runner", "danet_edge.runtime.trt_backend"} & lazy["danet_edge.trt.build"]
    assert "danet_edge.trt.build" not in lazy["danet_edge.runtime.trt_runner"]
    light = ("danet_edge.core.config", "danet_edge.core.choices", "danet_edge.core.manifest", "danet_edge.export.recipes")
    for m in light:  # what the CLI reads at start-up imports no stage that needs torch
        assert not {"danet_edge.model", "danet_edge.train.train", "danet_edge.export.export", "danet_edge.check.run"} & graph[m], m


def test_eval_calib_import_deploy_demo_options_come_from_their_configs():
    """Default and help of every option of these commands that stands for a config field are the field's own."""
    import typer.main

    from danet_edge.cli import app
    from danet_edge.data.config import CalibFillConfig, DataOptions
    from danet_edge.demo import DemoConfig
    from danet_edge.deploy.deepstream import DeepStreamConfig
    from danet_edge.deploy.triton import TritonConfig
    from danet_edge.model.config import ImportConfig
    from danet_edge.train.config import EvalConfig

    group = typer.main.get_command(app)
    cmds = {**group.commands, "calib fill": group.commands["calib"].commands["fill"]}
    table = {  # command -> {parameter: (config, field)}
        "eval": {**{n: (EvalConfig, n) for n in ("dataset", "split", "multi_scale", "flip", "limit", "multi_grid")},
                 "data": (EvalConfig, "data_root"),
                 **{n: (DataOptions, n) for n in ("num_classes", "ignore_index", "synthetic_size")}},
        "train": {n: (DataOptions, n) for n in ("num_classes", "ignore_index", "synthetic_size")},
        "calib fill": {"data": (CalibFillConfig, "data_root"), "count": (CalibFillConfig, "count"),
                       "out": (CalibFillConfig, "out"), "split": (CalibFillConfig, "split"),
                       "seed": (CalibFillConfig, "seed")},
        "import-official": {"multi_grid": (ImportConfig, "multi_grid"), "output_stride": (ImportConfig, "output_stride"),
                            "dataset": (ImportConfig, "dataset"), "imgsz": (ImportConfig, "image_size")},
        "deploy": {"name": (TritonConfig, "name"), "model_version": (TritonConfig, "version"),
                   "gpu_id": (DeepStreamConfig, "gpu_id"),
                   "segmentation_threshold": (DeepStreamConfig, "segmentation_threshold")},
        "demo": {"out": (DemoConfig, "out")},
    }
    checked = 0
    for command, params in table.items():
        shown = {p.name: p for p in cmds[command].params}
        for param, (cls, field) in params.items():
            p = shown[param]
            want = cls.default(field)
            got = p.default
            if isinstance(want, (tuple, list)) or isinstance(got, (tuple, list)):
                want, got = list(want or []), list(got or [])
            assert str(got if got is not None else None) == str(want), f"{command} --{param}: {got!r} vs {want!r}"
            assert p.help == cls.help(field), f"{command} --{param}: help not the config's"
            checked += 1
    assert checked == 27
