"""Fused I/O: the graph takes the camera's bytes and gives the class map (the one home of that rewrite).

A logits graph (input ``(N, 3, H, W) float32`` normalised, output ``(N, K, H, W) float32`` logits) leaves
the host to normalise every frame and to take the argmax over K classes. At 512x1024 with 19 classes that
host work is about 69 ms per frame on a workstation core (``benchmarks/host_io.py``), against an engine
whose estimated lower bound on AGX Orin is a few ms (``cost.py``); on a Jetson's ARM cores it is slower
still. The rewrite moves both into the graph, where TensorRT runs them on the GPU:

    images (N, H, W, 3) uint8 RGB -> Cast(float) -> Transpose(0, 3, 1, 2) -> Sub(mean * 255) -> Mul(1 / (std * 255))
        -> [the graph] -> logits -> ArgMax(axis 1) -> Cast(int32) -> labels (N, H, W)

The arithmetic is that of ``preprocess.normalize`` (``(x / 255 - mean) / std``), grouped as
``(x - 255 mean) * 1 / (255 std)``. It applies to any graph of the export (FP32, FP16, INT8 Q/DQ), after
calibration and the accuracy budget, which all work on logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..core.errors import ExportError

__all__ = ["fuse_io", "is_fused", "normalisation_nodes"]

_NORMALISED = "images_normalised"


def is_fused(model: onnx.ModelProto) -> bool:
    """True when the graph's input is uint8 (fused I/O)."""
    return model.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8


def normalisation_nodes(pixels: str, output: str, mean: Sequence[float], std: Sequence[float], prefix: str = "io",
                        centred: str = "images_centred") -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The normalisation as graph nodes: ``Sub(255 mean) -> Mul(1 / (255 std))``, float32 constants.

    The one home of the in-graph normalisation: :func:`fuse_io` and DeepStream's graph
    (``deploy.deepstream.nvinfer_graph``) both use it, so both round the same way.

    Args:
        pixels: name of a ``(N, 3, H, W) float32`` tensor of pixel values 0..255 (RGB).
        output: name of the ``(N, 3, H, W) float32`` normalised tensor, ``(x - 255 mean) * 1 / (255 std)``.
        mean, std: per-channel RGB normalisation on ``x / 255`` (the manifest's).
        prefix: names the initializers (``<prefix>_mean_x255``, ``<prefix>_inv_std_x255``) and the nodes
            (``/<prefix>/Sub``, ``/<prefix>/Mul``). centred: name of the tensor between the two nodes.

    Returns:
        ``(nodes, initializers)`` to add to a graph.
    """
    shift = np.asarray(mean, np.float32).reshape(1, 3, 1, 1) * np.float32(255.0)
    scale = np.float32(1.0) / (np.asarray(std, np.float32).reshape(1, 3, 1, 1) * np.float32(255.0))
    inits = [numpy_helper.from_array(shift.astype(np.float32), f"{prefix}_mean_x255"),
             numpy_helper.from_array(scale.astype(np.float32), f"{prefix}_inv_std_x255")]
    nodes = [helper.make_node("Sub", [pixels, f"{prefix}_mean_x255"], [centred], name=f"/{prefix}/Sub"),
             helper.make_node("Mul", [centred, f"{prefix}_inv_std_x255"], [output], name=f"/{prefix}/Mul")]
    return nodes, inits


def fuse_io(model: onnx.ModelProto, mean: Sequence[float], std: Sequence[float],
            output_name: str = "labels") -> onnx.ModelProto:
    """Return a copy of a logits graph with fused I/O (see the module docstring).

    Args:
        model: one input ``(N, 3, H, W)`` float32 and one output ``(N, K, H, W)`` float32, static shapes.
        mean, std: per-channel RGB normalisation on ``x / 255`` (the manifest's).
        output_name: name of the new ``(N, H, W) int32`` output.

    Raises:
        ExportError: a graph that is not a single-input, single-output NCHW logits graph, or already fused.
    """
    g = model.graph
    if len(g.input) != 1 or len(g.output) != 1:
        raise ExportError(f"fused I/O needs one input and one output, the graph has {len(g.input)} and {len(g.output)}")
    if is_fused(model):
        raise ExportError("the graph already has fused I/O (uint8 input)")
    inp, out = g.input[0], g.output[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    odims = [d.dim_value for d in out.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] != 3 or 0 in dims or len(odims) != 4 or 0 in odims:
        raise ExportError(f"fused I/O needs a static (N, 3, H, W) input and (N, K, H, W) output, got {dims} -> {odims}")
    if inp.type.tensor_type.elem_type != TensorProto.FLOAT or out.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ExportError("fused I/O needs float32 graph input and output (FP32 I/O)")
    n, _, h, w = dims
    new = onnx.ModelProto()
    new.CopyFrom(model)
    g = new.graph
    name, logits = inp.name, out.name
    for node in g.node:
        for i, x in enumerate(node.input):
            if x == name:
                node.input[i] = _NORMALISED
    norm, inits = normalisation_nodes("images_nchw", _NORMALISED, mean, std)
    g.initializer.extend(inits)
    head = [helper.make_node("Cast", [name], ["images_float"], to=TensorProto.FLOAT, name="/io/Cast"),
            helper.make_node("Transpose", ["images_float"], ["images_nchw"], perm=[0, 3, 1, 2], name="/io/Transpose"),
            *norm]
    tail = [helper.make_node("ArgMax", [logits], ["labels_int64"], axis=1, keepdims=0, name="/io/ArgMax"),
            helper.make_node("Cast", ["labels_int64"], [output_name], to=TensorProto.INT32, name="/io/CastLabels")]
    nodes = head + list(g.node) + tail
    del g.node[:]
    g.node.extend(nodes)
    del g.input[:]
    g.input.append(helper.make_tensor_value_info(name, TensorProto.UINT8, [n, h, w, 3]))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(output_name, TensorProto.INT32, [n, h, w]))
    g.value_info.append(helper.make_tensor_value_info(logits, TensorProto.FLOAT, odims))
    return new
