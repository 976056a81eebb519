"""Export's attention step: which form PAM takes in the graph, decided by the memory model.

``--attention auto`` (the default): the explicit form (the paper's graph) where the whole graph fits the
budget, else the chunked form with the fewest query chunks that fit, at least ``forms.MIN_AUTO_CHUNKS`` (4). The budget is ``--memory-limit-mib``, else
the ``--jetson`` board's memory less ``graph.boards.RESERVE_MIB``; the need is ``graph.memory.memory_estimate``'s
weights + activation peak. A form the user names is traced as asked and refused when it does not fit (``chunked``
without a count: :func:`named_chunks`, raised to the fewest that fit); a size
that does not fit even with ``model.forms.MAX_CHUNKS`` chunks is refused in one line with the estimate and
the largest size that fits.

The choice needs one trace at the size asked, and one probe before it where the map is large: where one
whole map is above ``forms.REFERENCE_CHUNK_MIB`` (256 MiB), the explicit form is first traced at half the height
and width (halved again until its map is that small), the activations outside the attention are read from it
and scaled by the pixel ratio (they grow with the pixels), and the form is chosen from that; the full-size graph
is then traced once in the chosen form and is the judge (traced again with more chunks if it does not fit).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import onnx

from ..core.errors import ConfigError
from ..graph.memory import MemoryEstimate, memory_estimate
from ..graph.trtcheck import MAX_TENSOR_ELEMENTS
from ..model.forms import MAX_CHUNKS, MIN_AUTO_CHUNKS, chunk_bounds, map_shape, reference_chunks
from .fp32 import trace_onnx
from .plan import ExportPlan

__all__ = ["AttentionChoice", "choose_attention", "chunks_needed", "named_chunks"]


@dataclass
class AttentionChoice:
    """The form chosen and its traced FP32 graph (logits out), with the estimate it was chosen by (MiB)."""

    form: str
    chunks: int | None
    graph: onnx.ModelProto
    estimate: MemoryEstimate
    budget_mib: float

    def record(self) -> dict[str, object]:
        """What the manifest, the log and ``check`` report: the form, chunks, map and budget figures."""
        a = self.estimate.attention
        return {"form": self.form, "chunks": self.chunks or 1, "heads": a.heads, "map_mib": a.map_mib,
                "gflop": a.gflop, "total_mib": self.estimate.total_mib, "budget_mib": round(self.budget_mib, 1)}


def _slice_mib(batch: int, positions: int, chunks: int, bytes_per_value: int = 4) -> float:
    rows = max(b - a for a, b in chunk_bounds(positions, chunks))
    return batch * positions * rows * bytes_per_value / 2**20


def chunks_needed(estimate: MemoryEstimate, batch: int, positions: int, budget_mib: float,
                  scale: float = 1.0) -> int | None:
    """The fewest query chunks whose graph fits ``budget_mib`` (1, else at least :data:`MIN_AUTO_CHUNKS`): weights
    + the larger of the activation peak outside the attention and what is live beside the map plus one FP32 map
    slice (the Softmax writes over its input; ``graph.memory``); None when even :data:`MAX_CHUNKS` do not. ``estimate`` is of a graph with
    ``1 / scale`` the pixels (a probe); ``positions`` are the size asked's. A slice of 2^31 elements or more, which
    TensorRT refuses (``graph.trtcheck.MAX_TENSOR_ELEMENTS``), does not fit whatever the memory."""
    def trt_takes(k: int) -> bool:
        return math.prod(map_shape("chunked", batch, positions, k)) <= MAX_TENSOR_ELEMENTS

    measured = estimate.attention.form == "explicit" and scale == 1.0  # k = 1 is this very graph
    if measured and estimate.total_mib <= budget_mib and trt_takes(1):
        return 1
    for k in ([] if measured else [1]) + list(range(MIN_AUTO_CHUNKS, MAX_CHUNKS + 1)):
        if trt_takes(k) and _need_mib(estimate, scale, batch, positions, k) <= budget_mib:
            return k
    return None


def named_chunks(batch: int, positions: int) -> int:
    """Query chunks of ``--attention chunked`` without ``--attention-chunks``: as ``auto`` writes when it chunks, at
    least :data:`MIN_AUTO_CHUNKS` (more where one FP32 slice would exceed ``forms.REFERENCE_CHUNK_MIB``), at most one
    per position; :func:`choose_attention` raises it to the fewest that fit the budget."""
    return min(positions, max(MIN_AUTO_CHUNKS, reference_chunks(batch, positions)))


def _probe_size(size: tuple[int, int], batch: int, os_: int) -> tuple[int, int]:
    """``size`` halved (each side, multiples of ``os_``) until one FP32 map is within ``REFERENCE_CHUNK_MIB``."""
    h, w = size
    while reference_chunks(batch, (h // os_) * (w // os_)) > 1 and min(h, w) > 2 * os_:
        h, w = max(os_, h // 2 // os_ * os_), max(os_, w // 2 // os_ * os_)
    return h, w


def _need_mib(estimate: MemoryEstimate, scale: float, batch: int, positions: int, chunks: int) -> float:
    """Estimated MiB of a graph with ``chunks`` query chunks, its activations outside the map scaled by ``scale``
    (the pixel ratio to the graph ``estimate`` was made from)."""
    at_attention = estimate.beside_map_mib * scale + _slice_mib(batch, positions, chunks)
    return estimate.weights_mib + max(estimate.other_mib * scale, at_attention)


def _largest_fit(estimate: MemoryEstimate, traced: tuple[int, int], size: tuple[int, int], batch: int, os_: int,
                 budget: float) -> str:
    """The largest ``H x W`` with ``size``'s aspect (multiples of ``os_``) the chunked form fits at, as text
    (``estimate`` is of a graph traced at ``traced``)."""
    h, w = size
    for step in range(99, 0, -1):
        s = step / 100
        hh, ww = max(os_, int(h * s) // os_ * os_), max(os_, int(w * s) // os_ * os_)
        scale = hh * ww / (traced[0] * traced[1])
        if _need_mib(estimate, scale, batch, (hh // os_) * (ww // os_), MAX_CHUNKS) <= budget:
            return f"{hh}x{ww}"
    return f"none above {os_}x{os_}"


def choose_attention(plan: ExportPlan, log: Callable[[str], None]) -> AttentionChoice:
    """Trace the FP32 graph with PAM in the form ``plan.cfg`` asks for or the memory model picks.

    Raises:
        ConfigError: the graph does not fit the budget in the form asked, or in any form (one line: the
            estimate, the budget, and what to change).
    """
    cfg, loaded = plan.cfg, plan.loaded
    (h, w), batch, os_ = plan.size, cfg.batch, loaded.config.output_stride
    positions = (h // os_) * (w // os_)
    budget = cfg.memory_budget_mib()
    where = f"--memory-limit-mib {budget:g}" if cfg.memory_limit_mib is not None else \
        f"{cfg.jetson} ({budget:.0f} MiB after the OS reserve and TensorRT's workspace)"

    def trace(form: str, chunks: int | None, size: tuple[int, int] = plan.size) -> AttentionChoice:
        graph = trace_onnx(loaded, size, batch, cfg.onnx_opset(), form, chunks)
        est = memory_estimate(graph)
        if form in ("explicit", "chunked") and est.attention.form in ("explicit", "chunked"):  # what the graph holds:
            form, chunks = est.attention.form, est.attention.chunks if est.attention.form == "chunked" else None
        return AttentionChoice(form, chunks, graph, est, budget)  # one chunk is the explicit form, and says so

    if cfg.attention == "auto":
        ph, pw = _probe_size(plan.size, batch, os_)
        first = trace("explicit", None, (ph, pw))  # the size asked, or a probe where its map is large
        scale = h * w / (ph * pw)
        k = chunks_needed(first.estimate, batch, positions, budget, scale)
        if k is None:
            raise ConfigError(f"DANet at {h}x{w} needs {_need_mib(first.estimate, scale, batch, positions, MAX_CHUNKS):.0f}"
                              f" MiB with PAM in {MAX_CHUNKS} query chunks (the most); that does not fit {where}. "
                              f"Largest size that fits: {_largest_fit(first.estimate, (ph, pw), plan.size, batch, os_, budget)}"
                              " (or output stride 16, or a larger --jetson)")
        choice = first if k == 1 and scale == 1.0 else trace("explicit" if k == 1 else "chunked", None if k == 1 else k)
        while choice.estimate.total_mib > budget and k < MAX_CHUNKS:  # the traced graph is the judge
            k = min(MAX_CHUNKS, 2 * k)
            choice = trace("chunked", k)
        if choice.estimate.total_mib > budget:
            raise ConfigError(f"DANet at {h}x{w} needs {choice.estimate.total_mib:.0f} MiB with PAM in {k} query "
                              f"chunks, above {where}: use a smaller --imgsz, output stride 16 or a larger --jetson")
    else:
        chunks = cfg.attention_chunks
        named = cfg.attention == "chunked" and chunks is None  # the form named without a count: auto's chunks
        if named:
            chunks = named_chunks(batch, positions)
        choice = trace(cfg.attention, chunks if cfg.attention == "chunked" else None)
        if named and choice.estimate.total_mib > budget:  # then the fewest the memory model says fit, traced
            k = chunks_needed(choice.estimate, batch, positions, budget)
            if k is not None and chunks < k <= positions:
                choice = trace("chunked", k)
        if choice.estimate.total_mib > budget:
            raise ConfigError(f"the {cfg.attention} form at {h}x{w} needs {choice.estimate.total_mib:.0f} MiB "
                              f"(attention map {choice.estimate.attention.map_mib:.0f} MiB), above {where}: use "
                              "--attention auto (chunks the attention to fit) or a smaller --imgsz")
    est = choice.estimate
    asked = "" if cfg.attention in ("auto", choice.form) else \
        f" (--attention {cfg.attention} with {cfg.attention_chunks} query chunk is this form: the whole map at once)"
    log(f"PAM: {choice.form}" + (f", {choice.chunks} query chunks" if choice.form == "chunked" else asked)
        + f"; largest attention map {est.attention.map_mib:.1f} MiB, {est.attention.gflop:.1f} GFLOP; graph needs "
        f"{est.total_mib:.0f} MiB (weights {est.weights_mib:.0f}, activations {est.activations_mib:.0f}) of "
        f"{where}")
    return choice
