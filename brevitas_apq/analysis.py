"""Cost model of a quantised model: size in bits, integer operations, zero-point overhead.

Model size
----------
``model_size_bits`` counts, per quantiser, the stored integers and the quantisation parameters
that the deployed model must keep:

* weights and biases: ``numel * bits``;
* every quantiser (weights, biases and activations): a 32-bit floating-point scale, plus a
  ``bits``-wide integer zero point where the quantiser uses one (AQ, or APQ that chose AQ).

The float model's size is ``32 * number of parameters``.

Integer operations and the cost of zero points
----------------------------------------------
``operation_counts(model)`` counts, for one inference (one window of ``T`` steps), the integer
multiply-accumulates of every product, keyed by operand bit widths (``"4x8"``: 4-bit left
operand -- the activation -- times 8-bit right operand -- the weight), the integer additions
(bias adds, positional and residual adds, average pooling), and the extra operations that zero
points cause at run time, under the quantisers' *current* SQ / AQ decisions.

With per-tensor quantisation ``x = s_x (q_x - z_x)``, ``w = s_w (q_w - z_w)``, one output of a
product over ``K`` terms is ``s_x s_w`` times

    sum_k (q_x,k - z_x)(q_w,k - z_w)
        = sum_k q_x,k q_w,k  -  z_w sum_k q_x,k  -  z_x sum_k q_w,k  +  K z_x z_w

* ``sum q_x q_w`` is the MAC array: the same ``M K N`` MACs with or without zero points (the
  operands stay ``b``-bit integers; the zero points are handled by the other terms).
* ``K z_x z_w`` is a constant: folded into the bias (linear layers) or the output requantiser
  (attention matmuls). Free.
* ``z_x sum_k q_w,k``: for a linear layer the weights are constant, so this is a constant per
  output and folds into the bias. Free: an **AQ activation into an SQ or AQ linear costs
  nothing** at run time.
* ``z_w sum_k q_x,k`` depends on the input: with a weight zero point every input vector needs its
  sum ``sum_k q_x,k`` (``K`` additions, shared by all outputs because ``z_w`` is per tensor) and
  every output one multiply-subtract. A linear ``(M x K) @ (K x N)`` with an AQ weight costs
  ``M (K + N)`` extra operations.
* Activation-by-activation products (``q @ k^T`` and ``softmax @ v``, per head) have no constant
  operand, so **both** cross terms run: ``z_b != 0`` costs ``M K`` (row sums of ``a``) + ``M N``,
  ``z_a != 0`` costs ``K N`` (column sums of ``b``) + ``M N``. The softmax output is unsigned with
  zero point 0, so ``softmax @ v`` only pays for an AQ ``v``. (The ``z_k`` term of the scores is
  constant along a softmax row and would cancel in an exact softmax, but the scores quantiser
  clips before the softmax, so a bit-exact deployment computes it.)
* Requantisation to a grid with a zero point costs nothing extra: the output offset ``z_y`` is
  added to the rounding constant of the fixed-point requantiser, or shifts FINN's thresholds.
* Adds of two operands through one shared quantiser (positional encoding, both residuals):
  ``s (q_a - z) + s (q_b - z) = s (q_a + q_b - 2 z)``. We add the raw integers (one addition per
  element, as with SQ; the sum is ``b + 1`` bits wide) and let the *consumer* absorb the constant
  ``2 z``: the linears L2-L4 after the positional add fold it into their bias like any input
  zero point; the residual quantiser and the normalisations fold it into their offset (a
  LayerNorm is invariant to a constant shift over the features; an inference BatchNorm is
  affine per channel). So shared zero points cost 0 run-time operations here; a naive
  implementation would subtract ``2 z`` per element (``T d`` per add). Average pooling likewise
  sums raw integers (``T z`` folds into the pooling quantiser).

Counting conventions: one MAC = one operation; a bias add = one addition per output; an
elementwise add = one per element; pooling = one accumulation per input element; a zero-point
row/column sum = one addition per summed element; a zero-point correction = one operation per
output. Nonlinear parts (requantisation / thresholds, softmax, normalisation, the ``1/sqrt(d_h)``
scale) are not counted: their cost does not depend on SQ / AQ. ``int_ops`` is everything
counted, zero-point operations included, so ``int_ops - zero_point_ops`` is the cost of the same
model with every quantiser on SQ.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from torch import nn

from brevitas_apq.quant import AdaptiveIntQuant, iter_quantizers

SCALE_BITS = 32
FLOAT_BITS = 32


# --- size -----------------------------------------------------------------------------------


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


def size_summary(model: nn.Module) -> dict[str, int]:
    """Model size split into weights, biases and quantisation parameters (scales, zero points)."""
    rows = size_breakdown(model)
    weight = sum(r["value_bits"] for r in rows if r["quantizer"].endswith(".weight_quant"))
    bias = sum(r["value_bits"] for r in rows if r["quantizer"].endswith(".bias_quant"))
    scales = SCALE_BITS * len(rows)
    zero_points = sum(r["param_bits"] - SCALE_BITS for r in rows)
    return {
        "weight_bits": weight,
        "bias_bits": bias,
        "scale_bits": scales,
        "zero_point_bits": zero_points,
        "total_bits": weight + bias + scales + zero_points,
    }


# --- operations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Operand:
    """One integer operand of a product: its width, whether it has a zero point in force, and
    whether it is a constant (weights), so that its zero-point terms fold offline."""

    bits: int
    zero_point: bool = False
    constant: bool = False
    signed: bool = True

    @classmethod
    def of(cls, core: AdaptiveIntQuant, *, constant: bool = False, extra_bits: int = 0) -> Operand:
        """The operand a quantiser produces (``extra_bits=1`` for the sum of two of them)."""
        return cls(
            bits=int(core.bit_width) + extra_bits,
            zero_point=bool(core.use_zero_point),
            constant=constant,
            signed=int(core.min_int) < 0,
        )

    @property
    def label(self) -> str:
        return f"{'' if self.signed else 'u'}{self.bits}b {'AQ' if self.zero_point else 'SQ'}"


def matmul_zero_point_ops(a: Operand, b: Operand, m: int, k: int, n: int, groups: int = 1) -> int:
    """Run-time operations caused by zero points in ``groups`` products ``(m x k) @ (k x n)``.

    ``z_b`` needs the row sums of ``a`` (``m k``) and one correction per output (``m n``) unless
    ``a`` is constant; ``z_a`` needs the column sums of ``b`` (``k n``) and ``m n`` corrections
    unless ``b`` is constant. ``k z_a z_b`` is always a constant (see the module docstring).

    Example:
        >>> act, weight = Operand(8, zero_point=True), Operand(4, constant=True)
        >>> matmul_zero_point_ops(act, weight, m=24, k=16, n=16)  # AQ input, SQ weight
        0
        >>> matmul_zero_point_ops(Operand(8), Operand(4, True, True), m=24, k=16, n=16)
        768
    """
    ops = 0
    if b.zero_point and not a.constant:
        ops += m * k + m * n
    if a.zero_point and not b.constant:
        ops += k * n + m * n
    return groups * ops


def product_row(
    name: str,
    kind: str,
    a: Operand,
    b: Operand,
    m: int,
    k: int,
    n: int,
    groups: int = 1,
    bias: bool = False,
) -> dict[str, Any]:
    """The cost row of ``groups`` integer products ``(m x k) @ (k x n)`` (plus a bias add).

    ``shape`` reads ``MxKxN`` (``G*MxKxN`` for ``G`` heads); adds read ``rows x cols``.
    """
    macs = groups * m * k * n
    adds = groups * m * n if bias else 0
    zp = matmul_zero_point_ops(a, b, m, k, n, groups)
    return {
        "layer": name,
        "kind": kind,
        "shape": f"{groups}*{m}x{k}x{n}" if groups > 1 else f"{m}x{k}x{n}",
        "a": a.label,
        "b": b.label,
        "mac_bits": f"{a.bits}x{b.bits}",
        "macs": macs,
        "adds": adds,
        "zero_point_ops": zp,
        "int_ops": macs + adds + zp,
    }


def add_row(name: str, kind: str, operand: Operand, rows: int, cols: int) -> dict[str, Any]:
    """The cost row of ``rows x cols`` integer additions (shared zero points fold, see above)."""
    elements = rows * cols
    return {
        "layer": name,
        "kind": kind,
        "shape": f"{rows}x{cols}",
        "a": operand.label,
        "b": "",
        "mac_bits": "",
        "macs": 0,
        "adds": elements,
        "zero_point_ops": 0,
        "int_ops": elements,
    }


def linear_row(
    name: str, layer: nn.Module, rows: int, input_operand: Operand | None = None
) -> dict[str, Any]:
    """Cost row of a ``QuantLinear`` applied to ``rows`` input vectors.

    The input operand defaults to the layer's own ``input_quant`` (which must then be
    quantising); in a model, pass the operand of the quantiser that feeds the layer.
    """
    if input_operand is None:
        core = _core(layer.input_quant)
        if core is None:
            raise ValueError(
                f"{name}: the layer has no input quantiser; pass the operand that feeds it"
            )
        input_operand = Operand.of(core)
    weight = _core(layer.weight_quant)
    if weight is None:
        raise ValueError(f"{name}: the layer's weights are not quantised by AdaptiveIntQuant")
    return product_row(
        name,
        "linear",
        input_operand,
        Operand.of(weight, constant=True),
        m=rows,
        k=layer.in_features,
        n=layer.out_features,
        bias=layer.bias is not None,
    )


def _core(proxy: nn.Module) -> AdaptiveIntQuant | None:
    for module in proxy.modules():
        if isinstance(module, AdaptiveIntQuant):
            return module
    return None


def operation_counts(model: nn.Module, window: int | None = None) -> dict[str, Any]:
    """Integer operations of one inference of a quantised ``TimeSeriesTransformer``.

    Returns ``int_ops``, ``zero_point_ops``, ``macs``, ``adds``, ``macs_by_bits`` (``{"4x8":
    n}``) and ``per_layer`` (one dict per product or add, in execution order), under the
    quantisers' current decisions. ``window`` defaults to the model's window.
    """
    from brevitas_apq.models import TimeSeriesTransformer

    if not isinstance(model, TimeSeriesTransformer):
        raise TypeError(f"operation_counts needs a TimeSeriesTransformer, got {type(model)}")
    if not model.is_quantized:
        raise ValueError("operation_counts needs a quantised model (built with a BitPlan)")
    c = model.config
    t = c.window if window is None else int(window)
    if t < 1:
        raise ValueError(f"window={window!r} is invalid; allowed: a positive integer")
    heads, d = c.n_heads, c.d_model
    dh = d // heads

    def act(module: nn.Module, extra_bits: int = 0) -> Operand:
        return Operand.of(_core(module), extra_bits=extra_bits)

    def out(layer: nn.Module) -> Operand:
        return Operand.of(_core(layer.output_quant))

    pos = act(model.pos_quant)
    pos_sum = act(model.pos_quant, extra_bits=1)  # q_a + q_pe: one bit wider, zero point 2 z
    rows = [
        linear_row("L1", model.L1, t, act(model.input_quant)),
        add_row("pos_add", "add", pos, t, d),
        linear_row("L2", model.L2, t, pos_sum),
        linear_row("L3", model.L3, t, pos_sum),
        linear_row("L4", model.L4, t, pos_sum),
        product_row("attn_scores", "matmul", out(model.L2), out(model.L3), t, dh, t, heads),
        product_row(
            "attn_context", "matmul", act(model.softmax_quant), out(model.L4), t, t, dh, heads
        ),
        linear_row("L5", model.L5, t, act(model.context_quant)),
        add_row("res1_add", "add", act(model.res1_quant), t, d),
        linear_row("L6", model.L6, t, act(model.norm1_quant)),
        linear_row("L7", model.L7, t, act(model.relu)),
        add_row("res2_add", "add", act(model.res2_quant), t, d),
        add_row("pool", "pool", act(model.norm2_quant), t, d),
        linear_row("L8", model.L8, 1, act(model.pool_quant)),
    ]
    macs_by_bits: Counter[str] = Counter()
    for row in rows:
        if row["macs"]:
            macs_by_bits[row["mac_bits"]] += row["macs"]
    return {
        "window": t,
        "int_ops": sum(r["int_ops"] for r in rows),
        "zero_point_ops": sum(r["zero_point_ops"] for r in rows),
        "macs": sum(r["macs"] for r in rows),
        "adds": sum(r["adds"] for r in rows),
        "macs_by_bits": dict(sorted(macs_by_bits.items())),
        "per_layer": rows,
    }


__all__ = [
    "FLOAT_BITS",
    "SCALE_BITS",
    "Operand",
    "add_row",
    "float_size_bits",
    "linear_row",
    "matmul_zero_point_ops",
    "model_size_bits",
    "operation_counts",
    "product_row",
    "size_breakdown",
    "size_summary",
]
