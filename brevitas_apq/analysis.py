"""Cost model of a quantised model: size in bits, integer operations, zero-point overhead.

Model size (``model_size_bits``) counts, per quantiser, the stored integers and the quantisation
parameters that the deployed model must keep:

* weights and biases: ``numel * bits``;
* every quantiser (weights, biases and activations): a 32-bit floating-point scale, plus a
  ``bits``-wide integer zero point where the quantiser uses one (AQ, or APQ that chose AQ).

The float model's size is ``32 * number of parameters``.
"""

from __future__ import annotations

from torch import nn

from brevitas_apq.quant import iter_quantizers

SCALE_BITS = 32
FLOAT_BITS = 32


def float_size_bits(model: nn.Module) -> int:
    """Size of a float32 model: 32 bits per parameter."""
    return FLOAT_BITS * sum(p.numel() for p in model.parameters())


def size_breakdown(model: nn.Module) -> list[dict]:
    """One row per quantiser: name, scheme in force, bits, stored values and their size."""
    rows = []
    for name, core in iter_quantizers(model):
        owner, _, role = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        stored = 0
        if role == "weight_quant":
            stored = module.weight.numel()
        elif role == "bias_quant" and getattr(module, "bias", None) is not None:
            stored = module.bias.numel()
        bits = int(core.bit_width)
        zero_point_bits = bits if core.scheme == "AQ" else 0
        rows.append(
            {
                "quantizer": name,
                "scheme": core.scheme,
                "bits": bits,
                "stored_values": stored,
                "value_bits": stored * bits,
                "param_bits": SCALE_BITS + zero_point_bits,
            }
        )
    return rows


def model_size_bits(model: nn.Module) -> int:
    """Deployed size of a quantised model in bits (see the module docstring)."""
    return sum(r["value_bits"] + r["param_bits"] for r in size_breakdown(model))
