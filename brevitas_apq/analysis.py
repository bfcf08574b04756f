"""Cost model of a quantised model: size in bits, integer operations, zero-point overhead.

Model size
----------
``model_size_bits`` counts, per quantiser, the stored integers and the quantisation parameters
that the deployed model must keep:

* weights and biases: ``numel * bits``;
* every quantiser (weights, biases and activations): a 32-bit floating-point scale, plus a
  ``bits``-wide integer zero point where the quantiser uses one (AQ, or APQ that chose AQ);
  a weight with per-channel scales keeps one of each per output channel.

The float model's size is ``32 * number of parameters``.

Integer operations and the cost of zero points
----------------------------------------------
``operation_counts(model, example_input)`` counts, for one inference (one window of ``T`` steps
for the Transformer), the integer multiply-accumulates of every product, keyed by operand bit
widths (``"4x8"``: 4-bit left operand -- the activation -- times 8-bit right operand -- the
weight), the integer additions (bias adds, positional and residual adds, average pooling), and
the extra operations that zero points cause at run time, under the quantisers' *current* SQ /
AQ decisions. Nothing is described by hand: a forward pass through the model (any model
quantised with ``brevitas_apq.quantize`` or built from ``brevitas.nn`` layers with this
project's quantisers) follows each integer tensor from the quantiser that produced it to the
layer or function that consumes it. A convolution counts as the product of its ``im2col``
matrix (one row per output position) with its weights, per group.

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

import math
from collections import Counter
from copy import deepcopy
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

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
        stored, channels = 0, 1
        if role == "weight_quant":
            stored = module.weight.numel()
            if core.channel_dim is not None:  # one scale (and zero point) per channel
                channels = module.weight.shape[core.channel_dim]
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
                "scales": channels,
                "param_bits": channels * (SCALE_BITS + zero_point_bits),
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
    scales = SCALE_BITS * sum(r["scales"] for r in rows)
    zero_points = sum(r["param_bits"] for r in rows) - scales
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


# --- operations of any model, from a forward pass ------------------------------------------------

#: Functions that move integers around without computing (their output carries the input's
#: quantiser); anything not listed here or below ends the integer tensor (softmax, norms, ...).
_SHAPE_OPS = frozenset(
    {
        *("transpose", "permute", "reshape", "view", "view_as", "flatten", "unflatten", "squeeze"),
        *("unsqueeze", "contiguous", "expand", "expand_as", "__getitem__", "clone", "detach", "t"),
        *("narrow", "movedim", "swapaxes", "chunk", "split", "unbind", "dropout"),
        *("max_pool1d", "max_pool2d", "max_pool1d_with_indices", "max_pool2d_with_indices"),
        *("_max_pool1d", "_max_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d"),
    }
)
_ADD_OPS = {"add": "add", "__add__": "add", "__radd__": "add", "__iadd__": "add", "add_": "add"}
_ADD_OPS |= {"sub": "sub", "__sub__": "sub", "__isub__": "sub", "sub_": "sub"}
_MATMUL_OPS = {"matmul": "matmul", "__matmul__": "matmul", "bmm": "matmul", "mm": "matmul"}
_REDUCE_OPS = frozenset({"mean", "sum", "adaptive_avg_pool1d", "adaptive_avg_pool2d"})
_POOL_OPS = frozenset({"avg_pool1d", "avg_pool2d"})
_CAT_OPS = frozenset({"cat", "concat", "concatenate", "stack"})
#: Products of two integer tensors that the cost model does not count: refused, not skipped.
_UNCOUNTED_OPS = frozenset(
    {
        *("mul", "__mul__", "__rmul__", "__imul__", "mul_"),
        *("div", "__truediv__", "__rtruediv__", "div_"),
    }
)


@dataclass(frozen=True)
class _Tag:
    """What an integer tensor is: its operand, where it comes from (for row names) and the
    quantiser that produced it (``None`` for the sum of a shared-quantiser add)."""

    operand: Operand
    source: str
    core: AdaptiveIntQuant | None


class _Trace(TorchFunctionMode):
    """One forward pass that follows integer tensors from quantiser to quantiser.

    Brevitas layers are hooked: a compute layer adds its product row and tags its output with
    its output quantiser, an activation layer tags its output with its quantiser. Between them,
    this mode sees every torch function called at model level (not inside Brevitas layers) and
    carries tags through shape operations, counts adds of two integer tensors, products of two
    (``q @ k^T``) and sums / averages over an integer tensor.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[int, tuple[Any, _Tag]] = {}
        self.rows: list[dict[str, Any]] = []
        self.depth = 0  # > 0 inside a Brevitas layer
        self.names: Counter[str] = Counter()
        self.pending: dict[int, list[Operand]] = {}

    def tag(self, obj: Any, tag: _Tag | None) -> None:
        if tag is not None and isinstance(obj, torch.Tensor):
            self.tags[id(obj)] = (obj, tag)  # the tensor is kept, so its id stays unique

    def tag_of(self, obj: Any) -> _Tag | None:
        entry = self.tags.get(id(obj))
        return entry[1] if entry is not None and entry[0] is obj else None

    def row_name(self, base: str) -> str:
        self.names[base] += 1
        return base if self.names[base] == 1 else f"{base}#{self.names[base]}"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth == 0 and args:
            self.follow(getattr(func, "__name__", ""), args, kwargs, out)
        return out

    def follow(self, op: str, args: tuple, kwargs: dict, out: Any) -> None:
        if op == "__rmatmul__" and len(args) > 1:  # b.__rmatmul__(a) is a @ b
            op, args = "matmul", (args[1], args[0], *args[2:])
        first = self.tag_of(args[0])
        if op in _SHAPE_OPS:
            if first is not None:
                for item in out if isinstance(out, tuple | list) else (out,):
                    if isinstance(item, torch.Tensor) and item.is_floating_point():
                        self.tag(item, first)
            return
        if op in _CAT_OPS:
            tags = [self.tag_of(t) for t in args[0]]
            cores = {id(t.core) for t in tags if t is not None and t.core is not None}
            if all(t is not None for t in tags) and len(cores) == 1:
                self.tag(out, tags[0])
            return
        second = args[1] if len(args) > 1 else kwargs.get("other")
        other = self.tag_of(second)
        if op in _ADD_OPS and first is not None and other is not None:
            self.add(_ADD_OPS[op], first, other, out)
        elif op in _MATMUL_OPS and (first is not None or other is not None):
            if first is None or other is None:
                known = first or other
                raise ValueError(
                    f"a product of the integer tensor from {known.source!r} and a float tensor: "
                    "the cost model counts integer products only; quantise both operands"
                )
            self.matmul(_MATMUL_OPS[op], first, other, args[0], second)
        elif op in _UNCOUNTED_OPS and first is not None and other is not None:
            raise ValueError(
                f"{op} of the integer tensors from {first.source!r} and {other.source!r} is not "
                "counted by the cost model (adds, matmuls, sums and averages are)"
            )
        elif op in _REDUCE_OPS and first is not None:
            self.pool(op, first, args[0], args[0].numel())
        elif op in _POOL_OPS and first is not None:
            kernel = args[1] if len(args) > 1 else kwargs["kernel_size"]
            window = math.prod(kernel) if isinstance(kernel, tuple | list) else int(kernel)
            if op == "avg_pool2d" and not isinstance(kernel, tuple | list):
                window *= int(kernel)
            self.pool(op, first, args[0], out.numel() * window)

    def add(self, op: str, a: _Tag, b: _Tag, out: torch.Tensor) -> None:
        shape = tuple(out.shape[1:]) or (1,)
        row = add_row(
            self.row_name(f"{op}({a.source}, {b.source})"),
            "add",
            a.operand,
            shape[0],
            math.prod(shape[1:]),
        )
        shared = a.core is not None and a.core is b.core
        if not shared:  # two grids: rescaled in the sum, which is no longer one integer grid
            row["b"] = b.operand.label
        self.rows.append(row)
        if shared:  # q_a + q_b: one bit wider, zero point 2 z (folded by the consumer)
            tag = _Tag(Operand.of(a.core, extra_bits=1), f"{a.source}+{b.source}", None)
            self.tag(out, tag)

    def matmul(self, op: str, a: _Tag, b: _Tag, x: torch.Tensor, y: torch.Tensor) -> None:
        m = x.shape[-2] if x.dim() > 1 else 1
        k = x.shape[-1]
        n = y.shape[-1] if y.dim() > 1 else 1
        batch = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])
        name = self.row_name(f"{op}({a.source}, {b.source})")
        self.rows.append(product_row(name, "matmul", a.operand, b.operand, m, k, n, batch.numel()))

    def pool(self, op: str, tag: _Tag, x: torch.Tensor, accumulations: int) -> None:
        shape = tuple(x.shape[1:]) or (1,)
        row = add_row(self.row_name(f"{op}({tag.source})"), "pool", tag.operand, 1, 1)
        row.update(shape="x".join(map(str, shape)), adds=accumulations, int_ops=accumulations)
        self.rows.append(row)

    # --- Brevitas layers ------------------------------------------------------------------------

    def enter_compute(self, name: str, layer: nn.Module, args: tuple) -> None:
        core = _core(layer.input_quant) if layer.input_quant.is_quant_enabled else None
        if core is not None:
            operand = Operand.of(core)
        else:
            tag = self.tag_of(args[0]) if args else None
            if tag is None:
                raise ValueError(
                    f"layer {name!r} ({type(layer).__name__}): its input is not an integer "
                    "tensor (no brevitas_apq quantiser feeds it); give it an input quantiser "
                    "(plan role input) or put an activation quantiser in front of it"
                )
            operand = tag.operand
        self.pending.setdefault(id(layer), []).append(operand)
        self.depth += 1

    def exit_compute(self, name: str, layer: nn.Module, args: tuple, out: Any) -> None:
        self.depth -= 1
        operand = self.pending[id(layer)].pop()
        weight = Operand.of(_core(layer.weight_quant), constant=True)
        if isinstance(layer, nn.Linear):
            row = linear_row(name, layer, args[0].numel() // layer.in_features, operand)
        else:  # a convolution: one product row per output position (im2col)
            groups = layer.groups
            k = layer.in_channels // groups * math.prod(layer.kernel_size)
            n = layer.out_channels // groups
            m = out.numel() // layer.out_channels
            row = product_row(
                name, "conv", operand, weight, m, k, n, groups, layer.bias is not None
            )
        self.rows.append(row)
        if layer.output_quant.is_quant_enabled:
            core = _core(layer.output_quant)
            self.tag(out, _Tag(Operand.of(core), name, core) if core is not None else None)

    def exit_act(self, name: str, layer: nn.Module, args: tuple, out: Any) -> None:
        self.depth -= 1
        if not layer.act_quant.is_quant_enabled:
            self.tag(out, self.tag_of(args[0]) if args else None)
            return
        core = _core(layer.act_quant)
        self.tag(out, _Tag(Operand.of(core), name, core) if core is not None else None)


def _hook(trace: _Trace, model: nn.Module) -> list:
    """Hooks on every Brevitas layer of ``model``; ``ValueError`` for layers the cost model
    cannot count (float compute layers, other Brevitas layers, foreign weight quantisers)."""
    import brevitas.nn as qnn
    from brevitas.nn.mixin.base import QuantLayerMixin

    handles, inside = [], []
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        kind = type(module).__name__
        if isinstance(module, QuantLayerMixin):
            inside.append(name)
        if isinstance(module, qnn.QuantLinear | qnn.QuantConv1d | qnn.QuantConv2d):
            if _core(module.weight_quant) is None:
                raise ValueError(
                    f"layer {name!r} ({kind}): its weights are not quantised by brevitas_apq; "
                    "quantise it with brevitas_apq.quantize"
                )
            handles.append(
                module.register_forward_pre_hook(partial(_pre, trace.enter_compute, name))
            )
            handles.append(module.register_forward_hook(partial(_post, trace.exit_compute, name)))
        elif isinstance(module, QuantLayerMixin) and hasattr(module, "act_quant"):
            handles.append(module.register_forward_pre_hook(partial(_enter_act, trace)))
            handles.append(module.register_forward_hook(partial(_post, trace.exit_act, name)))
        elif isinstance(module, QuantLayerMixin):
            raise ValueError(
                f"layer {name!r} ({kind}) is not counted by the cost model; supported Brevitas "
                "layers: QuantLinear, QuantConv1d, QuantConv2d and activations (QuantIdentity, "
                "QuantReLU, ...)"
            )
        elif isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            raise ValueError(
                f"layer {name!r} ({kind}) is float; quantise it (brevitas_apq.quantize) to count "
                "its integer operations"
            )
    return handles


def _pre(method, name: str, module: nn.Module, args: tuple) -> None:
    method(name, module, args)


def _post(method, name: str, module: nn.Module, args: tuple, out: Any) -> None:
    method(name, module, args, out)


def _enter_act(trace: _Trace, module: nn.Module, args: tuple) -> None:
    trace.depth += 1


def _example_input(model: nn.Module, example_input: Any) -> tuple:
    if example_input is None:
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "window") or not hasattr(config, "n_features"):
            raise TypeError(
                f"operation_counts({type(model).__name__}) needs example_input: one input of "
                "the model, e.g. torch.zeros(1, ...)"
            )
        example_input = torch.zeros(1, config.window, config.n_features)
    inputs = example_input if isinstance(example_input, tuple | list) else (example_input,)
    return tuple(x[:1] if isinstance(x, torch.Tensor) and x.dim() > 0 else x for x in inputs)


def operation_counts(model: nn.Module, example_input: Any = None) -> dict[str, Any]:
    """Integer operations of one inference of a quantised model, from a forward pass.

    ``example_input``: one input of the model (its first sample is used; a tuple for several
    inputs); models with a ``config`` holding ``window`` and ``n_features`` (the project's
    Transformer) default to zeros of that shape. The values do not matter: the operations
    follow from the shapes and from the quantisers' *current* SQ / AQ decisions. The pass runs
    on a copy of the model in eval mode (decisions and statistics of ``model`` are untouched;
    an activation quantiser that never saw data gets a placeholder range in the copy).

    What is counted (see the module docstring for the algebra): every ``QuantLinear`` /
    ``QuantConv1d`` / ``QuantConv2d`` (a product with its weights, the input operand from its
    own input quantiser or from the quantiser whose output feeds it), every add or subtract of
    two integer tensors, every product of two (``torch.matmul``, ``@``, ``bmm``), and every sum,
    mean or average pooling over one. Integer tensors are the outputs of brevitas_apq
    quantisers, followed through shape operations (transpose, reshape, indexing, max pooling,
    ...); the sum of two tensors from one shared quantiser is one (one bit wider). A float
    compute layer, or an integer tensor multiplied with a float one, raises ``ValueError``.

    Returns ``int_ops``, ``zero_point_ops``, ``macs``, ``adds``, ``macs_by_bits`` (``{"4x8":
    n}``), ``per_layer`` (one dict per product, add or pooling, in execution order; modules by
    name, functions as ``matmul(L2, L3)``: the op and the modules its operands come from),
    ``input_shape`` and ``window`` (the input's second dimension, the Transformer's window).

    Example:
        >>> ops = operation_counts(quantized_mlp, torch.zeros(1, 8))  # doctest: +SKIP
        >>> ops["zero_point_ops"], ops["per_layer"][0]["layer"]  # doctest: +SKIP
        (0, '0')
    """
    inputs = _example_input(model, example_input)
    if not any(isinstance(m, AdaptiveIntQuant) for m in model.modules()):
        raise ValueError(
            "operation_counts needs a quantised model (brevitas_apq quantisers); quantise it "
            "with brevitas_apq.quantize or build it with a BitPlan"
        )
    copy = _analysis_copy(model)
    trace = _Trace()
    handles = _hook(trace, copy)
    try:
        with torch.no_grad(), trace:
            copy(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    rows = trace.rows
    macs_by_bits: Counter[str] = Counter()
    for row in rows:
        if row["macs"]:
            macs_by_bits[row["mac_bits"]] += row["macs"]
    shape = tuple(inputs[0].shape) if isinstance(inputs[0], torch.Tensor) else ()
    return {
        "input_shape": shape,
        "window": shape[1] if len(shape) > 1 else None,
        "int_ops": sum(r["int_ops"] for r in rows),
        "zero_point_ops": sum(r["zero_point_ops"] for r in rows),
        "macs": sum(r["macs"] for r in rows),
        "adds": sum(r["adds"] for r in rows),
        "macs_by_bits": dict(sorted(macs_by_bits.items())),
        "per_layer": rows,
    }


def _analysis_copy(model: nn.Module) -> nn.Module:
    """A copy in eval mode with every decision as it is in ``model`` (``.eval()`` is not
    called: it would commit a pending mini-batch), able to run without data."""
    copy = deepcopy(model)
    for module in copy.modules():
        module.training = False
        # An activation quantiser that never saw data: any range gives the same counts.
        unseen = isinstance(module, AdaptiveIntQuant) and int(module.num_updates) == 0
        if unseen and module.runtime_stats:
            module.running_min.fill_(-1.0)
            module.running_max.fill_(1.0)
            module.num_updates.fill_(1)
    return copy


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
