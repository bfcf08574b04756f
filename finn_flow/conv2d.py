"""2D convolutions (``Conv`` on ``(1, C, H, W)``) through FINN's own lowering.

A Brevitas ``QuantConv2d`` exports an NCHW ``Conv``. finn-plus maps it as its own CNV and
MobileNet flows do, with qonnx's and FINN's transformations (run by :mod:`finn_flow.steps`):

* after the QONNX import (weights folded to integers, scales to a ``Mul`` after the conv),
  qonnx's ``LowerConvsToMatMul`` replaces each conv by ``Transpose(NCHW->NHWC) -> Im2Col ->
  MatMul -> Transpose(NHWC->NCHW)``; a depthwise conv (``groups == in == out channels``)
  becomes a block-sparse ``MatMul`` marked for FINN's ``VVAU``;
* streamlining (finn-plus's StreamlinePlus) moves the scales past ``Im2Col``
  (``MoveScalesPastIm2Col``) and the transposes through the thresholds
  (``AbsorbTransposeIntoMultiThreshold``) until consecutive ones cancel;
* the conversion to hardware maps ``Im2Col`` to ``FMPadding`` + ``ConvolutionInputGenerator``
  (``InferConvInpGen``), the products to ``MVAU``/``VVAU``, ``MaxPool`` to a sliding window +
  ``Pool`` (``InferPool``), absorbs the ``NHWC->NCHW`` transpose in front of a flatten into
  the next MVAU's weight rows (``RemoveCNVtoFCFlatten``), and wraps the NCHW input thresholds
  in transposes (``InferThresholdingLayer``): only the input's layout change stays in software.

This module adds what those do not cover: :class:`BiasQuantParamsAsVectors` (qonnx 1.0.0
cannot extract a bias whose ``Quant`` has 0-d parameters, which is how Brevitas exports
per-tensor ones) and :func:`conv_problems`, which names every convolution FINN cannot map and
what to change. 1D convolutions are lowered by :mod:`finn_flow.conv1d` before the import.
"""

from __future__ import annotations

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation
from qonnx.util.basic import get_by_name

__all__ = ["BiasQuantParamsAsVectors", "conv_problems"]

_CONVS = ("Conv", "ConvTranspose")


def _const_or_quantised_const(model: ModelWrapper, name: str) -> bool:
    """``name`` is an initializer, or a ``Quant`` of an initializer with constant parameters."""
    if model.get_initializer(name) is not None:
        return True
    q = model.find_producer(name)
    return (
        q is not None
        and q.op_type == "Quant"
        and all(model.get_initializer(i) is not None for i in q.input)
    )


def _bias_quant(model: ModelWrapper, node):
    """The ``Quant`` of a constant that produces ``node``'s bias, or None."""
    if node.op_type not in _CONVS or len(node.input) < 3 or not node.input[2]:
        return None
    q = model.find_producer(node.input[2])
    if q is None or q.op_type != "Quant" or model.get_initializer(q.input[0]) is None:
        return None
    return q


class BiasQuantParamsAsVectors(Transformation):
    """Give the 0-d scale and zero point of a convolution's bias ``Quant`` the shape ``(1,)``.

    ``Quant(b; s, z, n)`` is unchanged when a 0-d ``s`` or ``z`` becomes ``s.reshape(1)`` (it
    broadcasts the same against the bias). qonnx 1.0.0's ``ExtractBiasFromConv`` (run by FINN's
    QONNX import) reshapes every scale and zero point whose shape is not ``(1,)`` to
    ``(1, C, 1, 1)``, which fails for the 0-d per-tensor parameters Brevitas exports ("cannot
    reshape array of size 1 into shape (1,8,1,1)"). Touches only the parameters of a ``Quant``
    of a constant that feeds a ``Conv``/``ConvTranspose`` bias; each gets a new initializer (the
    old one may be shared). ``changed`` is true exactly when a parameter was replaced.

    Example:
        >>> model = model.transform(BiasQuantParamsAsVectors())  # doctest: +SKIP
        >>> model = model.transform(ExtractBiasFromConv())  # now succeeds  # doctest: +SKIP
    """

    def apply(self, model: ModelWrapper):
        changed = False
        for node in model.graph.node:
            q = _bias_quant(model, node)
            if q is None:
                continue
            for i in (1, 2):  # scale, zero point (the bit width stays a scalar)
                p = model.get_initializer(q.input[i])
                if p is None or np.asarray(p).ndim != 0:
                    continue
                name = model.make_new_valueinfo_name()
                model.set_initializer(name, np.asarray(p).reshape(1))
                q.input[i] = name
                changed = True
        return model, changed


def conv_problems(model: ModelWrapper) -> list[str]:
    """One line per convolution FINN cannot map: the node, what is wrong and what to change.

    Expects 1D convolutions already lowered by :mod:`finn_flow.conv1d`; any left over did not
    fit it. A 2D ``Conv`` maps when its batch is 1, its weights (and bias) are constants or
    ``Quant`` nodes of constants, and ``groups`` is 1 or equals both channel counts (depthwise).
    """
    problems = []
    for node in model.graph.node:
        if node.op_type not in _CONVS:
            continue
        what = f"{node.op_type} {node.name!r}"
        if node.op_type == "ConvTranspose":
            problems.append(
                f"{what}: transposed convolutions have no FINN mapping in this flow; use "
                "upsampling (nn.Upsample) followed by a QuantConv2d"
            )
            continue
        ishape = model.get_tensor_shape(node.input[0])
        oshape = model.get_tensor_shape(node.output[0])
        rank = len(ishape) if ishape is not None else 0
        if rank == 3:
            problems.append(
                f"{what}: 1D convolution not lowered by finn_flow.conv1d, which needs batch 1, "
                "groups=1, constant weights with per-tensor or per-output-channel scales and "
                "explicit padding (no auto_pad); use QuantConv1d(..., groups=1)"
            )
            continue
        if rank != 4 or oshape is None:
            problems.append(
                f"{what}: only 1D (QuantConv1d) and 2D (QuantConv2d) convolutions are "
                f"supported, this one has input shape {ishape}"
            )
            continue
        if ishape[0] != 1:
            problems.append(f"{what}: batch {ishape[0]}; export the model with batch size 1")
            continue
        group = get_by_name(node.attribute, "group")
        groups = group.i if group is not None else 1
        c_in, c_out = ishape[1], oshape[1]
        if groups != 1 and not (groups == c_in == c_out):
            problems.append(
                f"{what}: grouped convolution (groups={groups}, {c_in} -> {c_out} channels); "
                "FINN maps groups=1 and depthwise convolutions (groups == in_channels == "
                "out_channels) only: use groups=1, or a depthwise QuantConv2d followed by a "
                "1x1 QuantConv2d"
            )
            continue
        if not _const_or_quantised_const(model, node.input[1]):
            problems.append(
                f"{what}: the weights are not a constant (quantised) tensor; FINN maps "
                "convolutions with fixed weights only (QuantConv2d parameters)"
            )
            continue
        bias = node.input[2] if len(node.input) > 2 else ""
        if bias and not _const_or_quantised_const(model, bias):
            problems.append(
                f"{what}: the bias is not a constant (quantised) tensor; use a QuantConv2d "
                "bias (bias=True) or none"
            )
            continue
        # qonnx's LowerConvsToMatMul reads these attributes without defaults
        missing = [
            a
            for a in ("kernel_shape", "strides", "group")
            if get_by_name(node.attribute, a) is None
        ]
        if (
            get_by_name(node.attribute, "pads") is None
            and get_by_name(node.attribute, "auto_pad") is None
        ):
            missing.append("pads")
        if missing:
            problems.append(
                f"{what}: attribute(s) {', '.join(missing)} not set; export the model with "
                "brevitas.export.export_qonnx, which writes them"
            )
    return problems
