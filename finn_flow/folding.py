"""The folding step: how many PE/SIMD lanes each hardware layer gets.

:func:`make_step_set_folding` returns ``step_set_folding``, which folds in this order:

* no ``target_fps``, no folding file, a resource budget: the fastest design within the budget
  (:mod:`finn_flow.fit`; every candidate to ``report/folding_candidates.csv``, a warning when
  nothing fits);
* ``target_fps``: finn-plus's transformer folding (attention + ``SetFolding``) for that rate;
* a folding JSON file (``folding_config_file``): applied on top, after checking that every node
  it names exists (a FinnFlowError lists the graph's nodes otherwise).

It records the slowest node's cycles (and a warning when ``target_fps`` is not reached) in
the build's ``record`` and writes finn's ``report/final_folding_config.json``.

Usage::

    steps = [..., "step_specialize_layers", make_step_set_folding(record), ...]
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from qonnx.core.modelwrapper import ModelWrapper

from finn_flow.errors import FinnFlowError

if TYPE_CHECKING:
    from finn_flow.steps import Step

__all__ = ["make_step_set_folding"]


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
