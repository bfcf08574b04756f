"""Folding that fits: the fastest design whose resource estimate stays within a budget.

FINN folds a dataflow graph for a target throughput (finn-plus's transformer folding: attention
``EmbFold``/``SeqFold`` for the target cycles, FINN's ``SetFolding`` for the rest). Without a
target it leaves every layer fully folded, the slowest and (roughly) smallest design.
:func:`search` evaluates candidate targets on the specialised graph with FINN's own folding and
resource estimates (plus the analytical estimates of :mod:`finn_flow.attention_estimate` for
what FINN does not estimate), each in well under a second, and returns every candidate:

1. the fully folded design (no target);
2. targets on a geometric grid from the fully folded throughput up to ``max_fps``;
3. a bisection between the fastest fitting and the slowest non-fitting target.

The achieved throughput (``1e9 / clock_ns / max_cycles``) is a step function of the target,
so candidates are compared by what they achieve, not by what was asked. :func:`choose` picks
the fastest fitting candidate (ties: fewer LUTs); when none fits, the smallest design and the
resource that binds it. A :class:`Budget` comes from a board's capacities times a utilisation
cap (default 80 %) or from explicit limits (``lut=8000,dsp=20,bram18=20``).

Every resource figure here is an estimate (FINN's, plus our analytical model where FINN reports
0), never a measurement.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field

from finn_flow.errors import FinnFlowError
from finn_flow.graph import is_hw

__all__ = [
    "RESOURCE_CHOICES",
    "Budget",
    "Candidate",
    "FitResult",
    "apply_resource_choice",
    "choose",
    "evaluate",
    "search",
    "write_pareto",
]

#: Resources a budget limits, keyed like FINN's estimate reports.
BUDGET_KEYS = ("LUT", "BRAM_18K", "URAM", "DSP")
_ALIASES = {
    "lut": ("LUT", 1),
    "luts": ("LUT", 1),
    "dsp": ("DSP", 1),
    "dsps": ("DSP", 1),
    "bram18": ("BRAM_18K", 1),
    "bram_18k": ("BRAM_18K", 1),
    "bram36": ("BRAM_18K", 2),
    "bram": ("BRAM_18K", 2),
    "uram": ("URAM", 1),
}
DEFAULT_MAX_UTIL = 0.8


@dataclass(frozen=True)
class Budget:
    """Upper limits per resource (None: unlimited) and where they come from."""

    limits: dict
    source: str

    @classmethod
    def from_capacities(cls, capacities: dict, max_util: float, name: str) -> Budget:
        if not 0 < max_util <= 1:
            raise FinnFlowError(f"max_util must be in (0, 1], got {max_util!r}.")
        limits = {
            k: (capacities[k] * max_util if capacities.get(k) is not None else None)
            for k in BUDGET_KEYS
        }
        if all(v is None for v in limits.values()):
            raise FinnFlowError(
                f"The capacities of {name} are unknown: give --budget (e.g. lut=8000,dsp=20)."
            )
        return cls(limits, f"{max_util:.0%} of {name}")

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``"lut=8000,dsp=20,bram18=20"`` (also ``bram36=10``, ``uram=0``); others unlimited."""
        limits: dict = dict.fromkeys(BUDGET_KEYS)
        for item in filter(None, (p.strip() for p in str(text).split(","))):
            key, sep, value = item.partition("=")
            if not sep or key.strip().lower() not in _ALIASES:
                raise FinnFlowError(
                    f"Budget item {item!r}: expected KEY=NUMBER with KEY one of "
                    f"{', '.join(sorted(_ALIASES))} (e.g. lut=8000,dsp=20,bram18=20)."
                )
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not math.isfinite(number) or number < 0:
                raise FinnFlowError(f"Budget item {item!r}: {value!r} is not a number >= 0.")
            resource, factor = _ALIASES[key.strip().lower()]
            limits[resource] = number * factor
        if all(v is None for v in limits.values()):
            raise FinnFlowError(f"Budget {text!r} limits nothing (e.g. lut=8000,dsp=20).")
        return cls(limits, f"budget {text}")

    def over(self, resources: dict) -> dict:
        """Resources above their limit -> used / limit (> 1), most binding first."""
        ratios = {}
        for key, limit in self.limits.items():
            if limit is None:
                continue
            used = float(resources.get(key, 0))
            if used > limit:
                ratios[key] = used / limit if limit > 0 else math.inf
        return dict(sorted(ratios.items(), key=lambda kv: -kv[1]))

    def utilisation(self, resources: dict) -> dict:
        return {
            k: (float(resources.get(k, 0)) / v if v else None)
            for k, v in self.limits.items()
            if v is not None
        }


@dataclass
class Candidate:
    """One folding: what was asked, what it achieves, what it costs (estimates)."""

    target_fps: float | None
    fps: float
    max_cycles: int
    bottleneck: str
    resources: dict
    fits: bool
    over: dict = field(default_factory=dict)
    #: the resource choice (:data:`RESOURCE_CHOICES`)
    choice: str = "auto"

    def row(self) -> dict:
        return {
            "target_fps": self.target_fps,
            "choice": self.choice,
            "fps": round(self.fps, 1),
            "max_cycles": self.max_cycles,
            "bottleneck": self.bottleneck,
            **{k: round(float(self.resources.get(k, 0)), 1) for k in BUDGET_KEYS},
            "fits": self.fits,
        }


@dataclass
class FitResult:
    chosen: Candidate
    fits: bool
    budget: Budget
    candidates: list
    #: when nothing fits: the resource most over budget in the smallest design
    binding: str | None = None

    def choice_reason(self) -> str:
        """Which resource choice was taken, and why (what each other choice reached)."""
        chosen = self.chosen.choice
        why = []
        for other in RESOURCE_CHOICES:
            if other == chosen:
                continue
            fps = [c.fps for c in self.candidates if c.choice == other and c.fits]
            why.append(
                f"with {other} the fastest fitting design reaches {max(fps):,.0f} inferences/s"
                if fps
                else f"with {other} no design fits"
            )
        return f"{chosen}: {RESOURCE_CHOICES[chosen]}; {'; '.join(why)}"

    def as_dict(self) -> dict:
        return {
            "budget": {k: v for k, v in self.budget.limits.items() if v is not None},
            "budget_source": self.budget.source,
            "fits": self.fits,
            "resource_choice": self.choice_reason(),
            "chosen": self.chosen.row(),
            "binding_resource": self.binding,
            "best_fitting_fps": max((c.fps for c in self.candidates if c.fits), default=None),
            "candidates_evaluated": len(self.candidates),
        }


#: Resource choices evaluated for every target: where weights and thresholds live, and what
#: multiplies. ``auto``: FINN's defaults (small memories in LUTs, MVAU ``resType`` and the
#: attention's ``mac_resource`` left to FINN, i.e. LUT multipliers for the HLS units and the
#: attention); ``bram``: every MVAU weight/threshold memory and every thresholding node's
#: thresholds in block RAM (``ram_style``/``ram_style_thresholds = "block"``, thresholding
#: depth triggers), frees LUTs where BRAM is to spare (the attention keeps its memories: its
#: published results put block-RAM thresholds at more LUTs, not fewer); ``bram+dsp``: as
#: ``bram``, and multipliers in DSP slices (MVAU ``resType = "dsp"``, attention
#: ``mac_resource = "dsp"``), trading LUTs for DSPs where DSPs are to spare.
RESOURCE_CHOICES = {
    "auto": "FINN's defaults (small weight and threshold memories in LUTs, LUT multipliers)",
    "bram": "weights and thresholds in block RAM (frees LUTs; the attention keeps its defaults)",
    "bram+dsp": "weights and thresholds in block RAM, multipliers in DSP slices (MVAU resType, "
    "attention mac_resource)",
}
_BRAM_ATTRS = {
    "ram_style": "block",
    "ram_style_thresholds": "block",
    "depth_trigger_bram": 1,  # thresholding_rtl: every depth to BRAM ...
    "depth_trigger_uram": 1 << 30,  # ... and none to URAM (0 would send all to URAM)
}
_DSP_ATTRS = {"resType": "dsp", "mac_resource": "dsp"}


def apply_resource_choice(model, choice: str):
    """Set the attributes of :data:`RESOURCE_CHOICES` ``choice`` on ``model`` (in place)."""
    if choice not in RESOURCE_CHOICES:
        raise FinnFlowError(
            f"Unknown resource choice {choice!r}; known: {', '.join(RESOURCE_CHOICES)}."
        )
    if choice == "auto":
        return model
    from qonnx.custom_op.registry import getCustomOp

    for node in model.graph.node:
        if not is_hw(node):
            continue
        inst = getCustomOp(node)
        types = inst.get_nodeattr_types()
        attention = node.op_type.startswith("ScaledDotProductAttention")
        settings = {} if attention else dict(_BRAM_ATTRS)
        if choice == "bram+dsp":
            settings.update(_DSP_ATTRS)
        for attr, value in settings.items():
            if attr in types:
                inst.set_nodeattr(attr, value)
    return model


def _fold(model, target_fps: float | None, cfg):
    """finn-plus's transformer folding for ``target_fps`` (None: leave fully folded)."""
    if target_fps is None:
        return copy.deepcopy(model)
    from finn.builder.custom_step_library.transformer_adhoc import step_set_folding

    fold_cfg = dataclasses.replace(cfg, target_fps=math.ceil(target_fps))
    fold_cfg = dataclasses.replace(fold_cfg, folding_config_file=None)
    return step_set_folding(copy.deepcopy(model), fold_cfg)


def estimate_resources(model, fpga_part: str) -> dict:
    """FINN's per-node resource estimates, with the analytical ones (attention:
    :mod:`finn_flow.attention_estimate`; adds, forks, LayerNorm, reshapes:
    :mod:`finn_flow.glue_estimate`) in place of FINN's row for the nodes FINN reports as 0."""
    from finn.analysis.fpgadataflow.res_estimation import res_estimation

    from finn_flow.attention_estimate import attention_nodes_estimate
    from finn_flow.glue_estimate import glue_nodes_estimate

    analytical = {**attention_nodes_estimate(model), **glue_nodes_estimate(model)}
    rows = {**res_estimation(model, fpga_part), **analytical}
    return {k: float(sum(float(r.get(k, 0)) for r in rows.values())) for k in BUDGET_KEYS}


def evaluate(
    model, target_fps: float | None, cfg, budget: Budget, choice: str = "auto"
) -> tuple[Candidate, object]:
    """Fold ``model`` (specialised HW graph) for ``target_fps`` with the resource choice
    ``choice``; the candidate and the folded model."""
    from finn.analysis.fpgadataflow.dataflow_performance import dataflow_performance
    from finn.transformation.fpgadataflow.annotate_cycles import AnnotateCycles
    from finn.transformation.fpgadataflow.minimize_accumulator_width import (
        MinimizeAccumulatorWidth,
    )
    from finn.transformation.fpgadataflow.minimize_weight_bit_width import MinimizeWeightBitWidth

    folded = apply_resource_choice(_fold(model, target_fps, cfg), choice)
    sized = folded.transform(MinimizeWeightBitWidth()).transform(MinimizeAccumulatorWidth())
    sized = sized.transform(AnnotateCycles())
    perf = sized.analysis(dataflow_performance)
    cycles = max(1, int(perf["max_cycles"]))
    resources = estimate_resources(sized, cfg._resolve_fpga_part())
    over = budget.over(resources)
    candidate = Candidate(
        target_fps=target_fps,
        fps=1e9 / cfg.synth_clk_period_ns / cycles,
        max_cycles=cycles,
        bottleneck=str(perf["max_cycles_node_name"]),
        resources=resources,
        fits=not over,
        over=over,
        choice=choice,
    )
    return candidate, folded


def search(model, cfg, budget: Budget, max_fps: float = 1e7, grid: int = 16, refine: int = 8):
    """Every candidate evaluated (see the module docstring), in evaluation order: each target
    with each resource choice (:data:`RESOURCE_CHOICES`)."""
    candidates = []
    for choice in RESOURCE_CHOICES:
        base, _ = evaluate(model, None, cfg, budget, choice)
        mine = [base]
        lo = base.fps
        if max_fps > lo:
            ratio = (max_fps / lo) ** (1 / grid)
            for i in range(1, grid + 1):
                mine.append(evaluate(model, lo * ratio**i, cfg, budget, choice)[0])
        fitting = [c for c in mine if c.fits and c.target_fps]
        failing = [c for c in mine if not c.fits and c.target_fps]
        if fitting and failing:
            low = max(c.target_fps for c in fitting)
            above = [c.target_fps for c in failing if c.target_fps > low]
            high = min(above) if above else None
            for _ in range(refine if high else 0):
                mid = math.sqrt(low * high)
                cand = evaluate(model, mid, cfg, budget, choice)[0]
                mine.append(cand)
                if cand.fits:
                    low = mid
                else:
                    high = mid
        candidates += mine
    return candidates


def choose(candidates: list, budget: Budget) -> FitResult:
    """The fastest fitting candidate (ties: fewest LUTs); else the smallest design."""
    fitting = [c for c in candidates if c.fits]
    if fitting:
        best = max(
            fitting, key=lambda c: (round(c.fps, 3), c.choice == "auto", -c.resources["LUT"])
        )
        return FitResult(best, True, budget, candidates)

    def worst_ratio(c):
        return max(c.over.values()) if c.over else 0.0

    smallest = min(candidates, key=lambda c: (worst_ratio(c), -c.fps))
    binding = next(iter(smallest.over), None)
    return FitResult(smallest, False, budget, candidates, binding=binding)


def write_pareto(table, budget: Budget, target, out_dir) -> dict:
    """``pareto.csv`` (every candidate, ``pareto_optimal`` marked) and ``pareto.png``
    (throughput against LUT, DSP and BRAM, with the board's capacity and the budget)."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir = Path(out_dir)
    table = table.drop_duplicates(subset=["fps", "choice", *BUDGET_KEYS]).sort_values("fps").copy()
    costs = table[list(BUDGET_KEYS)].to_numpy(float)
    fps = table["fps"].to_numpy(float)
    optimal = []
    for i in range(len(table)):  # no other candidate at least as fast and no more costly
        better = (fps >= fps[i]) & np.all(costs <= costs[i], axis=1)
        strictly = (fps > fps[i]) | np.any(costs < costs[i], axis=1)
        optimal.append(not np.any(better & strictly))
    table["pareto_optimal"] = optimal
    csv_path, png_path = out_dir / "pareto.csv", out_dir / "pareto.png"
    table.to_csv(csv_path, index=False)
    caps = target.capacities()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
    for ax, key in zip(axes, ("LUT", "DSP", "BRAM_18K"), strict=True):
        fits = table["fits"].to_numpy(bool)
        ax.scatter(table[key][fits], table["fps"][fits], c="tab:green", label="fits")
        ax.scatter(table[key][~fits], table["fps"][~fits], c="tab:red", marker="x", label="over")
        if caps.get(key):
            ax.axvline(caps[key], color="k", lw=1, label=f"{target.name} capacity")
        if budget.limits.get(key) is not None:
            ax.axvline(budget.limits[key], color="tab:orange", ls="--", lw=1, label=budget.source)
        ax.set_xlabel(f"{key} (estimate: FINN + analytical)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("inferences/s (FINN cycle estimate)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Candidate foldings for {target.name}")
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return {"csv": str(csv_path), "png": str(png_path)}
