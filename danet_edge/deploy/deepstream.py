"""DeepStream: an ``nvinfer`` configuration (semantic segmentation) and labels file for an exported graph.

What Gst-nvinfer can take (DeepStream plugin manual, "Gst-nvinfer",
https://docs.nvidia.com/metropolis/deepstream/dev-guide/text/DS_plugin_gst-nvinfer.html):

* **Input.** nvinfer scales and converts each frame itself and hands TensorRT "final float RGB/BGR/GRAY
  planar data" computed as ``y = net-scale-factor * (x - offsets[c])`` (x the 8-bit pixel). A fused-I/O graph
  (``(N, H, W, 3) uint8`` in) cannot be fed that way: it is refused here (``export --logits`` writes the
  float NCHW graph; Triton, ``triton.py``, takes the fused graph as it is).
* **Normalisation.** ``net-scale-factor`` is ONE number for all channels; ``offsets`` is per channel. The
  graph's ``(x/255 - mean_c) / std_c`` with a per-channel ``std`` therefore cannot be written exactly:
  :func:`single_scale_normalisation` picks the scale that minimises the worst error over the 256 pixel values
  and :func:`normalisation_error` says what it costs. ImageNet mean/std: scale 1/(255 x 0.2264), worst error
  0.0258 and mean 0.0106 in normalised units (about 1.5 grey levels at worst; ``1/(255 mean(std))`` gives 0.0299
  and 0.0099); ``tests/test_deploy.py`` measures the label change this causes on an exported graph.
* **Output.** ``network-type=2`` (segmentation) turns a ``(K, H, W)`` output into a class map: a pixel takes
  the channel with the largest value *only if that value is above -1 and above* ``segmentation-threshold``
  ("If confidence is less than this threshold, class output for that pixel is -1"; in DeepStream's
  ``nvdsinfer_context_impl_output_parsing.cpp`` the running maximum starts at -1). Raw logits are not
  confidences, so the graph written here is the logits graph with a ``Softmax`` over the classes appended
  (:func:`nvinfer_graph`, output ``scores``): argmax is unchanged and every winning score is >= 1/K > 0.
  ``output-tensor-meta=1`` also attaches the raw scores for code that wants them. An engine is taken only when
  ``danet-edge build`` made it from such a ``.deepstream.onnx`` (its manifest records the Softmax tail).

Every key written is in :data:`NVINFER_PROPERTIES`, the ``[property]`` keys of DeepStream's own parser
(``gstnvinfer_property_parser.h``: https://docs.nvidia.com/metropolis/deepstream/dev-guide/sdk-api/gstnvinfer__property__parser_8h.html);
a test holds the writer to that list.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import Config, check_range, option
from .common import is_engine, load_artifact, write_folder
from ..core.errors import ConfigError, ExportError
from ..core.onnx_meta import METADATA_KEY
from ..core.manifest import OutputKind, manifest_json, manifest_path

__all__ = ["DeepStreamConfig", "DeepStreamResult", "write_nvinfer_config", "nvinfer_graph",
           "single_scale_normalisation", "normalisation_error", "nvinfer_input", "NVINFER_PROPERTIES",
           "NVINFER_DOC_URL",
           "NVINFER_PROPERTY_PARSER_URL", "NETWORK_MODE", "CONFIG_NAME", "LABELS_NAME", "parse_nvinfer_config"]

NVINFER_DOC_URL = "https://docs.nvidia.com/metropolis/deepstream/dev-guide/text/DS_plugin_gst-nvinfer.html"
NVINFER_PROPERTY_PARSER_URL = ("https://docs.nvidia.com/metropolis/deepstream/dev-guide/sdk-api/"
                               "gstnvinfer__property__parser_8h.html")

#: The ``[property]`` group keys Gst-nvinfer's config parser knows (DeepStream 6.x / 7.x,
#: ``gstnvinfer_property_parser.h``, NVINFER_PROPERTY_PARSER_URL; described in NVINFER_DOC_URL's table).
NVINFER_PROPERTIES = frozenset({
    # GStreamer element
    "gie-unique-id", "process-mode", "interval", "labelfile-path", "gpu-id", "secondary-reinfer-interval",
    "output-tensor-meta", "enable-dla", "use-dla-core",
    # runtime engine
    "batch-size", "tensor-meta-pool-size", "network-mode", "model-engine-file", "int8-calib-file",
    "workspace-size",
    # generic model
    "output-blob-names", "is-classifier", "network-type", "force-implicit-batch-dim", "infer-dims",
    "output-io-formats", "layer-device-precision",
    # preprocessing
    "model-color-format", "net-scale-factor", "offsets", "mean-file", "maintain-aspect-ratio",
    "symmetric-padding", "scaling-filter", "scaling-compute-hw", "network-input-order", "input-tensor-from-meta",
    # custom implementation
    "custom-lib-path", "parse-bbox-func-name", "parse-bbox-instance-mask-func-name", "engine-create-func-name",
    "parse-classifier-func-name", "custom-network-config",
    # model files
    "model-file", "proto-file", "uff-file", "uff-input-order", "input-dims", "uff-input-dims",
    "uff-input-blob-name", "tlt-encoded-model", "tlt-model-key", "onnx-file",
    # detector / classifier / segmentation
    "num-detected-classes", "enable-dbscan", "cluster-mode", "classifier-type", "classifier-threshold",
    "classifier-async-mode", "segmentation-threshold", "segmentation-output-order", "output-instance-mask",
    # secondary mode filters
    "input-object-min-width", "input-object-min-height", "input-object-max-width", "input-object-max-height",
    "operate-on-gie-id", "operate-on-class-ids", "filter-out-class-ids",
})

#: ``network-mode`` by the graph's precision: "0=FP32, 1=INT8, 2=FP16" (NVINFER_DOC_URL). For an INT8 Q/DQ
#: graph TensorRT takes the scales from the graph (no ``int8-calib-file``).
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
CONFIG_NAME = "config_infer_primary.txt"
LABELS_NAME = "labels.txt"
SCORES = "scores"


@dataclass
class DeepStreamConfig(Config):
    """Options of the ``nvinfer`` configuration.

    Attributes:
        gpu_id: GPU index (``gpu-id``; 0 on a Jetson).
        segmentation_threshold: ``segmentation-threshold``, on the softmax scores (0..1): a pixel whose best
            score is at or below it gets class -1. 0.0 keeps every pixel (every best score is >= 1/K).
    """

    gpu_id: int = option(0, "DeepStream gpu-id.")
    segmentation_threshold: float = option(0.0, "DeepStream segmentation-threshold on the softmax scores.")

    def validate(self) -> None:
        check_range("--gpu-id", self.gpu_id, 0, 63)
        check_range("--segmentation-threshold", self.segmentation_threshold, 0.0, 1.0, integer=False)


@dataclass
class DeepStreamResult:
    """What :func:`write_nvinfer_config` wrote and the normalisation it had to approximate.

    Attributes:
        folder: the output folder; ``config``, ``labels``, ``model``: the files in it.
        net_scale_factor, offsets: as written (``offsets`` in 0..255 pixel units, RGB).
        normalisation_error: ``{"max_abs", "mean_abs"}`` of the approximated normalised input against the
            exact one over the 256 pixel values of each channel (normalised units).
        notes: what the user must know (one line each).
    """

    folder: Path
    config: Path
    labels: Path
    model: Path
    net_scale_factor: float
    offsets: list[float]
    normalisation_error: dict[str, float]
    notes: list[str] = field(default_factory=list)


def single_scale_normalisation(mean: Any, std: Any) -> tuple[float, list[float]]:
    """The best ``net-scale-factor`` and the exact ``offsets`` for ``(x/255 - mean_c) / std_c`` on 8-bit x.

    Exact per channel would be ``offsets_c = 255 mean_c`` and scale ``a_c = 1 / (255 std_c)``. With one scale
    ``k`` the error on channel c is ``|x - 255 mean_c| * |k - a_c|``, largest at ``x = 0`` or ``255``; ``k`` is
    chosen to minimise the largest of these over the three channels (minimax; with equal ``std`` it is exact).

    Returns:
        ``(net_scale_factor, offsets)``.
    """
    mean_a, std_a = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    a = 1.0 / (255.0 * std_a)
    reach = np.maximum(255.0 * mean_a, 255.0 - 255.0 * mean_a)  # the largest |x - offset| per channel
    candidates = list(a)
    for i in range(len(a)):  # the minimax lies where two channels' error lines cross, or at some a_c
        for j in range(i + 1, len(a)):
            candidates.append((reach[i] * a[i] + reach[j] * a[j]) / (reach[i] + reach[j]))
    worst = [float(np.max(reach * np.abs(k - a))) for k in candidates]
    k = float(candidates[int(np.argmin(worst))])
    return k, [float(v) for v in 255.0 * mean_a]


def normalisation_error(mean: Any, std: Any, net_scale_factor: float, offsets: Any,
                        pixels: np.ndarray | None = None) -> dict[str, float]:
    """How far nvinfer's ``net_scale_factor * (x - offsets_c)`` is from the exact ``(x/255 - mean_c)/std_c``.

    Args:
        pixels: ``(..., 3)`` uint8 RGB values to measure on (images); default every value 0..255 per channel.

    Returns:
        ``{"max_abs", "mean_abs"}`` in normalised units (1.0 = one standard deviation).
    """
    mean_a, std_a = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    off = np.asarray(offsets, np.float64)
    x = (np.repeat(np.arange(256.0)[:, None], 3, axis=1) if pixels is None
         else np.asarray(pixels, np.float64).reshape(-1, 3))
    exact = (x / 255.0 - mean_a) / std_a
    approx = net_scale_factor * (x - off)
    err = np.abs(approx - exact)
    return {"max_abs": float(err.max()), "mean_abs": float(err.mean())}


def nvinfer_input(images: np.ndarray, net_scale_factor: float, offsets: Any) -> np.ndarray:
    """What nvinfer hands TensorRT for ``(N, H, W, 3)`` uint8 RGB frames already at the network size:
    ``net_scale_factor * (x - offsets_c)``, planar ``(N, 3, H, W) float32``."""
    x = np.asarray(images, np.float32) - np.asarray(offsets, np.float32)
    return np.ascontiguousarray((x * np.float32(net_scale_factor)).transpose(0, 3, 1, 2))


def nvinfer_graph(model: Any) -> Any:
    """A copy of a logits graph with ``Softmax`` over the classes appended (output ``scores``, same shape).

    Raises:
        ExportError: not one ``(N, K, H, W)`` float32 output, or opset < 13 (before 13, Softmax flattens the
            trailing axes instead of normalising over the class axis).
    """
    import onnx
    from onnx import TensorProto, helper

    g = model.graph
    out = g.output[0] if len(g.output) == 1 else None
    dims = [d.dim_value for d in out.type.tensor_type.shape.dim] if out is not None else []
    if out is None or len(dims) != 4 or 0 in dims or out.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ExportError("DeepStream needs a logits graph: one static (N, K, H, W) float32 output")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise ExportError(f"the graph has opset {opset}; the Softmax DeepStream's segmentation parser needs "
                          "normalises over one axis from opset 13 on: re-export with --opset 13 or newer")
    new = onnx.ModelProto()
    new.CopyFrom(model)
    g = new.graph
    logits = g.output[0].name
    g.node.append(helper.make_node("Softmax", [logits], [SCORES], axis=1, name="/deepstream/Softmax"))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, dims))
    return new


def _fmt(v: float) -> str:
    return format(v, ".10g")


def write_nvinfer_config(artifact: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                         cfg: DeepStreamConfig | None = None) -> DeepStreamResult:
    """Write ``out_dir/`` with ``config_infer_primary.txt`` (the ``[property]`` group of a Gst-nvinfer primary
    segmentation model), ``labels.txt`` (one class name per line, in class-index order) and the model with its
    manifest. Paths in the config are relative to it (nvinfer resolves them against the config file's folder).
    The folder is written atomically.

    Two inputs:

    * an ``.onnx`` logits graph (``export --logits``): written as ``<stem>.deepstream.onnx``
      (:func:`nvinfer_graph`), named by ``onnx-file``: nvinfer builds its TensorRT engine from it on first run,
      with ``network-mode`` as the builder's precision flag;
    * an engine that ``danet-edge build`` made from such a ``.deepstream.onnx`` (its manifest says so): copied and
      named by ``model-engine-file``: the strongly typed engine danet-edge built and checked, the way to run an
      INT8 Q/DQ graph (nvinfer's own INT8 path expects a calibration file).

    Args:
        artifact: the graph or engine, with its manifest.
        out_dir: the folder to write (new, empty, or one this function wrote before).

    Raises:
        ConfigError: a fused-I/O graph (uint8 NHWC input nvinfer cannot feed), a CPU-target INT8 graph, an engine
            not built from a ``.deepstream.onnx``, a bad option, or an output folder that cannot be used.
        DataError, ManifestError: a missing artifact or a bad manifest.
        ExportError: a graph :func:`nvinfer_graph` cannot adapt or read.
    """
    cfg = cfg or DeepStreamConfig()
    cfg.validate()
    path, m, loaded = load_artifact(artifact)
    if m.input_dtype == "uint8" or m.output_kind == OutputKind.LABELS:
        raise ConfigError(f"{path.name} has fused I/O (uint8 (N, H, W, 3) in, class map out): Gst-nvinfer feeds "
                          "TensorRT float planar (NCHW) data and parses class scores, so it cannot run this graph; "
                          "export the logits graph (danet-edge export --logits) for DeepStream, or serve this one "
                          "with Triton (--triton)")
    if m.input_dtype != "float32" or m.input_shape[1] != 3:
        raise ConfigError(f"{path.name}: DeepStream needs a (N, 3, H, W) float32 input, the manifest says "
                          f"{m.input_dtype} {m.input_shape}")
    if m.target is not None and m.target.value == "cpu":
        raise ConfigError(f"{path.name} is the CPU INT8 graph (ONNX Runtime's uint8 Q/DQ form): DeepStream runs "
                          "TensorRT, give the TensorRT-target graph (model_int8_trt.onnx)")
    if m.precision.value not in NETWORK_MODE:
        raise ConfigError(f"{path.name}: no nvinfer network-mode for precision {m.precision}")
    engine = is_engine(path)
    if engine and not (m.output_name == SCORES and "deepstream" in m.extra):
        raise ConfigError(f"{path.name}: an engine of the plain logits graph would be misread (nvinfer's segmentation "
                          "parser needs class scores): give the .onnx, or build the engine from the "
                          "<stem>.deepstream.onnx this command writes (danet-edge build DIR/<stem>.deepstream.onnx)")
    scale, offsets = single_scale_normalisation(m.mean, m.std)
    err = normalisation_error(m.mean, m.std, scale, offsets)
    n, _, h, w = (int(d) for d in m.input_shape)
    graph = None
    if engine:
        model_name, model_key = path.name, "model-engine-file"
        ds_manifest = m
    else:
        graph = nvinfer_graph(loaded)
        model_name, model_key = f"{path.stem}.deepstream.onnx", "onnx-file"
        ds_manifest = replace(m, output_name=SCORES, extra={**m.extra, "deepstream": {
            "source": path.name, "softmax_over_classes": True, "net_scale_factor": scale, "offsets": offsets,
            "normalisation_error": err}})
        del graph.metadata_props[:]
        entry = graph.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(ds_manifest.to_dict())
    props: list[tuple[str, str, str]] = [
        ("gpu-id", str(cfg.gpu_id), ""),
        ("net-scale-factor", _fmt(scale), "one scale for all channels: 1/(255 std) cannot be per channel"),
        ("offsets", ";".join(_fmt(o) for o in offsets), "255 x mean (RGB), exact"),
        ("model-color-format", "0", "0=RGB (the graph's channel order)"),
        (model_key, model_name, "danet-edge's engine (built from the .deepstream.onnx)" if engine
         else "the logits graph + Softmax over the classes"),
        ("labelfile-path", LABELS_NAME, ""),
        ("batch-size", str(n), "the graph's static batch"),
        ("network-mode", str(NETWORK_MODE[m.precision.value]), f"0=FP32, 1=INT8, 2=FP16: the graph is {m.precision}"),
        ("network-type", "2", "segmentation"),
        ("network-input-order", "0", "NCHW"),
        ("num-detected-classes", str(m.num_classes), ""),
        ("segmentation-threshold", _fmt(cfg.segmentation_threshold), "on softmax scores"),
        ("segmentation-output-order", "0", "NCHW scores"),
        ("output-blob-names", SCORES, ""),
        ("output-tensor-meta", "1", "attach the raw scores too"),
        ("maintain-aspect-ratio", "0", "the model was trained and exported on a plain resize"),
        ("scaling-filter", "1", "bilinear (NvBufSurfTransformInter_Bilinear); danet-edge resizes with OpenCV, "
         "bilinear up and area down: frames larger than the network differ slightly"),
        ("gie-unique-id", "1", ""),
        ("process-mode", "1", "primary: full frames"),
    ]
    unknown = [k for k, _, _ in props if k not in NVINFER_PROPERTIES]
    if unknown:  # a programming error guarded at run time too: nvinfer ignores or rejects unknown keys
        raise ExportError(f"nvinfer does not document {', '.join(unknown)}")
    lines = [f"# Gst-nvinfer config written by danet-edge from {path.name} ({m.num_classes} classes, {h}x{w}).",
             f"# Keys: {NVINFER_DOC_URL}",
             f"# Normalisation: the graph wants (x/255 - mean)/std with per-channel std {list(m.std)}; nvinfer",
             "# applies net-scale-factor*(x - offsets) with one scale: worst error over 0..255 is "
             f"{err['max_abs']:.4f}, mean {err['mean_abs']:.4f} (normalised units).",
             "[property]"]
    for key, value, comment in props:
        if comment:
            lines.append(f"# {comment}")
        lines.append(f"{key}={value}")
    notes = [f"normalisation approximated by one scale (nvinfer has no per-channel scale): max error "
             f"{err['max_abs']:.4f}, mean {err['mean_abs']:.4f} in normalised units"]
    if not engine:
        notes.append("nvinfer builds its own TensorRT engine from onnx-file on first run (network-mode sets the "
                     "builder flags); for danet-edge's strongly typed engine: danet-edge build "
                     f"{Path(out_dir) / model_name}, then deploy that engine")
        if m.precision.value == "int8":
            notes.append("INT8 Q/DQ graph: nvinfer's INT8 mode asks for an int8-calib-file; build the engine with "
                         "danet-edge (strongly typed, scales from the graph) and deploy the engine instead")
    else:
        notes.append("the engine runs only under the TensorRT version and GPU it was built with "
                     "(DeepStream's TensorRT)")

    def fill(tmp: Path) -> None:
        (tmp / CONFIG_NAME).write_text("\n".join(lines) + "\n")
        (tmp / LABELS_NAME).write_text("".join(f"{c}\n" for c in m.classes))
        sidecar = manifest_path(tmp / model_name)
        if graph is None:
            shutil.copyfile(path, tmp / model_name)
            shutil.copyfile(manifest_path(path), sidecar)
        else:
            import onnx

            sidecar.write_text(manifest_json(ds_manifest, str(sidecar)))
            onnx.save(graph, str(tmp / model_name))

    folder = write_folder(out_dir, fill, {"kind": "deepstream", "artifact": str(path.resolve()),
                                          "config": CONFIG_NAME})
    return DeepStreamResult(folder=folder, config=folder / CONFIG_NAME, labels=folder / LABELS_NAME,
                            model=folder / model_name, net_scale_factor=scale, offsets=offsets,
                            normalisation_error=err, notes=notes)


def parse_nvinfer_config(path: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """Read an nvinfer config as groups of ``key=value`` (GKeyFile syntax: ``#`` comments, ``[group]``)."""
    groups: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = groups.setdefault(line[1:-1], {})
        elif "=" in line and current is not None:
            key, value = line.split("=", 1)
            current[key.strip()] = value.strip()
    return groups

