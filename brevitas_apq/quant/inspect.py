"""Find the quantiser cores in a model and read their decisions and symmetry records."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
from torch import nn

from brevitas_apq.quant.core import AdaptiveIntQuant


def _quantizer_name(module_name: str) -> str:
    # "l1.weight_quant.tensor_quant" -> "l1.weight_quant"; activation proxies nest one level
    # deeper ("...act_quant.fused_activation_quant_proxy.tensor_quant").
    for suffix in (".fused_activation_quant_proxy.tensor_quant", ".tensor_quant"):
        if module_name.endswith(suffix):
            return module_name[: -len(suffix)]
    return module_name


def iter_quantizers(model: nn.Module) -> Iterator[tuple[str, AdaptiveIntQuant]]:
    """Yield ``(name, core)`` for every ``AdaptiveIntQuant`` in ``model``, each instance once.

    Names are those of the Brevitas proxies (``"l8.weight_quant"``, ``"l1.output_quant"``...);
    a quantiser shared by several layers is reported under its first name.
    """
    seen: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, AdaptiveIntQuant) and id(module) not in seen:
            seen.add(id(module))
            yield _quantizer_name(name), module


def scheme_decisions(model: nn.Module) -> dict[str, str]:
    """The scheme each quantiser uses now (``"SQ"`` or ``"AQ"``), by quantiser name."""
    return {name: core.scheme for name, core in iter_quantizers(model)}


def decision_flips(model: nn.Module) -> dict[str, int]:
    """How often each quantiser changed its SQ / AQ decision in training, by quantiser name."""
    return {name: int(core.decision_flips) for name, core in iter_quantizers(model)}


def symmetry_history(model: nn.Module, adaptive_only: bool = False) -> pd.DataFrame:
    """Every recorded training step of every quantiser as a long table.

    Columns: ``quantizer``, ``quant_scheme`` (sq / aq / apq), ``step`` (the quantiser's own
    training-forward count), ``symmetry`` (S) and ``scheme`` (SQ / AQ in force at that step).
    """
    frames = []
    for name, core in iter_quantizers(model):
        if adaptive_only and not core.is_adaptive:
            continue
        rows = core.record.rows()
        frame = pd.DataFrame(rows, columns=["step", "symmetry", "scheme"])
        frame.insert(0, "quant_scheme", core.quant_scheme)
        frame.insert(0, "quantizer", name)
        frames.append(frame)
    columns = ["quantizer", "quant_scheme", "step", "symmetry", "scheme"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
