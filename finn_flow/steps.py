"""Build steps of the FINN flow, and the step lists of the estimate-only and full flows.

Every step is a named function ``step_x(model, cfg) -> model`` (FINN names intermediate
models and timings after ``__name__``); steps that need data from the caller come from
factories that return named inner functions. finn-plus's own steps are used by name
(strings resolved by ``build_dataflow_cfg``) wherever they do the job unchanged.

Import this module inside :func:`finn_flow.no_vivado.finn_session` (it imports
``finn.builder``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper

from finn_flow.errors import FinnFlowError

log = logging.getLogger("finn_flow")

Step = Callable[[ModelWrapper, Any], ModelWrapper]

_HW_DOMAIN = "finn.custom_op.fpgadataflow"

#: Why an op typically stays unmapped, for error messages.
_UNMAPPED_HINTS = {
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


def _is_hw(node) -> bool:
    return node.domain.startswith(_HW_DOMAIN)


# --------------------------------------------------------------------------- frontend steps
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
            f"{_UNMAPPED_HINTS['Conv']}."
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
    (:class:`~finn_flow.transforms.AbsorbZeroPointOffsetIntoMultiThreshold`) and mean
    pooling is rewritten (:mod:`finn_flow.hw_rewrites`).
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
    from finn_flow.transforms import AbsorbZeroPointOffsetIntoMultiThreshold

    model = model.transform(AbsorbZeroPointOffsetIntoMultiThreshold())
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
    hw_out = {o for n in model.graph.node if _is_hw(n) for o in n.output}
    # nodes downstream of some HW node
    downstream: set[str] = set()
    tensors = set(hw_out)
    for node in model.graph.node:  # graph is topologically sorted
        if not _is_hw(node) and any(i in tensors for i in node.input):
            downstream.add(node.name)
            tensors.update(node.output)
    # nodes upstream of some HW node
    hw_in = {i for n in model.graph.node if _is_hw(n) for i in n.input}
    upstream: set[str] = set()
    needed = set(hw_in)
    for node in reversed(model.graph.node):
        if not _is_hw(node) and any(o in needed for o in node.output):
            upstream.add(node.name)
            needed.update(node.input)
    inner, outer = [], []
    for node in model.graph.node:
        if _is_hw(node):
            continue
        (inner if node.name in downstream and node.name in upstream else outer).append(node)
    return inner, outer


def _role(model: ModelWrapper, node) -> str:
    from finn_flow.hw_rewrites import is_output_dequant_tail

    if not is_output_dequant_tail(model, node):
        return "output dequantisation (float scale/offset, software)"
    return "not mapped to hardware"


def step_check_hw_mapping(model: ModelWrapper, cfg) -> ModelWrapper:
    """Fail with the op and node name if a node between HW layers stayed unmapped, or if a
    threshold comparing a float tensor is not correctly rounded."""
    inner, outer = unmapped_nodes(model)
    if not any(_is_hw(n) for n in model.graph.node):
        raise FinnFlowError(
            "FINN mapped no node of the model to hardware. Unmapped: "
            + ", ".join(f"{n.op_type} ({n.name})" for n in model.graph.node[:10])
        )
    if inner:
        details = "; ".join(
            f"{n.op_type} node {n.name!r}: {_UNMAPPED_HINTS.get(n.op_type, 'no FINN mapping')}"
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
        json.dumps([{"op": n.op_type, "name": n.name, "role": _role(model, n)} for n in outer])
    )
    return model


def _minimize_then_widen_binary(finn_step: Step) -> Step:
    """finn-plus's bit-width minimisation step, then :class:`WidenBinaryWeights` (same name)."""

    @functools.wraps(finn_step)
    def step(model: ModelWrapper, cfg) -> ModelWrapper:
        from finn_flow.hw_rewrites import WidenBinaryWeights

        return finn_step(model, cfg).transform(WidenBinaryWeights())

    return step


def make_step_prefer_hls() -> Step:
    """Step (before ``step_specialize_layers``): HLS variants wherever finn-plus has one."""

    def step_prefer_hls(model: ModelWrapper, cfg) -> ModelWrapper:
        """Set ``preferred_impl_style="hls"`` on every HW node with an HLS variant, so the whole
        design can be checked in C++ simulation (finn_flow.cppsim); RTL-only nodes stay RTL."""
        from finn.custom_op.fpgadataflow.hls import custom_op as hls_variants
        from qonnx.custom_op.registry import getCustomOp

        for node in model.graph.node:
            if _is_hw(node) and node.op_type + "_hls" in hls_variants:
                getCustomOp(node).set_nodeattr("preferred_impl_style", "hls")
        return model

    return step_prefer_hls


# ------------------------------------------------------------------------------ emulation
def make_step_emulate(
    inputs: np.ndarray, expected: np.ndarray, tolerance: float, record: dict
) -> Step:
    """Step (after step_create_dataflow_partition) comparing FINN's python emulation."""

    def step_emulate_dataflow_python(model: ModelWrapper, cfg) -> ModelWrapper:
        """Run the inputs through parent + dataflow partition with FINN's python exec."""
        from finn_flow.emulation import compare, emulate_dataflow

        parent = Path(cfg.output_dir) / "intermediate_models" / "dataflow_parent.onnx"
        if not parent.is_file():
            raise FinnFlowError(f"dataflow_parent.onnx missing at {parent}")
        actual = emulate_dataflow(parent, model, inputs)
        result = compare(actual, expected, tolerance, raise_on_fail=False)
        out_file = Path(cfg.get_verification_output_directory()) / "emulation_output.npy"
        out_file.parent.mkdir(parents=True, exist_ok=True)
        np.save(out_file, actual)
        result.notes.append(f"emulated outputs: {out_file}")
        record["emulation"] = result
        record["emulation_outputs"] = actual
        if record.get("raise_on_mismatch", True):
            compare(actual, expected, tolerance, raise_on_fail=True)
        return model

    return step_emulate_dataflow_python


# -------------------------------------------------------------------------------- folding
def _fit_folding(model: ModelWrapper, cfg, budget, record: dict) -> ModelWrapper:
    """Fold for the fastest design within ``budget`` (finn_flow.fit); candidates to report/."""
    import pandas as pd

    from finn_flow.fit import _fold, apply_resource_choice, choose, search

    candidates = search(model, cfg, budget)
    result = choose(candidates, budget)
    report = Path(cfg.get_report_directory())
    report.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([c.row() for c in candidates]).sort_values("fps")
    table.to_csv(report / "folding_candidates.csv", index=False)
    record["fit"] = result.as_dict()
    record["fit_candidates"] = table
    if not result.fits:
        c = result.chosen
        record["warnings"].append(
            f"No folding fits {budget.source}: the smallest design needs "
            f"{c.resources['LUT']:,.0f} LUT, {c.resources['BRAM_18K']:,.0f} BRAM_18K, "
            f"{c.resources['DSP']:,.0f} DSP (estimates) at {c.fps:,.0f} inferences/s; "
            f"binding resource: {result.binding}."
        )
    return apply_resource_choice(_fold(model, result.chosen.target_fps, cfg), result.chosen.choice)


def _validate_folding_config(model: ModelWrapper, config: dict, path: Path) -> None:
    names = {n.name for n in model.graph.node}
    unknown = sorted(k for k in config if k != "Defaults" and k not in names)
    if unknown:
        raise FinnFlowError(
            f"Folding config {path} names node(s) not in the dataflow graph: "
            f"{', '.join(unknown)}. Nodes at folding time: {', '.join(sorted(names))}."
        )


def make_step_set_folding(record: dict) -> Step:
    """Folding step: finn-plus's transformer folding for a target FPS, then a JSON config."""

    def step_set_folding(model: ModelWrapper, cfg) -> ModelWrapper:
        """Auto-fold to cfg.target_fps (attention + SetFolding), then apply the JSON file."""
        from finn.analysis.fpgadataflow.dataflow_performance import dataflow_performance
        from finn.builder.custom_step_library.transformer_adhoc import (
            step_set_folding as adhoc_set_folding,
        )
        from finn.transformation.fpgadataflow.annotate_cycles import AnnotateCycles
        from finn.transformation.general import ApplyConfig
        from finn.util.config import extract_model_config_to_json
        from qonnx.transformation.general import GiveUniqueNodeNames

        model = model.transform(GiveUniqueNodeNames())
        target_cycles = cfg._resolve_cycles_per_frame()
        budget = record.get("budget")
        if target_cycles is None and cfg.folding_config_file is None and budget is not None:
            model = _fit_folding(model, cfg, budget, record)
        if target_cycles is not None:
            model = adhoc_set_folding(model, dataclasses.replace(cfg, folding_config_file=None))
        if cfg.folding_config_file is not None:
            path = Path(cfg.folding_config_file)
            try:
                config = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise FinnFlowError(f"Cannot read folding config {path}: {exc}") from exc
            if not isinstance(config, dict):
                raise FinnFlowError(f"Folding config {path} must be a JSON object.")
            _validate_folding_config(model, config, path)
            model = model.transform(ApplyConfig(config))
        model = model.transform(AnnotateCycles())
        perf = model.analysis(dataflow_performance)
        record["max_cycles"] = int(perf["max_cycles"])
        record["max_cycles_node"] = perf["max_cycles_node_name"]
        if target_cycles is not None and perf["max_cycles"] > target_cycles:
            reached = 1e9 / cfg.synth_clk_period_ns / max(1, perf["max_cycles"])
            record["target_fps_warning"] = (
                f"target_fps={cfg.target_fps} not reached: slowest node "
                f"{perf['max_cycles_node_name']} needs {perf['max_cycles']} cycles per "
                f"inference (> {target_cycles}); best reachable ~{reached:.0f} inferences/s "
                "at this clock with the available folding."
            )
        attrs = [
            "PE",
            "SIMD",
            "EmbFold",
            "SeqFold",
            "ram_style",
            "resType",
            "mac_resource",
            "mem_mode",
            "impl_style",
        ]
        extract_model_config_to_json(
            model, cfg.get_report_directory() / "final_folding_config.json", attrs
        )
        return model

    return step_set_folding


# ------------------------------------------------------------------------------- reports
def step_attention_resource_estimate(model: ModelWrapper, cfg) -> ModelWrapper:
    """Write report/estimate_attention_analytical.json and estimate_glue_analytical.json
    (finn-plus reports 0 for attention, adds, forks, LayerNorm and reshapes)."""
    from finn_flow.attention_estimate import attention_nodes_estimate

    est = attention_nodes_estimate(model)
    report = Path(cfg.get_report_directory())
    if est:
        (report / "estimate_attention_analytical.json").write_text(json.dumps(est, indent=2))
    from finn_flow.glue_estimate import glue_nodes_estimate  # adds, forks, LayerNorm, reshapes

    if glue := glue_nodes_estimate(model):
        (report / "estimate_glue_analytical.json").write_text(json.dumps(glue, indent=2))
    (report / "hw_datapath.json").write_text(json.dumps(float_datapath_nodes(model), indent=2))
    return model


def float_datapath_nodes(model: ModelWrapper) -> list[dict]:
    """HW nodes with a float input or output (a float datapath in the accelerator).

    FINN's ``LayerNorm_hls`` computes in single precision (``TO = float``); the attention's
    softmax is float inside the operator (``AccASoftmax``) and is not listed here, nor is the
    float model input read by the input quantiser's thresholds.
    """
    from qonnx.core.datatype import DataType

    out = []
    for node in model.graph.node:
        if not _is_hw(node):
            continue
        # the graph input is the raw float input of the first (input quantiser) thresholds
        graph_in = {i.name for i in model.graph.input}
        tensors = [
            t
            for t in (*node.input, *node.output)
            if model.get_initializer(t) is None and t not in graph_in
        ]
        floats = [t for t in tensors if model.get_tensor_datatype(t) == DataType["FLOAT32"]]
        if floats:
            out.append({"op": node.op_type, "name": node.name, "float_tensors": floats})
    return out


# ----------------------------------------------------------------------------- step lists
#: finn-plus steps after the dataflow partition up to the estimate reports
_FRONT = [
    step_prepare_convs,
    step_lower_zero_points,
    "step_qonnx_to_finn",
    "step_tidy_up",
    step_lower_conv2d,
    step_streamline_transformer,
    step_convert_to_hw_transformer,
    step_check_hw_mapping,
    "step_minimize_bit_width_initial",
    "step_create_dataflow_partition",
]

#: full-flow steps after the estimates (need Vivado/Vitis HLS)
FULL_FLOW_BACKEND = [
    "step_generate_hardware",  # HLS/RTL codegen + IP generation + FIFO sizing
    "step_create_stitched_ip",
    "step_measure_rtlsim_performance",
    "step_out_of_context_synthesis",
    "step_prepare_synthesis",
    "step_synthesize_bitfile",
    "step_make_driver",
    "step_deployment_package",
]


def guard_step(step: Step, record: dict) -> Step:
    """Wrap a step so the first exception is recorded (build_dataflow_cfg swallows it)."""

    @functools.wraps(step)
    def guarded_step(model: ModelWrapper, cfg) -> ModelWrapper:
        try:
            return step(model, cfg)
        except BaseException as exc:
            record.setdefault("error", (step.__name__, exc))
            raise

    return guarded_step


def build_steps(
    full: bool,
    record: dict,
    emulation: tuple[np.ndarray, np.ndarray, float] | None = None,
    prefer_hls: bool = False,
) -> list[Step]:
    """The step list: estimate-only (``full=False``) or the full Vivado flow.

    Strings are resolved to finn-plus's registered steps; every step is wrapped by
    :func:`guard_step` (same ``__name__``). ``prefer_hls`` adds :func:`make_step_prefer_hls`.
    """
    from finn.builder.build_dataflow_steps import build_dataflow_step_lookup

    steps: list = list(_FRONT)
    if emulation is not None:
        steps.append(make_step_emulate(*emulation, record))
    if prefer_hls:
        steps.append(make_step_prefer_hls())
    steps += [
        "step_specialize_layers",
        make_step_set_folding(record),
        "step_minimize_bit_width",
        "step_generate_estimate_reports",
        step_attention_resource_estimate,
    ]
    steps += FULL_FLOW_BACKEND if full else ["step_hw_codegen"]
    resolved = [build_dataflow_step_lookup[s] if isinstance(s, str) else s for s in steps]
    resolved = [
        _minimize_then_widen_binary(s) if s.__name__.startswith("step_minimize_bit_width") else s
        for s in resolved
    ]
    return [guard_step(s, record) for s in resolved]


def step_names(steps: list[Step]) -> list[str]:
    return [s.__name__ for s in steps]


def cycles_to_fps(cycles: int, clk_ns: float) -> float:
    return 1e9 / clk_ns / max(1, cycles) if cycles else math.inf
