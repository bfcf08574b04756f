"""Build steps before the hardware conversion: convolutions, zero points, streamlining.

On the QONNX model (before FINN's import): :func:`step_prepare_convs` (1D convolutions to
channels-last ``Im2Col + MatMul``, 2D bias parameters FINN can import) and
:func:`step_lower_zero_points` (exact thresholds for float inputs, exact zero-point lowering).
On the imported FINN model: :func:`step_lower_conv2d` (qonnx's ``LowerConvsToMatMul``) and
:func:`step_streamline_transformer` (finn-plus's ``StreamlinePlus`` iterated to a fixed point by
:func:`streamline_plus`, with this project's zero-point and pooling rewrites), which leaves
integer thresholds and matrix products for :mod:`finn_flow.hw_conversion`.

Every step is ``step_x(model, cfg) -> model`` (see :mod:`finn_flow.steps` for the step list).
Call them inside :func:`finn_flow.no_vivado.finn_session` (they import finn).

Usage::

    model = streamline_plus(model, extra=(AbsorbZeroPointOffsetIntoMultiThreshold(),))
"""

from __future__ import annotations

import logging

from qonnx.core.modelwrapper import ModelWrapper

from finn_flow.errors import FinnFlowError
from finn_flow.hw_conversion import UNMAPPED_HINTS

__all__ = [
    "step_lower_conv2d",
    "step_lower_zero_points",
    "step_prepare_convs",
    "step_streamline_transformer",
    "streamline_plus",
]

log = logging.getLogger("finn_flow")


def step_prepare_convs(model: ModelWrapper, cfg) -> ModelWrapper:
    """Convolutions, on the QONNX model (before the zero-point lowering and FINN's import).

    1D convolutions become channels-last ``Im2Col + MatMul`` (:mod:`finn_flow.conv1d`); 2D
    ones get bias parameters FINN's import can extract (:mod:`finn_flow.conv2d`) and are
    lowered after the import (:func:`step_lower_conv2d`). Any convolution FINN cannot map is
    a FinnFlowError naming the node and what to change. A no-op for models without ``Conv``
    (MLPs, Transformers).
    """
    from qonnx.transformation.infer_shapes import InferShapes

    from finn_flow.conv1d import Conv1dToChannelsLast
    from finn_flow.conv2d import BiasQuantParamsAsVectors, conv_problems

    model = model.transform(InferShapes()).transform(Conv1dToChannelsLast())
    problems = conv_problems(model)
    if problems:
        raise FinnFlowError(
            f"FINN cannot map {len(problems)} convolution(s): " + "; ".join(problems) + "."
        )
    return model.transform(BiasQuantParamsAsVectors())


def step_lower_conv2d(model: ModelWrapper, cfg) -> ModelWrapper:
    """2D convolutions as ``Transpose -> Im2Col -> MatMul -> Transpose`` (qonnx's
    ``LowerConvsToMatMul``), on the imported model before streamlining.

    FINN's CNV and MobileNet flows lower the same way; streamlining then moves the transposes
    until they cancel and the conversion maps the sliding windows (:mod:`finn_flow.conv2d`).
    A no-op for models without ``Conv``.
    """
    from qonnx.transformation.general import GiveUniqueNodeNames
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul

    if not any(n.op_type == "Conv" for n in model.graph.node):
        return model
    model = model.transform(LowerConvsToMatMul())
    left = [n.name for n in model.graph.node if n.op_type == "Conv"]
    if left:
        raise FinnFlowError(
            f"qonnx's LowerConvsToMatMul left convolution(s) {', '.join(left)} in place: "
            f"{UNMAPPED_HINTS['Conv']}."
        )
    model = model.transform(InferShapes()).transform(InferDataTypes())
    return model.transform(GiveUniqueNodeNames())


def step_lower_zero_points(model: ModelWrapper, cfg) -> ModelWrapper:
    """Exact thresholds for float-input quantisers, then exact zero-point lowering.

    Quantisers that read a float tensor (the model input, float LayerNorm outputs) become
    correctly rounded thresholds (:mod:`finn_flow.exact_thresholds`, zero points included);
    the remaining non-zero zero points are lowered by :mod:`finn_flow.transforms`.
    """
    from qonnx.transformation.infer_shapes import InferShapes

    from finn_flow.exact_thresholds import QuantFloatInputToExactThresholds
    from finn_flow.transforms import LowerZeroPoints, ZeroPointError, quant_nodes_with_zero_point

    model = model.transform(QuantFloatInputToExactThresholds())
    try:
        model = model.transform(LowerZeroPoints())
    except ZeroPointError as exc:
        raise FinnFlowError(str(exc)) from exc
    left = quant_nodes_with_zero_point(model)
    if left:
        raise FinnFlowError(f"Zero points could not be lowered for Quant nodes: {left}")
    return model.transform(InferShapes())


def _bounded_apply(model: ModelWrapper, trafo, max_iter: int):
    """Apply a (composed) transformation to a fixed point, at most ``max_iter`` rounds each.

    Same order as qonnx's ComposedTransformation, without its deep copies, with one graph
    cleanup per changed sub-transformation instead of five, and without its unbounded
    ``while True`` (finn-plus's reorder passes can oscillate).
    """
    from qonnx.transformation.composed import ComposedTransformation
    from qonnx.transformation.general import GiveUniqueNodeNames
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.transformation.remove import RemoveIdentityOps

    if isinstance(trafo, ComposedTransformation):
        changed = False
        for sub in trafo.transformations:
            model, sub_changed = _bounded_apply(model, sub, max_iter)
            changed |= sub_changed
            if sub_changed:
                # one cleanup (qonnx's ModelWrapper.transform would clean up after each)
                model.cleanup()
                for fix in (RemoveIdentityOps(), GiveUniqueNodeNames(), InferShapes()):
                    model = model.transform(fix, make_deepcopy=False, cleanup=False)
                model = model.transform(InferDataTypes(), make_deepcopy=False, cleanup=False)
        return model, changed
    changed = False
    for _ in range(max_iter):
        model, step_changed = trafo.apply(model)
        if not step_changed:
            return model, changed
        changed = True
    log.warning("%s did not converge in %d rounds", type(trafo).__name__, max_iter)
    return model, changed


def _graph_signature(model: ModelWrapper) -> tuple[str, ...]:
    """Op types in graph order: changes whenever a rewrite removes, adds or moves a node."""
    return tuple(n.op_type for n in model.graph.node)


def streamline_plus(
    model: ModelWrapper, rounds: int = 8, max_iter: int = 50, extra: tuple = ()
) -> ModelWrapper:
    """finn-plus's StreamlinePlus, iterated to a fixed point with bounded loops.

    ``extra`` transformations run after every StreamlinePlus round; the loop ends when a
    round changes nothing (neither StreamlinePlus nor the extras).
    """
    from finn.transformation.streamline.streamline_plus import StreamlinePlus

    for _ in range(rounds):
        before = _graph_signature(model)
        model, changed = _bounded_apply(model, StreamlinePlus(), max_iter)
        for trafo in extra:
            model = model.transform(trafo)
        if not changed and _graph_signature(model) == before:
            break
    return model


def step_streamline_transformer(model: ModelWrapper, cfg) -> ModelWrapper:
    """Streamline with finn-plus's StreamlinePlus plus the zero-point and pooling rewrites.

    FINN's default ``Streamline`` leaves scalar dequantiser scales in front of forks
    (q/k/v projections sharing one input, residual branches), of the positional-encoding
    add and of the pooling, so the matrix products see float inputs. finn-plus's
    ``StreamlinePlus`` (used by its ResNet steps) moves scales past forks and joins and
    integerises the adds; zero-point offsets are first folded into the thresholds
    (:class:`~finn_flow.transforms.AbsorbZeroPointOffsetIntoMultiThreshold`) or, in front of
    a rescale by their own scale, moved past it as exact integers
    (:class:`~finn_flow.transforms.ExactZeroPointOffsetPastRescale`), and mean pooling is
    rewritten (:mod:`finn_flow.hw_rewrites`).
    """
    from finn.builder.build_dataflow_config import VerificationStepType
    from finn.builder.build_dataflow_steps import verify_step
    from qonnx.transformation.general import GiveReadableTensorNames, RemoveUnusedTensors
    from qonnx.transformation.infer_data_layouts import InferDataLayouts

    from finn_flow.hw_rewrites import (
        AbsorbScalarMulIntoLayerNorm,
        AnnotateIntegerAddConstants,
        MoveScalarMulPastReduce,
        ReduceMeanToScaledSum,
    )
    from finn_flow.transforms import (
        AbsorbZeroPointOffsetIntoMultiThreshold,
        ExactZeroPointOffsetPastRescale,
    )

    model = model.transform(AbsorbZeroPointOffsetIntoMultiThreshold())
    model = model.transform(ExactZeroPointOffsetPastRescale())
    model = model.transform(ReduceMeanToScaledSum())
    model = model.transform(MoveScalarMulPastReduce())
    # Streamlining forms ``MultiThreshold -> Mul(s) -> Add(z*s)`` chains of zero-point
    # quantisers only once the nodes around them have been collapsed (the q/k/scores
    # quantisers of the attention), so the offsets are absorbed after every round.
    extra = (
        AnnotateIntegerAddConstants(),
        AbsorbZeroPointOffsetIntoMultiThreshold(),
        MoveScalarMulPastReduce(),
        AbsorbScalarMulIntoLayerNorm(),
    )
    model = streamline_plus(model, extra=extra)
    model = model.transform(AnnotateIntegerAddConstants())
    model = model.transform(GiveReadableTensorNames())
    model = model.transform(InferDataLayouts())
    model = model.transform(RemoveUnusedTensors())
    if VerificationStepType.STREAMLINED_PYTHON in cfg._resolve_verification_steps():
        verify_step(model, cfg, "streamlined_python", need_parent=False)
    return model
