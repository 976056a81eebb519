"""DeepStream: an ``nvinfer`` configuration (semantic segmentation) and labels file for an exported graph.

What Gst-nvinfer can take (DeepStream plugin manual, "Gst-nvinfer",
https://docs.nvidia.com/metropolis/deepstream/dev-guide/text/DS_plugin_gst-nvinfer.html):

* **Input.** nvinfer scales and converts each frame itself and hands TensorRT "final float RGB/BGR/GRAY
  planar data" computed as ``y = net-scale-factor * (x - offsets[c])`` (x the 8-bit pixel). A fused-I/O graph
  (``(N, H, W, 3) uint8`` in) cannot be fed that way: it is refused here (``export --logits`` writes the
  float NCHW graph; Triton, ``triton.py``, takes the fused graph as it is).
* **Normalisation.** ``net-scale-factor`` is ONE number for all channels (``offsets`` is per channel), so the
  per-channel ``(x/255 - mean_c) / std_c`` cannot be nvinfer's. It goes into the graph instead: nvinfer is told
  ``net-scale-factor=1/255`` and ``offsets=0;0;0`` (it hands over ``x/255``), and the graph written here
  (:func:`nvinfer_graph`) starts with ``Mul(255) -> Round`` (back to the integer pixel value x: in float32
  ``(x * 1/255) * 255`` misses x by one ulp for 126 of the 256 values, Round makes it x again, FP16 too) and
  then the fused-I/O graph's own ``Sub(255 mean) -> Mul(1 / (255 std))`` (``export.graph_io.normalisation_nodes``,
  the same float32 constants). From there on it computes bit for bit what the fused graph computes after its
  ``Cast``: exact, same rounding. Not folded into the first convolution: its zero padding is zero in normalised
  units, which is the mean, not 0, in pixel units, so borders would change. ``tests/test_deploy.py`` and
  ``benchmarks/deepstream_normalisation.py`` compare both graphs' class maps and logits.
* **Output.** ``network-type=2`` (segmentation) turns a ``(K, H, W)`` output into a class map: a pixel takes
  the channel with the largest value *only if that value is above -1 and above* ``segmentation-threshold``
  ("If confidence is less than this threshold, class output for that pixel is -1"; in DeepStream's
  ``nvdsinfer_context_impl_output_parsing.cpp`` the running maximum starts at -1). Raw logits are not
  confidences, so the graph written here is the logits graph with a ``Softmax`` over the classes appended
  (:func:`nvinfer_graph`, output ``scores``): argmax is unchanged and every winning score is >= 1/K > 0.
  ``output-tensor-meta=1`` also attaches the raw scores for code that wants them. An engine is taken only when
  ``danet-edge build`` made it from such a ``.deepstream.onnx`` (its manifest records the Softmax tail and the
  normalisation head).

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

__all__ = ["DeepStreamConfig", "DeepStreamResult", "write_nvinfer_config", "nvinfer_graph", "nvinfer_input",
           "NET_SCALE_FACTOR", "OFFSETS", "NVINFER_PROPERTIES", "NVINFER_DOC_URL",
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
#: What nvinfer is told (NVINFER_DOC_URL, "net-scale-factor", "offsets"): it hands the graph ``x/255`` per channel,
#: the graph does the per-channel normalisation (:func:`nvinfer_graph`).
NET_SCALE_FACTOR = 1.0 / 255.0
OFFSETS = [0.0, 0.0, 0.0]
_PIXELS = "deepstream_pixels"  # the head's tensors: x*255, rounded; then normalised
_NORMALISED = "deepstream_normalised"


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
    """What :func:`write_nvinfer_config` wrote.

    Attributes:
        folder: the output folder; ``config``, ``labels``, ``model``: the files in it.
        net_scale_factor, offsets: as written (:data:`NET_SCALE_FACTOR`, :data:`OFFSETS`: ``offsets`` in 0..255
            pixel units, RGB); the graph normalises per channel itself.
        notes: what the user must know (one line each).
    """

    folder: Path
    config: Path
    labels: Path
    model: Path
    net_scale_factor: float
    offsets: list[float]
    notes: list[str] = field(default_factory=list)


def nvinfer_input(images: np.ndarray, net_scale_factor: float, offsets: Any) -> np.ndarray:
    """What nvinfer hands TensorRT for frames already at the network size (a numpy emulation).

    Gst-nvinfer: "final float RGB/BGR/GRAY planar data" ``y = net-scale-factor * (x - offsets[c])``
    (NVINFER_DOC_URL, "Gst-nvinfer"), computed in float32: ``float32(net_scale_factor) * (float32(x) -
    float32(offsets_c))``.

    Args:
        images: ``(N, H, W, 3)`` uint8 RGB frames (``model-color-format=0``), pixel values 0..255.
        net_scale_factor: nvinfer's ``net-scale-factor`` (:data:`NET_SCALE_FACTOR` for the graphs written here).
        offsets: three per-channel offsets in 0..255 pixel units, RGB (:data:`OFFSETS` here).

    Returns:
        ``(N, 3, H, W) float32``, planar (NCHW), C-contiguous.
    """
    x = np.asarray(images, np.float32) - np.asarray(offsets, np.float32)
    return np.ascontiguousarray((x * np.float32(net_scale_factor)).transpose(0, 3, 1, 2))


def nvinfer_graph(model: Any, mean: Any, std: Any) -> Any:
    """A copy of a logits graph that takes nvinfer's input and gives its segmentation parser class scores.

    Head, on the ``(N, 3, H, W) float32`` input ``y = x/255`` (nvinfer with ``net-scale-factor=1/255``,
    ``offsets=0;0;0``; x the 8-bit RGB pixel value): ``Mul(255) -> Round`` gives x back exactly (float32
    ``(x * 1/255) * 255`` misses x by an ulp for 126 of the 256 values), then the fused-I/O graph's
    ``Sub(255 mean) -> Mul(1 / (255 std))`` (:func:`~danet_edge.export.graph_io.normalisation_nodes`, the same
    float32 constants), so the graph computes what ``fuse_io``'s graph computes after its Cast, bit for bit.
    Tail: ``Softmax`` over the classes (output ``scores``, the logits' shape); see the module docstring.
    Source: NVINFER_DOC_URL ("net-scale-factor", "offsets", "network-type", "segmentation-threshold").

    Args:
        model: a logits graph, one ``(N, 3, H, W)`` float32 input (normalised) and one ``(N, K, H, W)`` float32
            output, static shapes, opset >= 13.
        mean, std: the graph's per-channel RGB normalisation on ``x / 255`` (the manifest's).

    Raises:
        ExportError: not one ``(N, 3, H, W)`` float32 input and one ``(N, K, H, W)`` float32 output, or
            opset < 13 (before 13, Softmax flattens the trailing axes instead of normalising over the class axis).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ..export.graph_io import normalisation_nodes

    g = model.graph
    out = g.output[0] if len(g.output) == 1 else None
    inp = g.input[0] if len(g.input) == 1 else None
    dims = [d.dim_value for d in out.type.tensor_type.shape.dim] if out is not None else []
    idims = [d.dim_value for d in inp.type.tensor_type.shape.dim] if inp is not None else []
    if out is None or len(dims) != 4 or 0 in dims or out.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ExportError("DeepStream needs a logits graph: one static (N, K, H, W) float32 output")
    if (inp is None or len(idims) != 4 or idims[1] != 3 or 0 in idims
            or inp.type.tensor_type.elem_type != TensorProto.FLOAT):
        raise ExportError("DeepStream needs a logits graph: one static (N, 3, H, W) float32 input")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise ExportError(f"the graph has opset {opset}; the Softmax DeepStream's segmentation parser needs "
                          "normalises over one axis from opset 13 on: re-export with --opset 13 or newer")
    new = onnx.ModelProto()
    new.CopyFrom(model)
    g = new.graph
    name, logits = g.input[0].name, g.output[0].name
    for node in g.node:
        for i, x in enumerate(node.input):
            if x == name:
                node.input[i] = _NORMALISED
    norm, inits = normalisation_nodes(_PIXELS, _NORMALISED, mean, std, prefix="deepstream",
                                      centred="deepstream_centred")
    g.initializer.extend([numpy_helper.from_array(np.full((1, 1, 1, 1), 255.0, np.float32), "deepstream_x255"),
                          *inits])
    head = [helper.make_node("Mul", [name, "deepstream_x255"], ["deepstream_x255_out"], name="/deepstream/Mul255"),
            helper.make_node("Round", ["deepstream_x255_out"], [_PIXELS], name="/deepstream/Round"), *norm]
    nodes = head + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    g.node.append(helper.make_node("Softmax", [logits], [SCORES], axis=1, name="/deepstream/Softmax"))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, dims))
    return new


def _fmt(v: float) -> str:
    return format(v, ".10g")


def _fmt_exact(v: float) -> str:
    """Shortest text that reads back as the same float64 (``1/255`` -> ``0.00392156862745098``)."""
    return repr(float(v))


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

    The config tells nvinfer ``net-scale-factor=1/255`` and ``offsets=0;0;0`` (:data:`NET_SCALE_FACTOR`,
    :data:`OFFSETS`); the graph normalises per channel itself (:func:`nvinfer_graph`), so DeepStream's input is
    exactly the fused-I/O graph's. The ``.deepstream.onnx``'s manifest says so: ``mean`` 0 and ``std`` 1 (what a
    host feeding it must do: ``x/255``), the graph's own mean/std under ``extra["deepstream"]
    ["normalisation_in_graph"]``, beside ``net_scale_factor`` and ``offsets``.

    Raises:
        ConfigError: a fused-I/O graph (uint8 NHWC input nvinfer cannot feed), a CPU-target INT8 graph, a graph
            this function wrote already (``.deepstream.onnx``: its engine is what deploys), an engine not built
            from a ``.deepstream.onnx`` of this version (one without the normalisation head would be fed
            wrongly), a bad option, or an output folder that cannot be used.
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
    ds = m.extra.get("deepstream")
    if engine and not (m.output_name == SCORES and isinstance(ds, dict)):
        raise ConfigError(f"{path.name}: an engine of the plain logits graph would be misread (nvinfer's segmentation "
                          "parser needs class scores): give the .onnx, or build the engine from the "
                          "<stem>.deepstream.onnx this command writes (danet-edge build DIR/<stem>.deepstream.onnx)")
    if engine and not isinstance(ds.get("normalisation_in_graph"), dict):
        raise ConfigError(f"{path.name}: built from a .deepstream.onnx of an older danet-edge, which expects nvinfer's "
                          "approximate single-scale normalisation: deploy the logits graph again and rebuild the "
                          "engine from the new <stem>.deepstream.onnx (its graph normalises exactly)")
    if not engine and ds is not None:
        raise ConfigError(f"{path.name} is already a DeepStream graph (written by deploy --deepstream): give the "
                          f"logits graph it came from ({ds.get('source', '<stem>.onnx')}), or the engine built from it")
    scale, offsets = NET_SCALE_FACTOR, list(OFFSETS)
    n, _, h, w = (int(d) for d in m.input_shape)
    graph = None
    if engine:
        model_name, model_key = path.name, "model-engine-file"
        ds_manifest = m
        mean, std = ds["normalisation_in_graph"].get("mean"), ds["normalisation_in_graph"].get("std")
    else:
        mean, std = list(m.mean), list(m.std)
        graph = nvinfer_graph(loaded, mean, std)
        model_name, model_key = f"{path.stem}.deepstream.onnx", "onnx-file"
        ds_manifest = replace(m, output_name=SCORES, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], extra={
            **m.extra, "deepstream": {
                "source": path.name, "softmax_over_classes": True, "net_scale_factor": scale, "offsets": offsets,
                "normalisation_in_graph": {"mean": mean, "std": std,
                                           "nodes": "Mul(255) -> Round -> Sub(255 mean) -> Mul(1/(255 std))"}}})
        del graph.metadata_props[:]
        entry = graph.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(ds_manifest.to_dict())
    props: list[tuple[str, str, str]] = [
        ("gpu-id", str(cfg.gpu_id), ""),
        ("net-scale-factor", _fmt_exact(scale), "1/255: the graph takes x/255 and normalises per channel itself"),
        ("offsets", ";".join(_fmt(o) for o in offsets), "none: the graph subtracts the mean"),
        ("model-color-format", "0", "0=RGB (the graph's channel order)"),
        (model_key, model_name, "danet-edge's engine (built from the .deepstream.onnx)" if engine
         else "the logits graph with the normalisation head and a Softmax over the classes"),
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
             "# Normalisation: nvinfer hands the graph net-scale-factor*(x - offsets) = x/255; the graph rounds",
             "# 255 times that back to x and computes (x - 255 mean) * 1/(255 std) as the fused-I/O graph does,",
             f"# with mean {mean} and std {std} (RGB): exact, per channel.",
             "[property]"]
    for key, value, comment in props:
        if comment:
            lines.append(f"# {comment}")
        lines.append(f"{key}={value}")
    notes: list[str] = []
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
                            model=folder / model_name, net_scale_factor=scale, offsets=offsets, notes=notes)


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

