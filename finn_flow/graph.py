"""Reading the flow's ONNX graphs: node attributes, FINN datatypes, hardware nodes.

* :func:`node_attr` - the value of a node attribute (strings decoded), or a default.
* :func:`datatype_named` - the FINN datatype a node attribute names; an unknown name is a
  FinnFlowError naming the op, never a guess.
* :func:`is_hw`, :func:`is_hls`, :func:`is_rtl` - FINN hardware nodes (domain
  ``finn.custom_op.fpgadataflow``) and their specialised HLS / RTL variants.
* :func:`dynamic_inputs` - the graph inputs that are not initializers.
* :func:`find_hw_model` - the specialised HW graph a build saved (:data:`HW_MODEL_CANDIDATES`).
* :func:`python_model` - a copy of a specialised HW graph that FINN's Python execution runs.

Usage::

    signed = int(node_attr(quant_node, "signed", 1))
    bits = datatype_named(node_attr(node, "inputDataType"), node.op_type).bitwidth()
    hw = [n for n in model.graph.node if is_hw(n)]
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from onnx import helper
from qonnx.core.datatype import DataType
from qonnx.util.basic import get_by_name

from finn_flow.errors import FinnFlowError

__all__ = [
    "HW_DOMAIN",
    "HW_MODEL_CANDIDATES",
    "datatype_named",
    "dynamic_inputs",
    "find_hw_model",
    "is_hls",
    "is_hw",
    "is_rtl",
    "node_attr",
    "python_model",
]

#: Domain of FINN's hardware (dataflow) ops; specialised variants add ``.hls`` / ``.rtl``.
HW_DOMAIN = "finn.custom_op.fpgadataflow"
#: The HW graph models a build saves, most specific first (see finn_flow.steps).
HW_MODEL_CANDIDATES = (
    "step_minimize_bit_width.onnx",
    "step_hw_codegen.onnx",
    "step_generate_estimate_reports.onnx",
    "step_attention_resource_estimate.onnx",
    "step_set_folding.onnx",
    "step_specialize_layers.onnx",
)


def node_attr(node, name: str, default: Any = None) -> Any:
    """The value of ``node``'s attribute ``name`` (bytes decoded to str), or ``default``."""
    attr = get_by_name(node.attribute, name)
    if attr is None:
        return default
    value = helper.get_attribute_value(attr)
    return value.decode() if isinstance(value, bytes) else value


def datatype_named(name, op: str) -> DataType:
    """A FINN datatype from its name (str or bytes) in an ``op`` node's attributes; an unknown
    name is a FinnFlowError, not a guess."""
    if isinstance(name, bytes):
        name = name.decode()
    try:
        return DataType[name]
    except (KeyError, ValueError, TypeError):
        raise FinnFlowError(
            f"Resource estimate: unknown datatype {name!r} in a {op} node's attributes "
            "(expected a FINN datatype such as INT8, UINT4 or FLOAT32)."
        ) from None


def is_hw(node) -> bool:
    """A FINN hardware node (generic or specialised)."""
    return node.domain.startswith(HW_DOMAIN)


def is_hls(node) -> bool:
    """A specialised HLS node (``*_hls``)."""
    return node.domain == f"{HW_DOMAIN}.hls" or node.op_type.endswith("_hls")


def is_rtl(node) -> bool:
    """A specialised RTL node (``*_rtl``)."""
    return node.domain == f"{HW_DOMAIN}.rtl" or node.op_type.endswith("_rtl")


def dynamic_inputs(model) -> list[str]:
    """Names of the graph inputs that are not initializers (the data the graph is fed)."""
    return [i.name for i in model.graph.input if model.get_initializer(i.name) is None]


def find_hw_model(out_dir: str | Path) -> Path:
    """The specialised HW graph a build saved (``intermediate_models/``, see finn_flow.steps)."""
    models = Path(out_dir) / "intermediate_models"
    for name in HW_MODEL_CANDIDATES:
        if (models / name).is_file():
            return models / name
    raise FinnFlowError(
        f"No specialised HW graph in {models} (looked for {', '.join(HW_MODEL_CANDIDATES)}): "
        "build with save_intermediate_models=True (emulation does) first."
    )


def python_model(model):
    """A copy of ``model`` with every ``*_hls``/``*_rtl`` node replaced by its generic HW op.

    finn-plus 1.6.1's specialised nodes execute only in cppsim/rtlsim (attention also in
    python); the generic ops (MVAU, Thresholding, ElementwiseAdd, ...) execute in Python.
    """
    import copy

    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    out = ModelWrapper(copy.deepcopy(model.model))
    for node in out.graph.node:
        if not is_hw(node) or not (is_hls(node) or is_rtl(node)):
            continue
        generic = re.sub(r"_(hls|rtl)$", "", node.op_type)
        node.op_type, node.domain = generic, HW_DOMAIN
        try:
            getCustomOp(node)
        except Exception as exc:
            raise FinnFlowError(
                f"No generic FINN op {generic!r} to execute node {node.name} in Python."
            ) from exc
        for attr in list(node.attribute):
            if attr.name in ("exec_mode", "code_gen_dir_cppsim", "executable_path"):
                node.attribute.remove(attr)
    return out
