"""Quantization-aware training: fake quantization at the places an INT8 recipe's ONNX graph has Q/DQ.

A QAT *record* (plain JSON-able data, made by ``export.qat.qat_plan`` from the recipe's PTQ graph, kept in
the QAT checkpoint's ``qat`` entry) says where the graph quantizes and with which scales::

    {"format": "danet-edge-qat/1", "recipe": "int8-tensorrt", "target": "tensorrt", "image_size": [H, W],
     "source_sha256": "...", "calibration": {...}, "learned": false, "epochs": 0,
     "activations": [{"tensor": "/backbone/maxpool/MaxPool_output_0", "scale": 0.031, "zero_point": 0,
                      "qmin": -128, "qmax": 127, "sites": [["input", "backbone.layer1.0.conv1"],
                                                           ["skip", "backbone.layer1.0"]]}, ...],
     "weights": ["backbone.conv1", ...],
     "ranges": {"<FP32 graph tensor>": [lowest, highest], ...}}

* ``activations``: one quantizer per quantized tensor of the graph (per-tensor scale and zero point, the
  graph's integer range), shared by every place that reads it, as the graph shares one Q/DQ pair. A *site*
  is where the tensor is in the PyTorch model: ``input`` of a Conv module, ``output`` of a Conv module (after
  the BatchNorm the ONNX graph folded into it), ``skip``, the residual Add's skip input of a ResNet block
  (its ``skip`` module), or ``module_input``, the first input of a module (every reader inside it sees the
  quantized tensor, as every reader of the graph's DequantizeLinear does).
* ``weights``: the Conv modules whose weights the graph holds as INT8: per output channel, symmetric, the
  scale ``max|w_c| / 127``, as ONNX Runtime's ``quantize_static`` computes it (``WeightSymmetric``, range
  -127..127). Scaling a channel does not change which integer each weight rounds to, so quantizing the
  unfolded weight here equals quantizing the BatchNorm-folded weight in the graph while BatchNorm is frozen
  (:func:`freeze_batchnorm`: running statistics, as the graph folds them).
* ``ranges``: the calibration ranges of every tensor ONNX Runtime's quantizer asks for; export replaces the
  learned tensors' ranges by the learned scales (``export.qat.learned_ranges``) and quantizes again.

The activation scales are learned (LSQ: Esser et al., "Learned Step Size Quantization", ICLR 2020, with its
gradient scale ``1 / sqrt(numel * qmax)``) through PyTorch's ``torch._fake_quantize_learnable_per_tensor_affine``;
the zero points stay the calibrated ones. Weights go through ``torch.fake_quantize_per_channel_affine``
(straight-through gradient).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import nn

from ..core.errors import CheckpointError

__all__ = ["QAT_FORMAT", "SITE_KINDS", "WEIGHT_QMAX", "ActivationQuantizer", "QatQuantizers", "attach_qat",
           "fake_quant_weight", "freeze_batchnorm", "validate_qat_record", "float_state_dict"]

QAT_FORMAT = "danet-edge-qat/1"
SITE_KINDS = ("input", "output", "skip", "module_input")
#: Symmetric INT8 weights: -127..127 (ONNX Runtime's ``get_qmin_qmax_for_qType(..., symmetric=True)``).
WEIGHT_QMAX = 127
#: The integer ranges an activation quantizer may have: INT8 (the TensorRT target) or UINT8 (the CPU target).
_RANGES = {(-128, 127), (0, 255)}
_MAX_ENTRIES = 100_000  # a record from a file is untrusted: no larger than any DANet needs


class ActivationQuantizer(nn.Module):
    """Per-tensor fake quantization with a learned scale.

    ``forward(x)``: ``x`` any shape, float (FP16 under autocast is taken to FP32) ->
    ``(clamp(round(x / s) + z, qmin, qmax) - z) * s`` in float32, the value ONNX's QuantizeLinear ->
    DequantizeLinear pair gives; gradients reach ``x`` (straight through inside the range) and the scale (LSQ).
    """

    def __init__(self, scale: float, zero_point: int, qmin: int, qmax: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(scale)], dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor([float(zero_point)], dtype=torch.float32))
        self.qmin, self.qmax = int(qmin), int(qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        per_image = max(1, x[0].numel() if x.dim() > 0 else 1)
        grad_factor = 1.0 / math.sqrt(per_image * self.qmax)
        scale = self.scale.clamp(min=1e-12)
        return torch._fake_quantize_learnable_per_tensor_affine(x, scale, self.zero_point, self.qmin, self.qmax,
                                                                grad_factor)


def fake_quant_weight(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric INT8 fake quantization of a Conv weight ``(C_out, C_in/groups, kH, kW)``:
    scale ``max|w_c| / 127`` per channel (not learned: recomputed from the weight, as the export does),
    straight-through gradient."""
    w = weight.float()
    scale = w.detach().abs().flatten(1).amax(1).clamp(min=torch.finfo(torch.float32).tiny) / WEIGHT_QMAX
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -WEIGHT_QMAX, WEIGHT_QMAX).to(weight.dtype)


class _QatConv2d(nn.Conv2d):
    """A Conv2d whose input (``_qat_input``) and weights (``_qat_weight``) are fake-quantized. Only the class of
    an existing module is swapped (:func:`attach_qat`): parameter names and the state dict stay the Conv2d's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - nn.Conv2d's
        quant = self.__dict__.get("_qat_input")
        if quant is not None:
            x = quant(x)
        weight = fake_quant_weight(self.weight) if self.__dict__.get("_qat_weight") else self.weight
        return self._conv_forward(x, weight, self.bias)


def _quant_first_input(quant: ActivationQuantizer):
    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (quant(args[0]), *args[1:])

    return hook


def _quant_output(quant: ActivationQuantizer):
    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return quant(output)

    return hook


class QatQuantizers(nn.Module):
    """The activation quantizers of a model under QAT, in the record's order (``model.qat``); the parameters
    are the learned scales (``activations.<i>.scale``)."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__()
        self._record = record
        self.activations = nn.ModuleList(ActivationQuantizer(a["scale"], a["zero_point"], a["qmin"], a["qmax"])
                                         for a in record["activations"])

    def record(self, learned: bool = True, epochs: int | None = None) -> dict[str, Any]:
        """The QAT record with the current scales (Python floats: exact for float32)."""
        acts = [{**a, "scale": float(q.scale.detach().cpu()[0])}
                for a, q in zip(self._record["activations"], self.activations)]
        out = {**self._record, "activations": acts, "learned": learned}
        if epochs is not None:
            out["epochs"] = int(epochs)
        return out


def _module(model: nn.Module, path: str, what: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise CheckpointError(f"QAT record: {what} {path!r} is not a module of this DANet (a record made for "
                              "another model?)") from None


def _conv(model: nn.Module, path: str) -> nn.Conv2d:
    m = _module(model, path, "Conv")
    if not isinstance(m, nn.Conv2d):
        raise CheckpointError(f"QAT record: {path!r} is a {type(m).__name__}, not a Conv2d")
    return m


def _after_conv(model: nn.Module, path: str) -> nn.Module:
    """The module whose output is the ONNX Conv's output: the BatchNorm the graph folded into the Conv (``bnK``
    beside ``convK``, or the next entry of a Sequential), else the Conv itself."""
    conv = _conv(model, path)
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    bn: nn.Module | None = None
    if isinstance(parent, nn.Sequential) and name.isdigit() and int(name) + 1 < len(parent):
        bn = parent[int(name) + 1]
    elif name.startswith("conv"):
        bn = getattr(parent, "bn" + name[4:], None)
    if isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels:
        return bn
    return conv


def attach_qat(model: nn.Module, record: dict[str, Any]) -> QatQuantizers:
    """Put the fake quantization of ``record`` (validated: :func:`validate_qat_record`) into ``model`` and
    return the quantizers, registered as ``model.qat`` (so DDP and the optimizer see the scales).

    The model's own parameters and their names are unchanged; ``float_state_dict(model)`` is the float
    checkpoint's state dict.

    Raises:
        CheckpointError: a site or weight names no module of this model, or a module of the wrong kind.
    """
    quants = QatQuantizers(record)
    for conv_path in record["weights"]:
        conv = _conv(model, conv_path)
        conv.__class__ = _QatConv2d
        object.__setattr__(conv, "_qat_weight", True)
    for act, quant in zip(record["activations"], quants.activations):
        for kind, path in act["sites"]:
            if kind == "input":
                conv = _conv(model, path)
                if type(conv) is nn.Conv2d:
                    conv.__class__ = _QatConv2d
                object.__setattr__(conv, "_qat_input", quant)
            elif kind == "output":
                _after_conv(model, path).register_forward_hook(_quant_output(quant))
            elif kind == "module_input":
                _module(model, path, "module").register_forward_pre_hook(_quant_first_input(quant))
            else:  # skip
                block = _module(model, path, "residual block")
                skip = getattr(block, "skip", None)
                if not isinstance(skip, nn.Module):
                    raise CheckpointError(f"QAT record: block {path!r} has no skip module")
                skip.register_forward_hook(_quant_output(quant))
    model.qat = quants
    return quants


def freeze_batchnorm(model: nn.Module) -> None:
    """Every BatchNorm of ``model`` to eval mode (running statistics, not updated): what the ONNX graph folds
    into its Convs, so the fake-quantized weights are the graph's (module docstring). Call after ``train()``."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def float_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict without the QAT quantizers (``qat.*``), on CPU: a plain DANet's state dict."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("qat.")}


def _int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def validate_qat_record(record: Any, where: str) -> dict[str, Any]:
    """Check a QAT record read from a file (``where`` names it in the message) and return it.

    Raises:
        CheckpointError: one line naming the bad field (format, recipe, target, image size, a scale that is
            not a positive finite number, a zero point outside its range, a site of an unknown kind, a range
            that is not two finite numbers lowest <= highest, more entries than any DANet has).
    """
    def bad(msg: str) -> CheckpointError:
        return CheckpointError(f"{where}: QAT record: {msg}")

    if not isinstance(record, dict) or record.get("format") != QAT_FORMAT:
        raise bad(f"not a {QAT_FORMAT} record")
    for key in ("recipe", "target", "source_sha256"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise bad(f"{key!r} must be a name")
    size = record.get("image_size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_int(s) and 1 <= s <= 8192 for s in size)):
        raise bad(f"'image_size' must be [H, W] in 1..8192, got {str(size)[:60]}")
    acts, weights, ranges = record.get("activations"), record.get("weights"), record.get("ranges")
    if not isinstance(acts, list) or not acts or len(acts) > _MAX_ENTRIES:
        raise bad("'activations' must be a non-empty list")
    if not isinstance(weights, list) or len(weights) > _MAX_ENTRIES or not all(isinstance(w, str) for w in weights):
        raise bad("'weights' must be a list of module names")
    if not isinstance(ranges, dict) or len(ranges) > _MAX_ENTRIES:
        raise bad("'ranges' must be a dict of tensor -> [lowest, highest]")
    for name, r in ranges.items():
        if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(_finite(v) for v in r) and r[0] <= r[1]):
            raise bad(f"range of {str(name)[:80]!r} must be two finite numbers lowest <= highest, got {str(r)[:60]}")
    for i, a in enumerate(acts):
        if not isinstance(a, dict) or not isinstance(a.get("tensor"), str):
            raise bad(f"activations[{i}] has no tensor name")
        qrange = (a.get("qmin"), a.get("qmax"))
        if qrange not in _RANGES:
            raise bad(f"activations[{i}] ({a['tensor'][:80]}): range {qrange} is neither INT8 nor UINT8")
        if not (_finite(a.get("scale")) and a["scale"] > 0):
            raise bad(f"activations[{i}] ({a['tensor'][:80]}): scale must be a positive finite number, got "
                      f"{str(a.get('scale'))[:40]}")
        if not (_int(a.get("zero_point")) and qrange[0] <= a["zero_point"] <= qrange[1]):
            raise bad(f"activations[{i}] ({a['tensor'][:80]}): zero point outside {qrange}")
        sites = a.get("sites")
        if not isinstance(sites, list) or not sites or not all(
                isinstance(s, (list, tuple)) and len(s) == 2 and s[0] in SITE_KINDS and isinstance(s[1], str)
                for s in sites):
            raise bad(f"activations[{i}] ({a['tensor'][:80]}): sites must be [kind, module] pairs, kind one of "
                      f"{', '.join(SITE_KINDS)}")
    return record
