"""Build steps that map the streamlined graph to FINN hardware layers, and check the mapping.

* :func:`step_convert_to_hw_transformer` - finn-plus's transformer conversion (attention,
  MVAUs, thresholds, forks) plus this project's pooling, LayerNorm and output-tail rules.
* :func:`step_check_hw_mapping` - a FinnFlowError naming the op, the node and what to change
  (:data:`UNMAPPED_HINTS`) if a node between hardware layers stayed in software, or if a
  threshold comparing a float tensor is not correctly rounded; writes
  ``report/nodes_outside_partition.json`` (:func:`node_role` says why each is in software).
* :func:`make_step_prefer_hls` - HLS variants wherever finn-plus has one (before
  ``step_specialize_layers``), so the whole design can run in C++ simulation.
* :func:`minimize_then_widen` - finn-plus's bit-width minimisation followed by
  :func:`step_widen_attention_accumulators` (the attention's QK and AV accumulators back to
  their exact worst case, :class:`~finn_flow.attention_thresholds.WidenAttentionAccumulators`)
  and :class:`~finn_flow.hw_rewrites.WidenBinaryWeights`, under finn's step name.

Every step is ``step_x(model, cfg) -> model`` (see :mod:`finn_flow.steps` for the step list);
factories return named inner functions. Call them inside
:func:`finn_flow.no_vivado.finn_session` (they import finn).

Usage::

    inner, outer = unmapped_nodes(model)  # software nodes between / around hardware layers
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from qonnx.core.modelwrapper import ModelWrapper

from finn_flow.errors import FinnFlowError
from finn_flow.graph import is_hw

if TYPE_CHECKING:
    from finn_flow.steps import Step

__all__ = [
    "UNMAPPED_HINTS",
    "make_step_prefer_hls",
    "minimize_then_widen",
    "node_role",
    "step_check_hw_mapping",
    "step_convert_to_hw_transformer",
    "step_widen_attention_accumulators",
    "unmapped_nodes",
]

log = logging.getLogger("finn_flow")

#: Why an op typically stays unmapped, for error messages.
UNMAPPED_HINTS = {
    "MatMul": "one input is not an integer (quantised) tensor or both inputs are dynamic "
    "outside the attention pattern: quantise every QuantLinear/matmul input",
    "Gemm": "not lowered to MatMul",
    "Softmax": "not recognised as part of scaled dot-product attention (need QuantIdentity "
    "before and after softmax, QuantLinear q/k/v with output quantisers, torch.matmul "
    "of quantised tensors, single head, batch 1)",
    "Transpose": "a layout change FINN could not absorb (e.g. a norm over a non-last axis)",
    "Add": "a float add: use ONE shared quantiser instance on both inputs of every add",
    "Mul": "a float scale that streamlining could not absorb into thresholds",
    "ReduceMean": "pooling over an axis other than time of a (1, seq, channels) tensor",
    "ReduceSum": "pooling over an axis other than time of a (1, seq, channels) tensor",
    "LayerNormalization": "layer norm with affine terms (use elementwise_affine=False)",
    "BatchNormalization": "batch norm not folded (export the model in eval mode)",
    "Relu": "the quantiser after ReLU must be unsigned and not narrow",
    "Conv": "a convolution that was not lowered to Im2Col + MatMul (finn_flow.conv1d for 1D, "
    "qonnx's LowerConvsToMatMul for 2D): batch 1, constant weights, groups=1 or depthwise",
    "MaxPool": "max pooling whose input is not an integer tensor (quantise the tensor before "
    "the pool) or whose kernel is smaller than its stride",
    "Im2Col": "the sliding window's input is not an integer tensor: quantise the conv input",
    "Quant": "a quantiser FINN cannot convert (e.g. > 8 bit activation, or non-zero zero "
    "point not lowered)",
}


def step_convert_to_hw_transformer(model: ModelWrapper, cfg) -> ModelWrapper:
    """Convert to FINN HW layers: finn-plus's transformer conversion plus pooling/norm.

    Follows ``finn.builder.custom_step_library.transformer_adhoc.step_convert_to_hw``
    (scaled dot-product attention before MVAUs/thresholds, ReplicateStream for forks), with
    the attention's output thresholds standalone (:mod:`finn_flow.attention_thresholds`), and
    adds a 0/1-weight MVAU for mean pooling over time, ``LayerNorm`` for affine-free layer
    norms, and keeps the float output scaling (final ``Mul``/``Add``) in software.
    """
    from finn.transformation.fpgadataflow.attention import InferScaledDotProductAttention
    from finn.transformation.fpgadataflow.convert_to_hw.concat import InferConcatLayer
    from finn.transformation.fpgadataflow.convert_to_hw.conv_inp_gen import InferConvInpGen
    from finn.transformation.fpgadataflow.convert_to_hw.elementwise_binary_operation import (
        InferElementwiseBinaryOperation,
    )
    from finn.transformation.fpgadataflow.convert_to_hw.layer_norm import InferLayerNorm
    from finn.transformation.fpgadataflow.convert_to_hw.pool import InferPool
    from finn.transformation.fpgadataflow.convert_to_hw.quantized_matrix_vector_activation import (
        InferQuantizedMatrixVectorActivation,
    )
    from finn.transformation.fpgadataflow.convert_to_hw.reshape import InferReshape
    from finn.transformation.fpgadataflow.convert_to_hw.split import InferSplitLayer
    from finn.transformation.fpgadataflow.convert_to_hw.thresholding import (
        InferThresholdingLayer,
    )
    from finn.transformation.fpgadataflow.convert_to_hw.vector_vector_activation import (
        InferVectorVectorActivation,
    )
    from finn.transformation.fpgadataflow.replicate_stream import InferReplicateStream
    from finn.transformation.move_reshape import RemoveCNVtoFCFlatten
    from finn.transformation.streamline.absorb import AbsorbConsecutiveTransposes
    from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds
    from qonnx.transformation.general import GiveUniqueNodeNames
    from qonnx.transformation.infer_data_layouts import InferDataLayouts
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    from finn_flow.attention_thresholds import StandaloneAttentionOutputThresholds
    from finn_flow.hw_rewrites import (
        InferTimePoolFromReduceSum,
        SqueezeToReshape,
        is_output_dequant_tail,
    )

    model = model.transform(InferSplitLayer())
    model = model.transform(InferConcatLayer())
    model = model.transform(InferScaledDotProductAttention())
    model = model.transform(StandaloneAttentionOutputThresholds())
    model = model.transform(InferTimePoolFromReduceSum())
    if cfg.standalone_thresholds:
        model = model.transform(InferThresholdingLayer())
    model = model.transform(InferQuantizedMatrixVectorActivation())
    model = model.transform(InferVectorVectorActivation())
    model = model.transform(InferThresholdingLayer())
    model = model.transform(InferLayerNorm())
    model = model.transform(InferPool())  # MaxPool -> Im2Col + Pool (2D convs, NCHW or NHWC)
    model = model.transform(InferConvInpGen())  # Im2Col -> FMPadding + sliding window (convs)
    model = model.transform(AbsorbConsecutiveTransposes())
    model = model.transform(RemoveCNVtoFCFlatten())
    model = model.transform(InferElementwiseBinaryOperation(is_output_dequant_tail))
    model = model.transform(SqueezeToReshape())  # the output squeeze, before the scaling
    model = model.transform(InferReshape())
    model = model.transform(InferReplicateStream())
    model = model.transform(InferDataLayouts())
    model = model.transform(InferDataTypes())
    model = model.transform(InferShapes())
    model = model.transform(RoundAndClipThresholds())
    return model.transform(GiveUniqueNodeNames())


def _check_float_thresholds(model: ModelWrapper) -> None:
    """FinnFlowError if a threshold comparing a float tensor is not correctly rounded."""
    from finn_flow.exact_thresholds import check_float_thresholds

    bad = check_float_thresholds(model)
    if bad:
        raise FinnFlowError(
            f"Thresholds that compare a float tensor are not correctly rounded at node(s) "
            f"{', '.join(bad)}: a quantiser reads a float tensor that is neither the model input "
            "nor a LayerNorm output (through scalar Add/Sub/Mul/Div at most), so FINN's float32 "
            "thresholds can put inputs on the wrong level. Quantise that tensor's producer, or "
            "move the float operation behind a quantiser."
        )


def unmapped_nodes(model: ModelWrapper) -> tuple[list, list]:
    """(inner, outer): non-HW nodes between HW nodes, and at the graph's head/tail."""
    hw_out = {o for n in model.graph.node if is_hw(n) for o in n.output}
    # nodes downstream of some HW node
    downstream: set[str] = set()
    tensors = set(hw_out)
    for node in model.graph.node:  # graph is topologically sorted
        if not is_hw(node) and any(i in tensors for i in node.input):
            downstream.add(node.name)
            tensors.update(node.output)
    # nodes upstream of some HW node
    hw_in = {i for n in model.graph.node if is_hw(n) for i in n.input}
    upstream: set[str] = set()
    needed = set(hw_in)
    for node in reversed(model.graph.node):
        if not is_hw(node) and any(o in needed for o in node.output):
            upstream.add(node.name)
            needed.update(node.input)
    inner, outer = [], []
    for node in model.graph.node:
        if is_hw(node):
            continue
        (inner if node.name in downstream and node.name in upstream else outer).append(node)
    return inner, outer


def node_role(model: ModelWrapper, node) -> str:
    """Why a node outside the dataflow partition is in software (for the build summary)."""
    from finn_flow.hw_rewrites import is_output_dequant_tail

    if not is_output_dequant_tail(model, node):
        return "output dequantisation (float scale/offset, software)"
    return "not mapped to hardware"


def step_check_hw_mapping(model: ModelWrapper, cfg) -> ModelWrapper:
    """Fail with the op and node name if a node between HW layers stayed unmapped, or if a
    threshold comparing a float tensor is not correctly rounded."""
    inner, outer = unmapped_nodes(model)
    if not any(is_hw(n) for n in model.graph.node):
        raise FinnFlowError(
            "FINN mapped no node of the model to hardware. Unmapped: "
            + ", ".join(f"{n.op_type} ({n.name})" for n in model.graph.node[:10])
        )
    if inner:
        details = "; ".join(
            f"{n.op_type} node {n.name!r}: {UNMAPPED_HINTS.get(n.op_type, 'no FINN mapping')}"
            for n in inner
        )
        raise FinnFlowError(
            f"FINN cannot map {len(inner)} operator(s) between hardware layers: {details}."
        )
    _check_float_thresholds(model)
    if outer:
        log.info("left in software: %s", ", ".join(f"{n.op_type}:{n.name}" for n in outer))
    # what step_create_dataflow_partition will leave outside (it saves its parent model only
    # with save_intermediate_models): for the summary of estimate-only builds
    report = Path(cfg.get_report_directory())
    report.mkdir(parents=True, exist_ok=True)
    (report / "nodes_outside_partition.json").write_text(
        json.dumps([{"op": n.op_type, "name": n.name, "role": node_role(model, n)} for n in outer])
    )
    return model


def step_widen_attention_accumulators(model: ModelWrapper, cfg) -> ModelWrapper:
    """Widen each attention's QK and AV accumulators (``AccQKMatMul`` / ``AccAVMatMul``, and
    ``OutQKMatMul`` / ``OutAVMatMul`` where the stage is un-thresholded) to their exact worst case
    (and to the stage's absorbed thresholds) where finn-plus's ``minimize_accumulator_width`` left
    them narrower: :class:`~finn_flow.attention_thresholds.WidenAttentionAccumulators` (a
    FinnFlowError if the output type ``OType`` itself cannot hold the AV accumulator)."""
    from finn_flow.attention_thresholds import WidenAttentionAccumulators

    return model.transform(WidenAttentionAccumulators(), apply_to_subgraphs=True)


def minimize_then_widen(finn_step: Step) -> Step:
    """finn-plus's bit-width minimisation step, then :func:`step_widen_attention_accumulators`
    and :class:`WidenBinaryWeights`, under finn's step name.

    One step rather than separate list entries so that the model FINN saves under that name
    (``intermediate_models/step_minimize_bit_width.onnx``, the HW graph finn_flow.simulate,
    finn_flow.graph.find_hw_model and the cppsim/verilator checks load) is the corrected one.
    finn's own ``FOLDED_HLS_CPPSIM`` verification inside ``step_minimize_bit_width`` would
    still see finn's widths; this project's flow does not enable it.
    """

    @functools.wraps(finn_step)
    def step(model: ModelWrapper, cfg) -> ModelWrapper:
        from finn_flow.hw_rewrites import WidenBinaryWeights

        model = step_widen_attention_accumulators(finn_step(model, cfg), cfg)
        return model.transform(WidenBinaryWeights())

    return step


def make_step_prefer_hls() -> Step:
    """Step (before ``step_specialize_layers``): HLS variants wherever finn-plus has one."""

    def step_prefer_hls(model: ModelWrapper, cfg) -> ModelWrapper:
        """Set ``preferred_impl_style="hls"`` on every HW node with an HLS variant, so the whole
        design can be checked in C++ simulation (finn_flow.cppsim); RTL-only nodes stay RTL."""
        from finn.custom_op.fpgadataflow.hls import custom_op as hls_variants
        from qonnx.custom_op.registry import getCustomOp

        for node in model.graph.node:
            if is_hw(node) and node.op_type + "_hls" in hls_variants:
                getCustomOp(node).set_nodeattr("preferred_impl_style", "hls")
        return model

    return step_prefer_hls
