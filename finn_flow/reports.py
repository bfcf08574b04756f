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
``folding_candidates.csv`` from :mod:`finn_flow.folding`.)

:func:`summarise` reads them all, with FINN's own ``estimate_layer_resources.json``,
``estimate_network_performance.json`` and (full flow) ``post_synth_resources.json``, into the
build summary that :func:`finn_flow.build.build` writes to ``summary.json``: FINN's resource
estimate, the analytical estimates replacing FINN's 0 rows, utilisation, where each figure
comes from, throughput and latency, the nodes outside the dataflow partition. A required
report that is missing is a FinnFlowError, never a 0. :data:`SUMMARY_FILES` lists the files
it reads (removed before a build).

Importing this module imports neither FINN nor qonnx (:mod:`finn_flow.build` imports it).

Usage::

    floats = float_datapath_nodes(model)  # [{"op": "LayerNorm_hls", "name": ..., ...}]
    summary = summarise(out_dir, resolve_target("Pynq-Z1"), record, cfg, t0, full=False)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finn_flow.boards import RESOURCE_KEYS, Board
from finn_flow.errors import FinnFlowError

if TYPE_CHECKING:
    from qonnx.core.modelwrapper import ModelWrapper

__all__ = [
    "SUMMARY_FILES",
    "float_datapath_nodes",
    "step_attention_resource_estimate",
    "summarise",
]


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

    from finn_flow.graph import is_hw

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


# ------------------------------------------------------------------------------- summary
#: What :func:`summarise` reads (under ``out_dir``) and ``summary.json`` itself;
#: :func:`finn_flow.build.build` removes them before a build starts, so a report the build did
#: not write is missing rather than left over from an earlier build.
SUMMARY_FILES = (
    "summary.json",
    "report/estimate_layer_resources.json",
    "report/estimate_network_performance.json",
    "report/estimate_attention_analytical.json",
    "report/estimate_glue_analytical.json",
    "report/hw_datapath.json",
    "report/nodes_outside_partition.json",
    "report/post_synth_resources.json",
    "intermediate_models/dataflow_parent.onnx",
)


def _read_json(path: Path, required: bool = True) -> Any:
    """A FINN report; FinnFlowError if it is unreadable, or missing while ``required`` (a
    missing optional report is None: unknown, never 0)."""
    if not path.is_file() and not required:
        return None
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FinnFlowError(
            f"the build wrote no {path.name} (expected at {path}): its figures are unknown; "
            f"see {path.parent.parent / 'build_dataflow.log'} and build again"
        ) from None
    except (OSError, ValueError) as exc:
        raise FinnFlowError(
            f"{path} cannot be read ({type(exc).__name__}: {exc}); delete {path.parent.parent} "
            "and build again"
        ) from None


def _outside_partition(out_dir: Path) -> list[dict]:
    """Nodes left outside the dataflow partition (software), with their role."""
    from qonnx.core.modelwrapper import ModelWrapper

    from finn_flow.hw_conversion import node_role

    parent = out_dir / "intermediate_models" / "dataflow_parent.onnx"
    if not parent.is_file():  # estimate-only build without intermediate models
        return _read_json(out_dir / "report" / "nodes_outside_partition.json")
    model = ModelWrapper(str(parent))
    return [
        {"op": n.op_type, "name": n.name, "role": node_role(model, n)}
        for n in model.graph.node
        if n.op_type != "StreamingDataflowPartition"
    ]


#: Why FINN reports no resources for an operator, by op-type prefix.
_NOT_ESTIMATED = {
    "ScaledDotProductAttention": "finn-plus has no resource model for attention (reports 0); "
    "see analytical_estimate",
    "LayerNorm_hls": "finn-plus has no resource model for LayerNorm (reports 0); a float "
    "(single-precision) datapath: see analytical_estimate (operator costs, unvalidated)",
    "LayerNorm": "finn-plus has no resource model for LayerNorm (reports 0); a float "
    "(single-precision) datapath: mean, variance, reciprocal square root per token",
    "ElementwiseAdd_hls": "no FINN resource model (reports 0); see analytical_estimate",
    "ElementwiseSub_hls": "no FINN resource model (reports 0); see analytical_estimate",
    "ElementwiseMul": "no resource model (reports 0); a multiplier per lane",
    "ReplicateStream_hls": "no FINN resource model (reports 0); see analytical_estimate",
    "Reshape_rtl": "no FINN resource model (reports 0); a wire-through, see analytical_estimate",
    "GlobalAccPool": "no resource model (reports 0); one accumulator per channel, small",
}


def _not_estimated_reason(name: str) -> str:
    for prefix, reason in _NOT_ESTIMATED.items():
        if name.startswith(prefix):
            return reason
    return "FINN reports 0 for this operator"


def summarise(out_dir: Path, target: Board, record: dict, cfg, t0: float, full: bool) -> dict:
    """The build summary (``summary.json`` content) from the reports in ``out_dir``.

    ``target``: the board; ``record``: what the steps recorded (``warnings``, ``emulation``,
    ``steps``); ``cfg``: the ``DataflowBuildConfig`` (clock, target fps); ``t0``: the build's
    start time; ``full``: the full flow ran (post-synthesis resources are read). FinnFlowError
    if a required report is missing or unreadable.
    """
    report = out_dir / "report"
    res = _read_json(report / "estimate_layer_resources.json")
    perf = _read_json(report / "estimate_network_performance.json")
    # written only for a model with such nodes (reports.step_attention_resource_estimate):
    # attention (attention_estimate) and adds, forks, LayerNorm, reshapes (glue_estimate)
    attn = _read_json(report / "estimate_attention_analytical.json", required=False) or {}
    attn.update(_read_json(report / "estimate_glue_analytical.json", required=False) or {})
    total = res.get("total", {})
    finn_total = {k: float(total.get(k, 0)) for k in RESOURCE_KEYS if k != "FF"}
    not_estimated = []
    for name, r in res.items():
        if name == "total" or not isinstance(r, dict):
            continue
        if name.startswith("ScaledDotProductAttention") or all(
            float(r.get(k, 0)) == 0 for k in ("LUT", "BRAM_18K", "URAM", "DSP")
        ):
            not_estimated.append(
                {
                    "node": name,
                    "finn_estimate": {k: r.get(k, 0) for k in ("LUT", "BRAM_18K", "URAM", "DSP")},
                    "reason": _not_estimated_reason(name),
                    "analytical_estimate": attn.get(name),
                }
            )
    # an analytical estimate replaces FINN's row for its node (0 for the nodes modelled today)
    with_attn = dict(finn_total)
    for name, est in attn.items():
        finn_row = res.get(name) if isinstance(res.get(name), dict) else {}
        for k in with_attn:
            with_attn[k] += float(est.get(k, 0)) - float(finn_row.get(k, 0))
    by_model: dict[str, list[str]] = {}  # which nodes got which analytical model
    for name, est in attn.items():
        label = est.get("model") or "attention (fitted, FINN-T synthesis)"
        by_model.setdefault(str(label), []).append(name)
    caps = target.capacities()
    util = {k: (round(with_attn[k] / caps[k], 4) if caps.get(k) else None) for k in with_attn}
    emu = record.get("emulation")
    summary = {
        "board": target.board,
        "part": target.part,
        "capacities": caps,
        "flow": "full" if full else "estimate-only (no Xilinx tools)",
        "clock_ns": cfg.synth_clk_period_ns,
        "target_fps": cfg.target_fps,
        "resources_finn_estimate": finn_total,
        "resources_with_attention_estimate": with_attn,
        "utilisation_with_attention_estimate": util,
        # where every resource figure comes from: LUT/BRAM_18K/URAM/DSP below are "finn" +
        # "analytical"; "synthesis" only after a Vivado run (full flow)
        "resource_sources": {
            "finn": {k: finn_total[k] for k in finn_total},
            "analytical": {k: round(with_attn[k] - finn_total[k], 3) for k in finn_total},
            "analytical_method": sorted({str(e.get("method", "")) for e in attn.values()}),
            "synthesis": (
                _read_json(report / "post_synth_resources.json", required=False) if full else None
            ),
            "analytical_models": {m: sorted(nodes) for m, nodes in sorted(by_model.items())},
            # nodes FINN reports as 0 that no analytical model covers: they count 0
            "not_estimated": [n["node"] for n in not_estimated if not n["analytical_estimate"]],
        },
        "LUT": with_attn["LUT"],
        "BRAM_18K": with_attn["BRAM_18K"],
        "URAM": with_attn["URAM"],
        "DSP": with_attn["DSP"],
        "estimated_throughput_fps": perf.get("estimated_throughput_fps"),
        "estimated_latency_ns": perf.get("estimated_latency_ns"),
        "max_cycles": perf.get("max_cycles"),
        "max_cycles_node": perf.get("max_cycles_node_name"),
        "critical_path_cycles": perf.get("critical_path_cycles"),
        "nodes_outside_dataflow_partition": _outside_partition(out_dir),
        "nodes_not_estimated_by_finn": not_estimated,
        "float_datapath_nodes": _read_json(report / "hw_datapath.json"),
        "warnings": record.get("warnings", []),
        "emulation": emu.as_dict() if emu is not None else None,
        "flow_time_s": round(time.time() - t0, 2),
        "steps": record.get("steps", []),
    }
    return summary
