"""What a built engine's attention and memory allow, and the weak FP16 build's FP32 islands (no TensorRT import).

* :func:`engine_memory`: the engine's activation memory (``device_memory_size_v2``) beside the memory model's estimate
  and the board's budget (``tensorrt.memory`` in the engine's manifest).
* :func:`judge_attention`: an engine above the budget is refused; a fusible PAM form (heads, attention-op) that TensorRT
  did not fuse is refused when its FP16 energy could overflow, else said plainly (developer guide, "Multi-Head
  Attention Fusion": the fused kernel accumulates ``Q K^T`` and the softmax in FP32; unfused, the map is written in
  the graph's type).
* :func:`pin_islands`: weakly typed ``--fp16`` on TensorRT 10.x keeps the FP16 graph's FP32 islands in FP32.
* :data:`AUX_STREAMS_WHY`: why a chunked graph is built with ``max_aux_streams = 0``.

Not executed against a real TensorRT here (CI runs them against the real 10.3 / 11.4 bindings and the stand-in).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..core.errors import EngineError
from ..core.manifest import Manifest

if TYPE_CHECKING:
    from .plan import BuildPlan

__all__ = ["AUX_STREAMS_WHY", "MEMORY_GAP", "engine_memory", "judge_attention", "pin_islands"]


#: Why ``build`` runs a chunked graph's attention on the main stream only (the manifest quotes it).
AUX_STREAMS_WHY = ("chunked PAM: the k chunk branches are independent, and TensorRT may run them on auxiliary streams "
                   "whose activation memory is not reused across streams (IBuilderConfig::setMaxAuxStreams, NvInfer.h "
                   "10.3), which would hold k map slices at once instead of one")
#: Engine activation memory above or below the memory model's estimate by more than this share is a warning.
MEMORY_GAP = 0.25


def engine_memory(manifest: Manifest, device_bytes: int, engine_bytes: int, fused: bool | str) -> dict[str, Any]:
    """The engine's memory beside the memory model's (MiB): ``device_mib`` (activations, the engine's
    ``device_memory_size_v2``), ``engine_mib`` (the serialized engine, about its weights), ``estimate_mib`` (the
    graph's activation peak, ``manifest.extra["memory"]["activations_mib"]``), ``gap`` (device / estimate - 1),
    ``budget_mib`` (export's budget for weights + activations, ``extra["attention"]["budget_mib"]``) and
    ``within_budget``. A fused attention holds no map, so its engine may sit well under the estimate."""
    est = (manifest.extra.get("memory") or {}).get("activations_mib")
    budget = (manifest.extra.get("attention") or {}).get("budget_mib")
    device, engine = device_bytes / 2**20, engine_bytes / 2**20
    out: dict[str, Any] = {"device_mib": round(device, 1), "engine_mib": round(engine, 1),
                           "estimate_mib": est, "budget_mib": budget, "attention_fused": fused}
    if isinstance(est, (int, float)) and est > 0:
        out["gap"] = round(device / est - 1, 3)
    if isinstance(budget, (int, float)):
        out["within_budget"] = device + engine <= budget
    return out


def judge_attention(onnx_path: Path, manifest: Manifest, fused: bool | str, memory: dict[str, Any],
                     log: Callable[[str], None], precision: str = "fp32", energy_nodes: tuple[str, ...] = (),
                     kept_fp32: tuple[str, ...] = ()) -> None:
    """What the built engine's attention and memory allow: an engine above the board's budget is refused; a fusible
    form (heads, attention-op) that did not fuse is refused when its FP16 energy could overflow (PAM's measured
    energy does not fit FP16 with the margin: ``graph.precision.PamEnergy``), else said plainly; ``unknown`` and a
    memory gap above :data:`MEMORY_GAP` are warnings.

    ``precision``: what the engine computes in (the build plan's: a weak ``--fp16`` build of an FP32 graph is FP16);
    ``energy_nodes``: PAM's energy MatMuls; ``kept_fp32``: the nodes the engine keeps in FP32 (the graph's FP32
    islands, or the weak build's pinned ones). The energy is stored in FP16 only when the engine is FP16 / INT8 and
    no energy MatMul is kept in FP32 (a graph exported before the energy was measured keeps it there).

    Raises:
        EngineError: one line naming the chunked form (nothing is written).
    """
    from ..graph.precision import FUSIBLE_FORMS, PamEnergy

    attention = manifest.extra.get("attention") or {}
    form = attention.get("form")
    need = memory["device_mib"] + memory["engine_mib"]
    if memory.get("within_budget") is False:
        raise EngineError(f"{onnx_path.name}: the engine needs {need:.0f} MiB (activations {memory['device_mib']:.0f}, "
                          f"engine {memory['engine_mib']:.0f}), above the {memory['budget_mib']:.0f} MiB export planned "
                          "for the board: export it again with --attention chunked (or auto) or a smaller --imgsz; "
                          "nothing written")
    if form in FUSIBLE_FORMS and fused is False:
        energy = PamEnergy.from_record(form, attention.get("energy"))
        stored_fp16 = precision != "fp32" and not set(energy_nodes) & set(kept_fp32)
        if stored_fp16 and not energy.fits_fp16:
            measured = "not measured" if energy.max_abs is None else f"measured up to {energy.max_abs:.4g}"
            raise EngineError(f"{onnx_path.name}: TensorRT did not fuse PAM's {form} attention, so the engine stores its "
                              f"energy in FP16 ({measured}, FP16 holds 65504) and holds {attention.get('heads', 8)} maps: "
                              "export it with --attention chunked instead; nothing written")
        log(f"warning: TensorRT did not fuse PAM's {form} attention: the engine holds {attention.get('heads', 8)} "
            "attention maps unfused (the chunked form holds a slice of one for the same result)")
    elif form in FUSIBLE_FORMS and fused == "unknown":
        log(f"warning: whether TensorRT fused PAM's {form} attention cannot be read from this engine's layers: run "
            "danet-edge check ENGINE --reference reference/ on this device (it catches inf/NaN)")
    gap = memory.get("gap")
    if isinstance(gap, float) and abs(gap) > MEMORY_GAP:
        log(f"warning: the engine's activation memory {memory['device_mib']:.0f} MiB is {gap:+.0%} off the memory "
            f"model's {memory['estimate_mib']:.0f} MiB" + (" (fused attention: no map held)" if fused is True else ""))


def pin_islands(trt: Any, network: Any, config: Any, plan: "BuildPlan", onnx_path: Path) -> list[str]:
    """Weakly typed ``--fp16`` (TensorRT 10.x): the FP16 graph's FP32 islands (``plan.fp32_islands``: CAM's energy
    chain, and PAM's where its measured energy needs it) pinned to FP32, precision and every output type, under
    ``OBEY_PRECISION_CONSTRAINTS`` (without the flag TensorRT 10 treats a layer's precision as ignorable: developer
    guide, "Layer-Level Control of Precision"). A layer is matched to its ONNX node by name or by the parser's
    ``[ONNX Layer: name]`` metadata. Returns the pinned layers' names.

    Raises:
        EngineError: an island node that no layer of the parsed network carries (nothing would be pinned).
    """
    from .inspector import onnx_layer_names

    wanted = set(plan.fp32_islands)
    pinned, found = [], set()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        nodes = set(onnx_layer_names(getattr(layer, "metadata", ""))) | {layer.name}
        hit = nodes & wanted
        if not hit:
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)
        found |= hit
    missing = sorted(wanted - found)
    if missing:
        raise EngineError(f"{onnx_path.name}: --fp16 must keep {missing[0]} in FP32 (it overflows FP16) but no layer of "
                          "the parsed network carries it; build the strongly typed model_fp16.onnx instead")
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return pinned
