"""What export checks against TensorRT's tensor size and this machine's memory before it traces or runs a graph.

**Size rule** (:func:`check_sizes`, before anything is traced): TensorRT refuses a tensor of 2^31 elements or more
(``graph.trtcheck.MAX_TENSOR_ELEMENTS``: int32 indexing, https://github.com/NVIDIA/TensorRT/issues/3815). PAM's
map is DANet's largest tensor by far: ``[N, 8, L, L]`` in the heads form, ``[N, L, L]`` explicit (``model.forms.
map_shape``, ``L = (H/OS)(W/OS)``), so the heads form at 1024x2048 (``8 x 32768^2`` = 8.6e9 elements) and the
explicit form there at batch 2 (2^31) are refused in one line naming the tensor, its shape and what fits (the
chunked form, or the largest size of the same aspect). ``trtcheck`` applies the same rule to every tensor of every
graph written (``finalize``); this check spares the trace and the verification of a graph that rule refuses.

**Host memory** (:func:`check_host_memory`): export verifies each graph by running it in ONNX Runtime on this CPU
and the reference bundle runs PyTorch here (``reference.make_bundle``). Before either runs, the memory model's
estimate for it (``graph.memory``: weights + the activation peak of an unfused runtime; PyTorch on a CPU runs PAM
chunked, slices of at most ``forms.REFERENCE_CHUNK_MIB``) is compared with ``psutil.virtual_memory().available``;
a need above it is refused in one line with both figures and the fix (``--attention chunked``: the same weights,
PAM in query slices, with what that form would need here), instead of failing inside ONNX Runtime's allocator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigError
from ..graph.trtcheck import MAX_TENSOR_ELEMENTS
from ..model.forms import MAX_CHUNKS, map_shape, reference_chunks

if TYPE_CHECKING:  # the plan's modules load torch; check reads bundles without it
    from .plan import ExportPlan

__all__ = ["available_mib", "check_bundle_memory", "check_host_memory", "check_sizes", "check_verification_memory",
           "chunked_need_mib", "largest_size"]


def largest_size(form: str, size: tuple[int, int], batch: int, os_: int, chunks: int | None = None) -> str:
    """The largest ``H x W`` with ``size``'s aspect (multiples of the output stride ``os_``) whose attention map in
    ``form`` stays within :data:`MAX_TENSOR_ELEMENTS`, as text (e.g. ``"720x1440"``)."""
    h, w = size
    for step in range(99, 0, -1):
        hh, ww = max(os_, int(h * step / 100) // os_ * os_), max(os_, int(w * step / 100) // os_ * os_)
        if math.prod(map_shape(form, batch, (hh // os_) * (ww // os_), chunks)) <= MAX_TENSOR_ELEMENTS:
            return f"{hh}x{ww}"
    return f"none above {os_}x{os_}"


def check_sizes(plan: ExportPlan) -> None:
    """The size rule for the form ``plan`` asks for (``--attention auto``: the most chunks it may take), for
    ``--target tensorrt`` (a ``cpu`` export only reports TensorRT's rules).

    Raises:
        ConfigError: PAM's map would hold 2^31 elements or more: the form, size, batch, the tensor's shape and
            element count, and the fix (``--attention chunked`` with its chunk count, or a smaller ``--imgsz``).
    """
    cfg = plan.cfg
    if cfg.target != "tensorrt":
        return
    (h, w), batch, os_ = plan.size, cfg.batch, plan.loaded.config.output_stride
    positions = (h // os_) * (w // os_)
    form = "chunked" if cfg.attention == "auto" else cfg.attention
    chunks = MAX_CHUNKS if cfg.attention == "auto" else cfg.attention_chunks
    shape = map_shape(form, batch, positions, chunks)
    count = math.prod(shape) if shape else 0
    if count <= MAX_TENSOR_ELEMENTS:
        return
    fixes = []
    k = reference_chunks(batch, positions)
    if math.prod(map_shape("chunked", batch, positions, k)) <= MAX_TENSOR_ELEMENTS and \
            (form != "chunked" or (chunks or k) < k):
        fixes.append(f"--attention chunked ({k} query chunks: slices of {map_shape('chunked', batch, positions, k)})")
    best = largest_size(form, (h, w), batch, os_, chunks)
    fixes.append(f"--imgsz {best.replace('x', ' ')} or smaller" if best[0].isdigit() else "a smaller --imgsz")
    asked = "--attention auto, with its most query chunks," if cfg.attention == "auto" else f"the {form} form"
    raise ConfigError(f"{asked} at {h}x{w} (batch {batch}) holds PAM's attention map as one tensor of shape {shape} "
                      f"= {count:,} elements, at or above 2^31, which TensorRT refuses (int32 indexing: "
                      f"NVIDIA/TensorRT issue 3815): use {' or '.join(fixes)}")


def available_mib() -> float:
    """Memory this machine has available now (MiB): ``psutil.virtual_memory().available``."""
    import psutil

    return psutil.virtual_memory().available / 2**20


def chunked_need_mib(record: Mapping[str, Any], batch: int) -> float | None:
    """MiB the chunked form of a graph's weights needs at ``batch`` with :func:`forms.reference_chunks` query chunks
    (PyTorch's form on a CPU, and ``--attention chunked``'s default): weights + the larger of the activations
    outside PAM and what is live beside one map slice plus the slice (``graph.memory``). ``record``: a
    ``MemoryEstimate.record()`` (None when it lacks the figures: a graph exported before they were recorded)."""
    try:
        weights, other, beside = (float(record[k]) for k in ("weights_mib", "other_mib", "beside_map_mib"))
        positions = int(record["positions"])
    except (KeyError, TypeError, ValueError):
        return None
    if positions <= 0:
        return weights + other
    slice_mib = math.prod(map_shape("chunked", batch, positions)) * 4 / 2**20
    return weights + max(other, beside + slice_mib)


def check_host_memory(need_mib: float, what: str, fix: str) -> None:
    """Refuse to run ``what`` here when the memory model's ``need_mib`` is above :func:`available_mib`.

    Raises:
        ConfigError: ``what``, the need and the memory available (MiB), and ``fix``.
    """
    have = available_mib()
    if need_mib > have:
        raise ConfigError(f"{what} needs about {need_mib:.0f} MiB here (the memory model's estimate) and this machine "
                          f"has {have:.0f} MiB available: {fix}")


def check_verification_memory(plan: ExportPlan, estimate: Any) -> None:
    """Before export runs the FP32 graph (ONNX Runtime) and the PyTorch reference (PAM chunked) on this CPU:
    their need is the larger of the graph's estimate and its weights' chunked form's (``estimate``: the traced
    graph's ``graph.memory.MemoryEstimate``).

    Raises:
        ConfigError: the need is above the memory available (:func:`check_host_memory`); the fix names
            ``--attention chunked`` and its need here when the form is another, else a smaller size or batch.
    """
    record = estimate.record()
    chunked = chunked_need_mib(record, plan.cfg.batch)
    need = max(estimate.total_mib, chunked or 0.0)
    form = estimate.attention.form
    h, w = plan.size
    if form not in ("chunked", "none") and chunked is not None and chunked < need:
        fix = (f"export --attention chunked (the same weights, PAM in query slices: about {chunked:.0f} MiB here), "
               f"a smaller --imgsz or --batch, or a machine with more memory")
    else:
        fix = "a smaller --imgsz or --batch, or a machine with more memory"
    check_host_memory(need, f"verifying the {form} graph at {h}x{w} (batch {plan.cfg.batch}) in ONNX Runtime", fix)


def check_bundle_memory(manifest: Any) -> None:
    """Before the reference bundle runs PyTorch (PAM chunked) at ``manifest``'s size and batch on this CPU: the
    chunked form's need from the graph's memory record (``manifest.extra["memory"]``; nothing checked without one).

    Raises:
        ConfigError: the need is above the memory available.
    """
    need = chunked_need_mib(manifest.extra.get("memory") or {}, manifest.batch_size)
    if need is not None:
        h, w = manifest.image_size
        check_host_memory(need, f"the reference bundle (PyTorch FP32 at {h}x{w}, batch {manifest.batch_size})",
                          "--reference-images 0 (no bundle), a smaller --imgsz or --batch, or a machine with more "
                          "memory")
