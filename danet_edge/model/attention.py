"""The forms of DANet's position attention (PAM, paper section 3.2): one result, different memory and kernels.

With ``L = H*W`` positions (``H, W`` at the output stride), ``q: (N, L, d)``, ``k: (N, d, L)``, ``v: (N, C, L)``
(``d = C/8``), every form returns ``v softmax(q k)^T`` as ``(N, C, L)`` float, with no ``1/sqrt(d)`` scale:

* ``explicit`` (the paper's): MatMul -> Softmax -> Transpose -> MatMul. Peak attention map ``N L^2`` elements;
  MatMul FLOPs ``2 N L^2 (d + C)``.
* ``chunked``: for each of ``k`` static slices of the queries, ``softmax(q_i k) V^T`` (V transposed once), the
  slices concatenated (each row's softmax is independent). Peak map ``N L^2 / k`` (one slice at a time); the
  same FLOPs.
* ``heads``: V split into ``h = C/d`` heads of ``d`` channels, Q and K shared by every head (Expand), so Q, K
  and V have one head size: the shape TensorRT's fused multi-head attention matches. Peak map ``N h L^2``
  unfused (h maps), ``O(N L)`` fused; MatMul FLOPs ``2 N h L^2 2d`` (1.8x the explicit form's for ``C = 8d``).
* ``sdpa`` (PyTorch only, exports as ``explicit``): ``torch.nn.functional.scaled_dot_product_attention``,
  ``O(N L)`` memory on CUDA with the flash / memory-efficient kernels.

All are exact rewrites: each query row's softmax is computed over all ``L`` keys in every form, so they differ
only by float rounding (relative L2 ~1e-7 in FP32).

Why ``heads``: TensorRT's multi-head attention fusion needs Q, K and V with one head size (FP16: 16..256, a
multiple of 8; TensorRT developer guide, "Multi-Head Attention Fusion"); PAM's V has ``C = 8d`` channels, so the
paper's form never fuses and the ``(L, L)`` map is materialised. Split into 8 heads of ``d`` channels, V matches
Q and K; every head sees the same ``softmax(q k)``, so the result is unchanged. Whether a given TensorRT release
fuses it is a fact of the device (``build`` records ``attention_fused``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .forms import chunk_bounds, reference_chunks

__all__ = ["EnergyRange", "measure_pam_energy", "pam_chunked", "pam_energy_max", "pam_explicit", "pam_for_export",
           "pam_heads"]


def pam_explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The paper's form: ``(N, L, d), (N, d, L), (N, C, L) -> (N, C, L)``; holds the ``(N, L, L)`` map."""
    attention = torch.softmax(torch.bmm(q, k), dim=-1)  # (N, L, L)
    return torch.bmm(v, attention.transpose(1, 2))  # (N, C, L)


def pam_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunks: int) -> torch.Tensor:
    """Query-chunked form: for each of ``chunks`` static slices of the queries, ``softmax(q_i k) V^T`` as
    ``(N, L/chunks, C)``, concatenated along the positions and transposed once; holds one ``(N, L/chunks, L)``
    slice of the map at a time. V is transposed once (``L x C``), never a map slice. Shapes as
    :func:`pam_explicit`; one chunk is the explicit form itself."""
    bounds = chunk_bounds(int(q.shape[1]), chunks)  # static under tracing: the graph gets fixed Slices
    if len(bounds) == 1:
        return pam_explicit(q, k, v)
    vt = v.transpose(1, 2)  # (N, L, C)
    rows = [torch.bmm(torch.softmax(torch.bmm(q[:, a:b], k), dim=-1), vt) for a, b in bounds]  # (N, l, C) each
    return torch.cat(rows, dim=1).transpose(1, 2)  # (N, C, L)


def pam_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Multi-head form: V as ``h = C/d`` heads of ``d`` channels, Q and K repeated for every head, the scale 1
    applied to Q before the first MatMul (where TensorRT's attention pattern has its scale).

    ``(N, L, d), (N, d, L), (N, C, L) -> (N, C, L)``; needs ``C`` a multiple of ``d``.

    Raises:
        ValueError: ``C`` is not a multiple of ``d``.
    """
    n, length, d = (int(s) for s in q.shape)  # static under tracing: Expand / Reshape get fixed shapes
    c = int(v.shape[1])
    if c % d:
        raise ValueError(f"PAM heads form: V has {c} channels, not a multiple of the head size {d}")
    h = c // d
    qh = (q * 1.0).unsqueeze(1).expand(n, h, length, d)  # (N, h, L, d)
    kh = k.unsqueeze(1).expand(n, h, d, length)  # (N, h, d, L)
    vh = v.reshape(n, h, d, length).transpose(2, 3)  # (N, h, L, d)
    out = torch.matmul(torch.softmax(torch.matmul(qh, kh), dim=-1), vh)  # (N, h, L, d)
    return out.transpose(2, 3).reshape(n, c, length)


class _FormForExport(torch.autograd.Function):
    """The explicit or heads form as ``torch.onnx.export`` writes it, computed as the chunked form.

    The TorchScript exporter runs the model once to record its ops; running the explicit form would hold the
    whole ``(N, L, L)`` map (4 GiB at 1024x2048, 32 GiB for the heads form's 8 maps) only to learn the graph's
    shapes. ``forward`` computes the same values chunked (``forms.reference_chunks``), and ``symbolic`` writes
    the form's own ONNX nodes, node for node what tracing :func:`pam_explicit` / :func:`pam_heads` writes
    (torch.onnx, "Static Symbolic Method" of ``autograd.Function``).
    """

    @staticmethod
    def forward(ctx, q, k, v, form, n, length, d, c):  # type: ignore[override]
        return pam_chunked(q, k, v, reference_chunks(n, length))

    @staticmethod
    def symbolic(g, q, k, v, form, n, length, d, c):  # pragma: no cover - run by torch.onnx.export only
        def const(values):
            return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

        def unsqueeze(x):
            return g.op("Unsqueeze", x, const([1])) if g.opset >= 13 else g.op("Unsqueeze", x, axes_i=[1])

        def softmax(x, rank):  # opset < 13 flattens to 2-D at the axis: torch names the last axis by number
            return g.op("Softmax", x, axis_i=-1 if g.opset >= 13 else rank - 1)

        if form == "explicit":
            attention = softmax(g.op("MatMul", q, k), 3)  # (N, L, L)
            return g.op("MatMul", v, g.op("Transpose", attention, perm_i=[0, 2, 1]))  # (N, C, L)
        def reshape(x, shape):  # Reshape has allowzero from opset 14; torch writes it as 0
            return g.op("Reshape", x, const(shape), **({"allowzero_i": 0} if g.opset >= 14 else {}))

        h = c // d
        one = g.op("Constant", value_t=torch.tensor(1.0))
        qh = g.op("Expand", unsqueeze(g.op("Mul", q, one)), const([n, h, length, d]))  # (N, h, L, d)
        kh = g.op("Expand", unsqueeze(k), const([n, h, d, length]))  # (N, h, d, L)
        vh = g.op("Transpose", reshape(v, [n, h, d, length]), perm_i=[0, 1, 3, 2])  # (N, h, L, d)
        out = g.op("MatMul", softmax(g.op("MatMul", qh, kh), 4), vh)  # (N, h, L, d)
        return reshape(g.op("Transpose", out, perm_i=[0, 1, 3, 2]), [n, c, length])


def pam_for_export(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, form: str) -> torch.Tensor:
    """PAM in ``form`` (``explicit`` or ``heads``) while ``torch.onnx.export`` traces: the graph gets the form's
    nodes, the trace holds one slice of the map at a time. Shapes as :func:`pam_explicit`.

    Raises:
        ValueError: ``form`` is not explicit or heads; heads with ``C`` not a multiple of ``d``.
    """
    if form not in ("explicit", "heads"):
        raise ValueError(f"pam_for_export writes the explicit or heads form, not {form!r}")
    n, length, d = (int(s) for s in q.shape)
    c = int(v.shape[1])
    if form == "heads" and c % d:
        raise ValueError(f"PAM heads form: V has {c} channels, not a multiple of the head size {d}")
    return _FormForExport.apply(q, k, v, form, n, length, d, c)


def pam_energy_max(q: torch.Tensor, k: torch.Tensor) -> float:
    """Largest ``|q k|`` of PAM's energy (the softmax's input, no scale), computed in slices of the queries so the
    ``(N, L, L)`` map is never held whole. ``q: (N, L, d)``, ``k: (N, d, L)`` float; returns a Python float."""
    n, length = int(q.shape[0]), int(q.shape[1])
    return max(float(torch.bmm(q[:, a:b], k).abs().amax()) for a, b in chunk_bounds(length, reference_chunks(n, length)))


@dataclass
class EnergyRange:
    """What :func:`measure_pam_energy` saw: the largest ``|Q^T K|`` over every PAM call and the images counted."""

    max_abs: float = 0.0
    images: int = 0


@contextmanager
def measure_pam_energy(model: torch.nn.Module) -> Iterator[EnergyRange]:
    """Within the block, every forward of ``model.head.sa`` (DANet's PAM) records its largest ``|Q^T K|`` (FP32)
    into the yielded :class:`EnergyRange`; one extra ``Q K`` product per call, in slices. Export reads it from
    the PyTorch reference it already runs (``graph.precision.decide_pam_energy`` decides the FP16 island)."""
    pam = model.head.sa
    seen = EnergyRange()

    def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        x = args[0]
        q = module.query_conv(x).flatten(2).transpose(1, 2)  # (N, L, d)
        k = module.key_conv(x).flatten(2)  # (N, d, L)
        seen.max_abs = max(seen.max_abs, pam_energy_max(q, k))
        seen.images += int(x.shape[0])

    handle = pam.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()
