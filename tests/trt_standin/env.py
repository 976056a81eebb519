"""Set-up of the real TensorRT Python bindings on a machine without TensorRT's libraries.

``tensorrt-cu12-bindings`` wheels are small and on the package registry; their ``tensorrt.so`` links
nine C functions of libnvinfer / libnvonnxparser / libnvinfer_plugin (``nm -D --undefined-only``).
:func:`prepare` installs one bindings version into its own folder (two versions cannot share a
site-packages) and compiles a stub library under the sonames that version needs, so that
``import tensorrt_bindings`` works; creating a Builder or Runtime then fails with
``TypeError: pybind11::init(): factory function returned nullptr``, which the stand-in replaces.

Nothing here is imported by the package; only the test driver uses it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["VERSIONS", "TrtSite", "Unavailable", "prepare", "prepare_cuda_bindings", "cache_root"]

# JetPack 6 ships TensorRT 10.3; desktop GPUs and JetPack 7 run 11.x.
VERSIONS = ("10.3.0", "11.4.0.106")
CUDA_BINDINGS = "cuda-python==12.9.4"  # 12.x: JetPack 6's CUDA 12.6 driver; imports without a GPU

STUB_SYMBOLS = """
#include <stddef.h>
void* createInferBuilder_INTERNAL(void* logger, int version) { return NULL; }
void* createInferRuntime_INTERNAL(void* logger, int version) { return NULL; }
void* createInferRefitter_INTERNAL(void* engine, void* logger, int version) { return NULL; }
void* createNvOnnxParser_INTERNAL(void* network, void* logger, int version) { return NULL; }
void* createNvOnnxParserRefitter_INTERNAL(void* refitter, void* logger, int version) { return NULL; }
void* getBuilderPluginRegistry(int capability) { return NULL; }
void* getPluginRegistry(void) { return NULL; }
int getNvOnnxParserVersion(void) { return 0; }
int initLibNvInferPlugins(void* logger, const char* ns) { return 0; }
"""


class Unavailable(Exception):
    """The bindings cannot be set up here (no gcc, no registry): the reason, for a skip."""


@dataclass(frozen=True)
class TrtSite:
    version: str
    site: Path  # holds tensorrt_bindings/
    stub: Path  # holds libnvinfer.so.<major> etc.

    def env(self) -> dict[str, str]:
        """Environment for a subprocess that imports these bindings."""
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(self.stub), env.get("LD_LIBRARY_PATH")]))
        env["DANET_EDGE_TRT_SITE"] = str(self.site)
        env["DANET_EDGE_TRT_SUITE"] = self.version
        return env


def cache_root() -> Path:
    """``$DANET_EDGE_TRT_CACHE`` or ``<repo>/.trt-bindings`` (git-ignored)."""
    default = Path(__file__).resolve().parents[2] / ".trt-bindings"
    return Path(os.environ.get("DANET_EDGE_TRT_CACHE", default))


def _pip_target(spec: str, target: Path, no_deps: bool = True) -> None:
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", str(tmp), spec]
    if no_deps:
        cmd.insert(4, "--no-deps")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        raise Unavailable(f"pip could not install {spec} from the registry: {last}")
    tmp.rename(target)


def prepare(version: str) -> TrtSite:
    """Install ``tensorrt-cu12-bindings==version`` and build its stub library (cached).

    Raises:
        Unavailable: gcc missing, or the wheel cannot be had from the registry.
    """
    root = cache_root() / f"tensorrt-{version}"
    site, stub = root / "site", root / "stub"
    major = version.split(".")[0]
    if not (site / "tensorrt_bindings").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        _pip_target(f"tensorrt-cu12-bindings=={version}", site)
    if not all((stub / f"lib{n}.so.{major}").is_file() for n in ("nvinfer", "nvonnxparser", "nvinfer_plugin")):
        gcc = shutil.which("gcc") or shutil.which("cc")
        if gcc is None:
            raise Unavailable("no C compiler (gcc) to build the TensorRT stub library")
        tmp = root / "stub.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        src = tmp / "stub.c"
        src.write_text(STUB_SYMBOLS)
        for name in ("nvinfer", "nvonnxparser", "nvinfer_plugin"):
            soname = f"lib{name}.so.{major}"
            r = subprocess.run([gcc, "-shared", "-fPIC", "-o", str(tmp / soname), f"-Wl,-soname,{soname}", str(src)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise Unavailable(f"gcc could not build the stub library: {r.stderr.strip()[:200]}")
        shutil.rmtree(stub, ignore_errors=True)
        tmp.rename(stub)
    return TrtSite(version, site, stub)


def prepare_cuda_bindings() -> Path:
    """Install the real cuda-python 12.x (cuda-bindings) into its own folder; returns it (cached).

    Raises:
        Unavailable: the registry has no such wheel here.
    """
    target = cache_root() / "cuda-python-12"
    if not (target / "cuda").is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        _pip_target(CUDA_BINDINGS, target, no_deps=False)
    return target
