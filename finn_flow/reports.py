"""The reports finn_flow adds to FINN's ``report/`` folder, for the build summary.

finn-plus estimates 0 resources for attention, adds, forks, LayerNorm and reshapes, and says
nothing about float datapaths. :func:`step_attention_resource_estimate` (after finn's
``step_generate_estimate_reports``) writes, next to finn's own estimates:

* ``estimate_attention_analytical.json`` - :mod:`finn_flow.attention_estimate` per attention
  node (only for a model with attention);
* ``estimate_glue_analytical.json`` - :mod:`finn_flow.glue_estimate` for adds, forks,
  LayerNorm and reshapes (only when there are such nodes);
* ``hw_datapath.json`` - :func:`float_datapath_nodes`, the HW nodes with a float input or
  output.

(``nodes_outside_partition.json`` comes from :func:`finn_flow.hw_conversion.step_check_hw_mapping`,
``folding_candidates.csv`` from :mod:`finn_flow.folding`.) :func:`finn_flow.build.build` reads
them all into ``summary.json``.

Usage::

    floats = float_datapath_nodes(model)  # [{"op": "LayerNorm_hls", "name": ..., ...}]
"""

from __future__ import annotations

import json
from pathlib import Path

from qonnx.core.modelwrapper import ModelWrapper

from finn_flow.graph import is_hw

__all__ = ["float_datapath_nodes", "step_attention_resource_estimate"]


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
        if not is_hw(node):
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
