"""The paper's experiment grid (``apq reproduce``): float baseline, bit x scheme presets, seeds.

For every seed the float model is trained once (``runs/float/seed<N>``) and every QAT
configuration of that seed starts from it (``train_run(..., float_init=...)``). Each
configuration is its own run directory ``runs/<bits>_<schemes>[_t<threshold>]/seed<N>``:
finished runs (``metrics.json`` present) are never redone and half-finished ones resume from
their checkpoint, so an interrupted ``apq reproduce`` continues where it stopped. Runs of
``jobs > 1`` go to spawned worker processes with one torch thread each.

Outputs in the grid directory (all written atomically):

    settings.json        the training/data settings (a grid refuses to continue with others)
    results.csv          one row per run (float baselines and QAT configurations); ``degenerate``
                         (1 for a model with constant or non-finite output or a collapsed
                         quantiser, brevitas_apq.health) and ``degenerate_reasons``
    results.md           the table aggregated over seeds, with the command that regenerates it;
                         degenerate runs are counted per configuration and listed
    rmse_bars.png        RMSE per configuration, mean and std over seeds
    rmse_vs_zero_point_ops.png   RMSE against zero-point operations, one point per configuration
    thresholds.csv/.png  the APQ threshold sweep (``thresholds=...``)
    stability.csv        per APQ quantiser: how often its SQ/AQ decision flipped in training
    symmetry_representative.png  S over training of one representative APQ run
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brevitas_apq import io
from brevitas_apq.data import DataSpec
from brevitas_apq.errors import APQError
from brevitas_apq.health import degenerate_reasons
from brevitas_apq.models import ModelConfig
from brevitas_apq.plans import BIT_PRESETS, SCHEME_PRESETS, BitPlan, DecisionRule, PlanError
from brevitas_apq.quant.core import DEFAULT_DECISION_BAND, DEFAULT_DECISION_RULE
from brevitas_apq.quant.validation import DECISION_RULES
from brevitas_apq.report import fmt
from brevitas_apq.rundir import CHECKPOINT
from brevitas_apq.runner import Task, run_tasks
from brevitas_apq.training import TrainConfig

# The paper's order of the scheme presets.
GRID_SCHEMES = ("all-aq", "all-sq", "sq-aq", "sq-apq", "all-apq")
APQ_SCHEMES = ("sq-apq", "all-apq")
DEFAULT_THRESHOLD = 0.1
QUICK = {"seeds": 1, "float_epochs": 20, "qat_epochs": 3, "max_batches": 200}
FINN_COLUMNS = ("LUT", "BRAM_18K", "DSP", "estimated_throughput_fps")


class GridError(APQError):
    """A grid option or grid directory that cannot be used as given."""


@dataclass(frozen=True)
class Config:
    """One QAT configuration of the grid: bit preset, scheme preset, APQ threshold and APQ
    decision rule (``paper`` or ``hysteresis`` with its default band and momentum, plans.py).

    Threshold and rule only name APQ configurations; the paper's rule adds nothing to the name,
    so grids run before the rule became a grid option keep their run directories.
    """

    bits: str
    schemes: str
    threshold: float = DEFAULT_THRESHOLD
    rule: str = DEFAULT_DECISION_RULE

    @property
    def is_apq(self) -> bool:
        return "apq" in self.schemes

    @property
    def _rule_suffix(self) -> str:
        return "" if self.rule == DEFAULT_DECISION_RULE else self.rule

    @property
    def name(self) -> str:
        base = f"{self.bits}/{self.schemes}"
        if not self.is_apq:
            return base
        return " ".join(filter(None, [f"{base} t={self.threshold:g}", self._rule_suffix]))

    @property
    def dirname(self) -> str:
        base = f"{self.bits}_{self.schemes}"
        if not self.is_apq:
            return base
        return "_".join(filter(None, [f"{base}_t{self.threshold:g}", self._rule_suffix]))

    def plan(self) -> BitPlan:
        decision = DecisionRule(self.rule) if self.is_apq else None
        return BitPlan.from_presets(self.bits, self.schemes, self.threshold, decision)


def parse_list(text: str | Sequence[str] | None, valid: Sequence[str], kind: str) -> tuple:
    """Comma-separated names (or a sequence), each checked against ``valid``."""
    if text is None:
        return tuple(valid)
    items = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(text)
    items = [t for t in items if t]
    if not items:
        raise GridError(f"no {kind} given; valid: {', '.join(valid)}")
    for item in items:
        if item not in valid:
            raise GridError(f"unknown {kind} {item!r}; valid: {', '.join(valid)}")
    return tuple(dict.fromkeys(items))


def parse_thresholds(text: str | Sequence[float] | None) -> tuple[float, ...]:
    """``"0,0.05,0.1"`` -> ``(0.0, 0.05, 0.1)``; each a number in [0, 1]."""
    if text is None or text == "":
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    values = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise GridError(
                f"threshold {item!r} is not a number; give comma-separated numbers in [0, 1], "
                "e.g. 0,0.05,0.1,0.2,0.5,1"
            ) from None
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise GridError(f"threshold {value!r} is out of range; allowed: numbers in [0, 1]")
        values.append(value)
    return tuple(dict.fromkeys(values))


def configurations(
    bits: Sequence[str],
    schemes: Sequence[str],
    thresholds: Sequence[float],
    threshold: float,
    rules: Sequence[str] = (DEFAULT_DECISION_RULE,),
) -> list[Config]:
    """The main grid (APQ at ``threshold``, once per decision rule) followed by the threshold
    sweep of the APQ schemes (also once per rule)."""
    grid = []
    for t in (threshold, *thresholds):
        for b in bits:
            for s in schemes:
                if s in APQ_SCHEMES:
                    grid += [Config(b, s, t, r) for r in rules]
                elif t == threshold:
                    grid.append(Config(b, s, t))
    return list(dict.fromkeys(grid))


# --- running ------------------------------------------------------------------------------------


def float_dir(out: Path, seed: int) -> Path:
    return out / "runs" / "float" / f"seed{seed}"


def run_dir(out: Path, config: Config, seed: int) -> Path:
    return out / "runs" / config.dirname / f"seed{seed}"


def _run_task(task: dict[str, Any]) -> dict[str, Any]:
    """Train one run (in a worker process or in-process); skip it if it already finished."""
    from brevitas_apq.training import train_float, train_run

    out = Path(task["dir"])
    metrics_path = out / "metrics.json"
    if metrics_path.is_file():
        metrics = io.read_json(
            metrics_path, fix=f"delete the folder {out} (the run is trained again)"
        )
        return {"metrics": metrics, "skipped": True, "seconds": 0.0}
    start = time.perf_counter()
    common = {
        "data": task["data"],
        "train": task["train"],
        "model_options": task["model_options"],
        "resume": (out / CHECKPOINT).exists(),
        "progress": task["progress"],
    }
    if task["kind"] == "float":
        metrics = train_float(out, **common)
    else:
        metrics = train_run(
            out, plan=task["config"].plan(), float_init=Path(task["float_dir"]), **common
        )
    return {"metrics": metrics, "skipped": False, "seconds": time.perf_counter() - start}


def _execute(tasks: list[dict[str, Any]], jobs: int, log: Callable[[str], None]) -> dict[str, str]:
    """Run ``tasks`` through the runner (a QAT task waits for its seed's float task), logging
    each; a failure is written to the run's ``error.txt`` and the grid goes on. {dir: error}."""
    counter = [0]

    def head(task: Task) -> str:
        counter[0] += 1
        spec = task.args[0]
        label = "float" if spec["kind"] == "float" else spec["config"].name
        return f"[{counter[0]}/{len(tasks)}] {label} seed {spec['seed']}"

    def done(task: Task, result: dict[str, Any]) -> None:
        if result["skipped"]:
            log(f"{head(task)}: done before, kept")
            return
        m = result["metrics"]
        rmse = m["float_rmse"] if task.args[0]["kind"] == "float" else m["rmse"]
        log(f"{head(task)}: test RMSE {rmse:.3f} ({result['seconds']:.0f} s)")

    def error(task: Task, text: str) -> None:
        io.write_text(Path(task.key) / "error.txt", text)
        log(f"{head(task)}: FAILED ({text.strip().splitlines()[-1]})")

    return run_tasks(
        [Task(t["dir"], _run_task, (t,), after=t.get("after")) for t in tasks],
        jobs,
        on_done=done,
        on_error=error,
        keep_going=True,
    )


# --- results ------------------------------------------------------------------------------------


_DECISION_COLUMNS = [
    "quantizer",
    "steps",
    "flips",
    "aq_step_fraction",
    "final_scheme",
    "final_symmetry",
    "frozen_scheme",
    "kept_symmetry",
    "agrees",
]


def decision_records(run: Path, threshold: float, frozen: dict[str, str]) -> pd.DataFrame:
    """Per APQ quantiser of one QAT run (from its ``symmetry.csv`` and ``history.csv``).

    ``flips``: changes of the SQ/AQ decision over all QAT mini-batches; ``final_scheme`` /
    ``final_symmetry``: the last mini-batch's; ``frozen_scheme``: the exported decision
    (``frozen``, ``metrics["schemes"]``), which is the one at the end of the kept (best
    validation) epoch; ``kept_symmetry``: the mean S over that epoch's mini-batches; ``agrees``:
    1 if the frozen decision is the one that mean S gives (AQ iff S > threshold), 0 if not, NaN
    where the mean S lies within the hysteresis band (threshold +- 20 %, where either decision
    is acceptable) or the kept epoch cannot be located.
    """
    path = run / "symmetry.csv"
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=_DECISION_COLUMNS)
    sym = pd.read_csv(path).sort_values("step", kind="stable")
    window = _kept_epoch_steps(run, int(sym["step"].max()) if len(sym) else 0)
    band = DEFAULT_DECISION_BAND * threshold
    rows = []
    for quantizer, q in sym.groupby("quantizer", sort=False):
        schemes = q["scheme"].to_numpy()
        kept = np.nan
        if window is not None:
            in_kept = q["step"].between(window[0], window[1])
            kept = float(q.loc[in_kept, "symmetry"].mean()) if in_kept.any() else np.nan
        frozen_scheme = frozen.get(quantizer, "")
        agrees = np.nan
        if frozen_scheme and np.isfinite(kept) and abs(kept - threshold) > band:
            agrees = float(frozen_scheme == ("AQ" if kept > threshold else "SQ"))
        rows.append(
            {
                "quantizer": quantizer,
                "steps": len(q),
                "flips": int((schemes[1:] != schemes[:-1]).sum()),
                "aq_step_fraction": float((schemes == "AQ").mean()),
                "final_scheme": schemes[-1],
                "final_symmetry": float(q["symmetry"].iloc[-1]),
                "frozen_scheme": frozen_scheme,
                "kept_symmetry": kept,
                "agrees": agrees,
            }
        )
    return pd.DataFrame(rows, columns=_DECISION_COLUMNS)


def _kept_epoch_steps(run: Path, last_step: int) -> tuple[int, int] | None:
    """The first and last mini-batch step of the kept QAT epoch (the last one marked best in
    ``history.csv``); None if it cannot be located (no history, or an uneven step count)."""
    path = run / "history.csv"
    if not path.is_file() or path.stat().st_size == 0:
        return None
    history = pd.read_csv(path)
    qat = history[history["phase"] == "qat"]
    best = qat[qat["best"].astype(bool)]
    if best.empty or last_step <= 0 or last_step % len(qat):
        return None
    per_epoch = last_step // len(qat)
    kept = int(best["epoch"].iloc[-1])
    return (kept - 1) * per_epoch + 1, kept * per_epoch


def _zero_point_ops(metrics: dict[str, Any]) -> float:
    value = metrics.get("zero_point_ops")
    return float(value) if value is not None else float("nan")


def _skill(rmse: float, metrics: dict[str, Any]) -> dict[str, float]:
    """Skill over the persistence forecast on the test split, ``1 - RMSE / persistence RMSE``
    (> 0: better than repeating the last value), and whether it is positive."""
    persistence = metrics.get("persistence_rmse", float("nan"))
    skill = 1.0 - rmse / persistence if persistence else float("nan")
    return {"persistence_rmse": persistence, "skill": skill, "beats_persistence": int(skill > 0)}


def _row(config: Config | None, seed: int, run: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    reasons = degenerate_reasons(metrics, "float" if config is None else "qat")
    health = {"degenerate": int(bool(reasons)), "degenerate_reasons": "; ".join(reasons)}
    if config is None:  # float baseline
        return {
            "config": "float",
            "bits": "float",
            "schemes": "",
            "threshold": float("nan"),
            "rule": "",
            "seed": seed,
            "rmse": metrics["float_rmse"],
            "mae": metrics.get("float_mae", float("nan")),
            "val_rmse": metrics.get("float_val_rmse", float("nan")),
            **_skill(metrics["float_rmse"], metrics),
            "float_rmse": metrics["float_rmse"],
            "rmse_vs_float": 0.0,
            "model_size_bits": metrics["float_model_size_bits"],
            "int_ops": float("nan"),
            "zero_point_ops": 0.0,
            "n_quantizers": 0,
            "n_aq": 0,
            "n_apq": 0,
            "n_apq_aq": 0,
            "flips": float("nan"),
            "flips_max": float("nan"),
            "agreement": float("nan"),
            "epochs_run": metrics.get("float_epochs_run", metrics.get("epochs_run")),
            "train_seconds": metrics.get("train_seconds"),
            **health,
            "run_dir": str(run),
        }
    schemes = metrics.get("schemes", {})
    decisions = decision_records(run, config.threshold, schemes)
    adaptive = list(decisions["quantizer"])
    return {
        "config": config.name,
        "bits": config.bits,
        "schemes": config.schemes,
        "threshold": config.threshold if config.is_apq else float("nan"),
        "rule": config.rule if config.is_apq else "",
        "seed": seed,
        "rmse": metrics["rmse"],
        "mae": metrics.get("mae", float("nan")),
        "val_rmse": metrics.get("val_rmse", float("nan")),
        **_skill(metrics["rmse"], metrics),
        "float_rmse": metrics["float_rmse"],
        "rmse_vs_float": metrics["rmse"] / metrics["float_rmse"] - 1.0,
        "model_size_bits": metrics["model_size_bits"],
        "int_ops": float(metrics["int_ops"]) if "int_ops" in metrics else float("nan"),
        "zero_point_ops": _zero_point_ops(metrics),
        "n_quantizers": len(schemes),
        "n_aq": sum(v == "AQ" for v in schemes.values()),
        "n_apq": len(adaptive),
        "n_apq_aq": sum(schemes.get(q) == "AQ" for q in adaptive),
        # decision flips of the run (sum over its APQ quantisers, and the worst quantiser) and
        # the share of its unambiguous APQ quantisers whose exported decision matches the kept
        # epoch's mean S (decision_records)
        "flips": float(decisions["flips"].sum()) if adaptive else float("nan"),
        "flips_max": float(decisions["flips"].max()) if adaptive else float("nan"),
        "agreement": float(decisions["agrees"].mean()) if adaptive else float("nan"),
        "epochs_run": metrics.get("qat_epochs_run", metrics.get("epochs_run")),
        "train_seconds": metrics.get("train_seconds"),
        **health,
        "run_dir": str(run),
    }


_RETRAIN = "delete its run folder and run the same command again (the run is trained again)"


def collect(
    out: Path, configs: Sequence[Config], seeds: Sequence[int], finn: dict[str, dict] | None = None
) -> pd.DataFrame:
    """One row per finished run of the grid (float baselines first)."""
    rows = []
    for seed in seeds:
        path = float_dir(out, seed) / "metrics.json"
        if path.is_file():
            rows.append(_row(None, seed, path.parent, io.read_json(path, fix=_RETRAIN)))
    for config in configs:
        for seed in seeds:
            run = run_dir(out, config, seed)
            path = run / "metrics.json"
            if path.is_file():
                row = _row(config, seed, run, io.read_json(path, fix=_RETRAIN))
                for key, value in ((finn or {}).get(str(run)) or {}).items():
                    row[f"finn_{key}"] = value
                rows.append(row)
    return pd.DataFrame(rows)


def aggregate(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per configuration, in grid order; ``degenerate_runs`` counts
    the runs of a configuration whose model is degenerate."""
    if results.empty:
        return pd.DataFrame()
    keys = ["config", "bits", "schemes", "threshold", "rule"]
    frame = results.copy()
    if "rule" not in frame:
        frame["rule"] = ""
    frame["threshold"] = frame["threshold"].fillna(-1.0)  # groupby drops NaN keys
    numeric = [
        c
        for c in frame.columns
        if c not in (*keys, "seed", "run_dir", "degenerate", "beats_persistence")
        and pd.api.types.is_numeric_dtype(frame[c])
    ]
    grouped = frame.groupby(keys, sort=False)
    agg = grouped[numeric].mean()
    if "degenerate" in frame:
        agg["degenerate_runs"] = grouped["degenerate"].sum()
    if "beats_persistence" in frame:  # runs whose test RMSE is below persistence's
        agg["beats_persistence_runs"] = grouped["beats_persistence"].sum()
    for column in ("val_rmse", "skill", "flips"):
        if column in frame:
            agg[f"{column}_std"] = grouped[column].std(ddof=1)
    agg["rmse_std"] = grouped["rmse"].std(ddof=1) if len(frame) else np.nan
    agg["rmse_vs_float_std"] = grouped["rmse_vs_float"].std(ddof=1)
    agg["seeds"] = grouped["seed"].nunique()
    agg = agg.reset_index()
    agg["threshold"] = agg["threshold"].where(agg["threshold"] >= 0)
    agg = agg.rename(columns={"rmse": "rmse_mean", "rmse_vs_float": "rmse_vs_float_mean"})
    return agg


def _mean_std(r: pd.Series, column: str, spec: str, scale: float = 1.0, unit: str = "") -> str:
    """``"mean ± std"`` of an aggregated column (``–`` where it is missing)."""
    mean = r.get(column)
    if mean is None or pd.isna(mean):
        return "–"
    std = r.get(f"{column}_std")
    tail = "" if std is None or pd.isna(std) else f" ± {format(scale * std, spec.lstrip('+'))}"
    return f"{format(scale * mean, spec)}{tail}{unit}"


def markdown_table(agg: pd.DataFrame, finn: bool = False) -> str:
    """The aggregated grid as a Markdown table; a "degenerate" column (runs with a degenerate
    model, of the seeds) appears when there are any. "skill" is ``1 - RMSE / persistence RMSE``
    on the test split (mean ± std over seeds, and in how many seeds it is positive)."""
    flagged = "degenerate_runs" in agg and bool(agg["degenerate_runs"].fillna(0).any())
    header = [
        "configuration",
        "seeds",
        "val RMSE (mean ± std)",
        "RMSE (mean ± std)",
        "skill vs persistence",
        "vs float",
        "model size (bits)",
        "zero-point ops",
        "APQ → AQ",
        "AQ quantisers",
    ]
    finn_cols = [c for c in agg.columns if c.startswith("finn_")] if finn else []
    header += [c.removeprefix("finn_") for c in finn_cols]
    header += ["degenerate"] if flagged else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in agg.iterrows():
        std = "" if pd.isna(r.get("rmse_std")) else f" ± {r['rmse_std']:.3f}"
        apq = f"{r['n_apq_aq']:.1f} of {r['n_apq']:.0f}" if r["n_apq"] else "–"
        aq = f"{r['n_aq']:.1f} of {r['n_quantizers']:.0f}" if r["n_quantizers"] else "–"
        skill = _mean_std(r, "skill", "+.2f", 100, " %")
        if skill != "–" and not pd.isna(r.get("beats_persistence_runs")):
            skill += f" ({int(r['beats_persistence_runs'])} of {int(r['seeds'])} > 0)"
        cells = [
            str(r["config"]),
            str(int(r["seeds"])),
            _mean_std(r, "val_rmse", ".3f"),
            f"{r['rmse_mean']:.3f}{std}",
            skill,
            f"{100 * r['rmse_vs_float_mean']:+.2f} %",
            f"{r['model_size_bits']:,.0f}",
            fmt(r["zero_point_ops"], ",.0f"),
            apq,
            aq,
        ]
        cells += [fmt(r[c], ",.1f") for c in finn_cols]
        if flagged:
            n_bad = int(r["degenerate_runs"])
            cells.append(f"**DEGENERATE: {n_bad} of {int(r['seeds'])}**" if n_bad else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stability(results: pd.DataFrame) -> pd.DataFrame:
    """Per configuration and APQ quantiser, over seeds: decision flips during training, the
    final and exported decisions, and their agreement with the kept epoch's S
    (:func:`decision_records`)."""
    records = []
    for _, run in results[results.config != "float"].iterrows():
        path = Path(run["run_dir"]) / "metrics.json"
        frozen = io.read_json(path, fix=_RETRAIN).get("schemes", {}) if path.is_file() else {}
        rec = decision_records(Path(run["run_dir"]), run["threshold"], frozen)
        if len(rec):
            records.append(
                rec.assign(config=run["config"], threshold=run["threshold"], seed=run["seed"])
            )
    columns = [
        "config",
        "threshold",
        "quantizer",
        "runs",
        "steps_mean",
        "flips_mean",
        "flips_max",
        "runs_with_flips",
        "final_aq_runs",
        "frozen_aq_runs",
        "aq_step_fraction",
        "final_symmetry_mean",
        "final_symmetry_std",
        "kept_symmetry_mean",
        "agreement",
    ]
    if not records:
        return pd.DataFrame(columns=columns)
    per_run = pd.concat(records, ignore_index=True)
    grouped = per_run.groupby(["config", "threshold", "quantizer"], sort=False)
    out = grouped.agg(
        runs=("seed", "nunique"),
        steps_mean=("steps", "mean"),
        flips_mean=("flips", "mean"),
        flips_max=("flips", "max"),
        runs_with_flips=("flips", lambda f: int((f > 0).sum())),
        final_aq_runs=("final_scheme", lambda s: int((s == "AQ").sum())),
        frozen_aq_runs=("frozen_scheme", lambda s: int((s == "AQ").sum())),
        aq_step_fraction=("aq_step_fraction", "mean"),
        final_symmetry_mean=("final_symmetry", "mean"),
        final_symmetry_std=("final_symmetry", "std"),
        kept_symmetry_mean=("kept_symmetry", "mean"),
        agreement=("agrees", "mean"),
    )
    return out.reset_index()[columns]


def decision_table(agg: pd.DataFrame) -> str:
    """The APQ configurations of an aggregated grid as a Markdown table of their decisions:
    flips per run (sum over the APQ quantisers, mean ± std over seeds), the worst quantiser's
    flips, and the agreement of the exported decisions with the kept epoch's S."""
    apq = agg[agg["schemes"].isin(APQ_SCHEMES)] if len(agg) else agg
    lines = [
        "| configuration | seeds | flips per run (sum over APQ quantisers) | worst quantiser "
        "(mean) | exported = kept epoch's S | RMSE (mean ± std) | zero-point ops |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, r in apq.iterrows():
        std = "" if pd.isna(r.get("rmse_std")) else f" ± {r['rmse_std']:.3f}"
        lines.append(
            f"| {r['config']} | {int(r['seeds'])} | {_mean_std(r, 'flips', ',.1f')} | "
            f"{fmt(r['flips_max'], ',.1f')} | {fmt(r['agreement'], '.3f')} | "
            f"{r['rmse_mean']:.3f}{std} | {fmt(r['zero_point_ops'], ',.0f')} |"
        )
    return "\n".join(lines)


def threshold_table(results: pd.DataFrame, thresholds: Sequence[float]) -> pd.DataFrame:
    agg = aggregate(results[results.schemes.isin(APQ_SCHEMES)])
    if agg.empty:
        return agg
    agg = agg[agg.threshold.isin(thresholds)]
    return agg.sort_values(["bits", "schemes", "threshold"], kind="stable").reset_index(drop=True)


# --- plots --------------------------------------------------------------------------------------


def _plt():
    import matplotlib.pyplot as plt

    from brevitas_apq import plots  # noqa: F401  (selects the Agg backend)

    return plt


def plot_bars(agg: pd.DataFrame, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(agg)), 4.2))
    x = np.arange(len(agg))
    colors = ["0.5" if c == "float" else f"C{BIT_PRESETS.index(b)}" for c, b in
              zip(agg["config"], agg["bits"], strict=True)]  # fmt: skip
    ax.bar(x, agg["rmse_mean"], yerr=agg["rmse_std"].fillna(0), capsize=3, color=colors)
    floats = agg[agg.config == "float"]
    if len(floats):
        ax.axhline(floats["rmse_mean"].iloc[0], color="black", ls="--", lw=1, label="float")
        ax.legend()
    ax.set_xticks(x, agg["config"], rotation=60, ha="right", fontsize=8)
    low = float((agg["rmse_mean"] - agg["rmse_std"].fillna(0)).min())
    ax.set_ylim(bottom=max(0.0, 0.9 * low))
    ax.set(ylabel="test RMSE (mean ± std over seeds)", title="RMSE per configuration")
    ax.grid(alpha=0.3, axis="y")
    return io.save_figure(fig, path)


def plot_rmse_vs_zero_point_ops(agg: pd.DataFrame, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    frame = agg[agg.config != "float"]
    use_ops = frame["zero_point_ops"].notna().any()
    xcol, xlabel = (
        ("zero_point_ops", "zero-point operations per inference")
        if use_ops
        else ("n_aq", "quantisers using AQ (zero-point operations not in metrics)")
    )
    markers = dict(zip(SCHEME_PRESETS, "osD^v", strict=True))
    for _, r in frame.iterrows():
        color = f"C{BIT_PRESETS.index(r['bits'])}" if r["bits"] in BIT_PRESETS else "C7"
        ax.errorbar(
            r[xcol],
            r["rmse_mean"],
            yerr=0 if pd.isna(r["rmse_std"]) else r["rmse_std"],
            fmt=markers.get(r["schemes"], "o"),
            color=color,
            capsize=3,
        )
        ax.annotate(str(r["config"]), (r[xcol], r["rmse_mean"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")  # fmt: skip
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=f"C{i}", marker="o", ls="", label=b)
        for i, b in enumerate(BIT_PRESETS)
        if b in set(frame["bits"])
    ] + [
        Line2D([], [], color="0.3", marker=m, ls="", label=s)
        for s, m in markers.items()
        if s in set(frame["schemes"])
    ]
    floats = agg[agg.config == "float"]
    if len(floats):
        ax.axhline(floats["rmse_mean"].iloc[0], color="black", ls="--", lw=1)
        handles.append(Line2D([], [], color="black", ls="--", label="float"))
    ax.legend(handles=handles, fontsize=7)
    ax.set(xlabel=xlabel, ylabel="test RMSE (mean ± std)", title="Accuracy against zero-point cost")
    ax.grid(alpha=0.3)
    return io.save_figure(fig, path)


def plot_thresholds(table: pd.DataFrame, path: Path) -> Path:
    plt = _plt()
    fig, (ax_rmse, ax_ops) = plt.subplots(1, 2, figsize=(11, 4))
    use_ops = table["zero_point_ops"].notna().any()
    for (bits, schemes), rows in table.groupby(["bits", "schemes"], sort=False):
        label = f"{bits}/{schemes}"
        ax_rmse.errorbar(rows.threshold, rows.rmse_mean, yerr=rows.rmse_std.fillna(0),
                         marker="o", capsize=3, label=label)  # fmt: skip
        ax_ops.plot(rows.threshold, rows.zero_point_ops if use_ops else rows.n_aq, marker="o",
                    label=label)  # fmt: skip
    ax_rmse.set(xlabel="APQ symmetry threshold", ylabel="test RMSE (mean ± std)")
    ax_ops.set(
        xlabel="APQ symmetry threshold",
        ylabel="zero-point operations" if use_ops else "quantisers using AQ",
    )
    for ax in (ax_rmse, ax_ops):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("APQ threshold sweep")
    return io.save_figure(fig, path)


# --- the grid -----------------------------------------------------------------------------------


@dataclass
class GridResult:
    out: Path
    results: pd.DataFrame
    table: pd.DataFrame
    thresholds: pd.DataFrame
    stability: pd.DataFrame
    failed: dict[str, str]
    seconds: float
    command: str
    files: list[Path] = dataclasses.field(default_factory=list)


#: ``DataSpec.options`` keys and the ``apq reproduce`` flags that set them (cli._csv_options).
_DATA_FLAGS = {
    "target": "--target",
    "timestamp": "--timestamp",
    "timestamp_format": "--timestamp-format",
    "features": "--features",
    "delimiter": "--delimiter",
    "decimal": "--decimal",
    "na_values": "--na-values",
}
#: ``ModelConfig`` options and their flags.
_MODEL_FLAGS = {
    "d_model": "--d-model",
    "n_heads": "--heads",
    "ffn_dim": "--ffn-dim",
    "norm": "--norm",
}


def command_line(
    out: Path,
    *,
    bits: Sequence[str],
    schemes: Sequence[str],
    seeds: int | Sequence[int],
    thresholds: Sequence[float],
    threshold: float,
    train: TrainConfig,
    data: DataSpec,
    rules: Sequence[str] = (DEFAULT_DECISION_RULE,),
    model_options: dict[str, Any] | None = None,
    jobs: int = 1,
    finn: bool = False,
    finn_board: str | None = None,
) -> str:
    """The ``apq reproduce`` command that regenerates this grid, quoted for a POSIX shell.

    Every setting that shapes the results is written out, defaults included, so that a later
    change of a default does not change what the command runs. Settings the command line
    cannot express (explicit seeds other than 0..N-1, ``qat_from_scratch``, another ``split``)
    are listed after a ``#``.

    Example::

        command_line(Path("runs/g"), bits=["all-8"], schemes=["all-sq"], seeds=1,
                     thresholds=(), threshold=0.1, train=TrainConfig(), data=DataSpec())
        # 'apq reproduce --out runs/g --seeds 1 --epochs 30 ... --bits all-8 ...'
    """
    args = ["apq", "reproduce", "--out", str(out)]
    extra = []
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if seed_list == list(range(len(seed_list))):
        args += ["--seeds", str(len(seed_list))]
    else:
        extra.append(f"seeds={seed_list}")
    args += ["--epochs", str(train.float_epochs), "--qat-epochs", str(train.qat_epochs)]
    if train.max_batches is not None:
        args += ["--max-batches", str(train.max_batches)]
    args += ["--batch-size", str(train.batch_size), "--patience", str(train.patience)]
    args += ["--lr", _number(train.lr), "--qat-lr", _number(train.qat_lr)]
    if train.qat_from_scratch:
        extra.append("qat_from_scratch=True")
    args += ["--bits", ",".join(bits), "--schemes", ",".join(schemes)]
    args += ["--threshold", _number(threshold), "--decision-rules", ",".join(rules)]
    if thresholds:
        args += ["--thresholds", ",".join(_number(t) for t in thresholds)]
    args += ["--data", data.dataset, "--predict", data.predict]
    args += ["--window", str(data.window), "--horizon", str(data.horizon)]
    if tuple(data.split) != DataSpec.split:
        extra.append(f"split={tuple(data.split)}")
    for key, value in data.options:
        flag = _DATA_FLAGS.get(key)
        values = [value] if isinstance(value, str) else list(value)
        joined = key in ("features", "na_values")
        if flag is None or (joined and any("," in str(v) for v in values)):
            extra.append(f"{key}={value!r}")
        elif joined:
            args += [f"{flag}={','.join(map(str, values))}"]
        else:
            args += [f"{flag}={v}" for v in values]
    for key, value in (model_options or {}).items():
        if key in _MODEL_FLAGS and value is not None:
            args += [_MODEL_FLAGS[key], str(value)]
        elif value is not None:
            extra.append(f"{key}={value!r}")
    if jobs != 1:
        args += ["--jobs", str(jobs)]
    if finn:
        args += ["--finn", "--board", finn_board or _default_board()]
    command = shlex.join(args)
    if extra:
        command += "  # not expressible on the command line: " + ", ".join(extra)
    return command


def _number(value: float) -> str:
    """The shortest of ``:g`` and ``repr`` that reads back as exactly ``value``."""
    short = format(float(value), "g")
    return short if float(short) == float(value) else repr(float(value))


def _default_board() -> str:
    from brevitas_apq.finn_bridge import DEFAULT_BOARD

    return DEFAULT_BOARD


def _check_settings(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    path = out / "settings.json"
    if path.is_file() and not overwrite:
        old = io.read_json(
            path, fix="delete it (the grid then takes this command's settings) or use another --out"
        )
        if old != settings:
            changed = sorted(k for k in settings if old.get(k) != settings[k])
            raise GridError(
                f"{out} holds a grid trained with other settings ({', '.join(changed)}); use "
                "the same options to continue it, or another --out"
            )
    io.write_json(path, settings)


def _check_finn(board: str | None) -> str:
    """The board of ``--finn`` (default Pynq-Z1) by its canonical name; GridError before any
    training if finn-plus is missing or the board is unknown."""
    import importlib.util

    if importlib.util.find_spec("finn") is None:
        raise GridError(
            "--finn needs finn-plus, which is not installed (scripts/setup-env.sh installs it); "
            "drop --finn or install it"
        )
    from finn_flow.boards import resolve_target
    from finn_flow.errors import FinnFlowError

    try:
        return resolve_target(board or _default_board()).name
    except FinnFlowError as err:
        raise GridError(f"--board: {err}") from None


def _finn_summaries(
    results: pd.DataFrame, board: str, log: Callable[[str], None]
) -> dict[str, dict]:
    """FINN estimates (``FINN_COLUMNS``) of every QAT run of ``results`` for ``board``.

    Each is cached in ``RUN/finn_summary.<board>.json`` with what it depends on (the board, the
    build settings and a SHA-256 of ``model.pt``); a cache made for another board, other
    settings or another model is rebuilt, never reused.
    """
    from brevitas_apq import finn_bridge
    from brevitas_apq.rundir import MODEL_FILE, fingerprint

    summaries = {}
    for run in results.loc[results.config != "float", "run_dir"]:
        run = Path(run)
        key = {"board": board, "windows": 0, "model_sha256": fingerprint(run / MODEL_FILE)}
        cache = run / f"finn_summary.{re.sub(r'[^A-Za-z0-9_.-]', '_', board)}.json"
        try:
            cached = io.read_json(cache) if cache.is_file() else None
        except APQError:  # a damaged cache is rebuilt
            cached = None
        if isinstance(cached, dict) and cached.get("key") == key:
            summary = cached["summary"]
        else:
            log(f"FINN estimate of {run} for {board} ...")
            summary = finn_bridge.build_run(run, board=board, out=run / "finn", windows=0)
            io.write_json(cache, {"key": key, "summary": summary})
        summaries[str(run)] = {
            k: summary[k] for k in FINN_COLUMNS if isinstance(summary.get(k), int | float)
        }
    return summaries


def reproduce(
    out: str | Path,
    *,
    bits: Sequence[str] = BIT_PRESETS,
    schemes: Sequence[str] = GRID_SCHEMES,
    seeds: int | Iterable[int] = 3,
    thresholds: Sequence[float] = (),
    threshold: float = DEFAULT_THRESHOLD,
    rules: Sequence[str] = (DEFAULT_DECISION_RULE,),
    train: TrainConfig | None = None,
    data: DataSpec | None = None,
    model_options: dict[str, Any] | None = None,
    jobs: int = 1,
    finn: bool = False,
    finn_board: str | None = None,
    overwrite_settings: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> GridResult:
    """Run (or continue) the grid in ``out`` and write its tables and plots (module docstring).

    ``seeds`` is a count (seeds 0..n-1) or explicit seeds; ``train.seed`` is ignored.
    ``rules`` are the APQ decision rules every APQ configuration is trained with (one run
    directory each; ``hysteresis`` with its default band and momentum).
    ``train`` defaults to ``TrainConfig()`` and ``data`` to the embedded Beijing data.
    """
    start = time.perf_counter()
    out = Path(out)
    train = train or TrainConfig()
    data = data or DataSpec()
    bits = parse_list(list(bits), BIT_PRESETS, "bit preset")
    schemes = parse_list(list(schemes), SCHEME_PRESETS, "scheme preset")
    thresholds = parse_thresholds(list(thresholds))
    (threshold,) = parse_thresholds([threshold])
    rules = parse_list(list(rules), DECISION_RULES, "decision rule")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list or any(not isinstance(s, int) or s < 0 for s in seed_list):
        raise GridError(f"seeds={seeds!r} is invalid; allowed: a count >= 1 or integers >= 0")
    if not isinstance(jobs, int) or jobs < 1:
        raise GridError(f"jobs={jobs!r} is invalid; allowed: an integer >= 1")
    if rules != (DEFAULT_DECISION_RULE,) and not any(s in APQ_SCHEMES for s in schemes):
        raise GridError(
            f"--decision-rules applies to the APQ schemes ({', '.join(APQ_SCHEMES)}), "
            "but --schemes selects none of them"
        )
    if thresholds and not any(s in APQ_SCHEMES for s in schemes):
        raise GridError(
            f"--thresholds sweeps the APQ schemes ({', '.join(APQ_SCHEMES)}), "
            "but --schemes selects none of them"
        )
    try:
        BitPlan.from_presets(bits[0], schemes[0], threshold)
    except PlanError as err:
        raise GridError(str(err)) from None
    if finn:
        finn_board = _check_finn(finn_board)
    elif finn_board is not None:
        raise GridError(f"a FINN board ({finn_board!r}) is used only with --finn: add --finn")
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    model_options = {
        k: v for k, v in (model_options or {}).items() if k not in defaults or defaults[k] != v
    }
    train = dataclasses.replace(train, threads=1)
    settings = {
        "data": data.to_dict(),
        "model_options": model_options or {},
        "train": {k: v for k, v in dataclasses.asdict(train).items() if k != "seed"},
    }
    _check_settings(out, settings, overwrite_settings)
    io.remove_stale_temps(out)
    configs = configurations(bits, schemes, thresholds, threshold, rules)
    command = command_line(
        out,
        bits=bits,
        schemes=schemes,
        seeds=seed_list,
        thresholds=thresholds,
        threshold=threshold,
        train=train,
        data=data,
        rules=rules,
        model_options={**{k: defaults[k] for k in _MODEL_FLAGS}, **model_options},
        jobs=jobs,
        finn=finn,
        finn_board=finn_board,
    )

    tasks = []
    for seed in seed_list:
        seeded = dataclasses.replace(train, seed=seed)
        fdir = float_dir(out, seed)
        common = {
            "seed": seed,
            "data": data,
            "train": seeded,
            "model_options": model_options,
            "progress": progress,
        }
        tasks.append({"kind": "float", "dir": str(fdir), **common})
        for config in configs:
            tasks.append(
                {
                    "kind": "qat",
                    "dir": str(run_dir(out, config, seed)),
                    "config": config,
                    "float_dir": str(fdir),
                    "after": str(fdir),
                    **common,
                }
            )
    log(f"grid: {len(configs)} configurations x {len(seed_list)} seeds + float, jobs={jobs}")
    failed = _execute(tasks, jobs, log)

    results = collect(out, configs, seed_list)
    finn_summaries = None
    if finn and not results.empty:
        finn_summaries = _finn_summaries(results, finn_board, log)
        results = collect(out, configs, seed_list, finn_summaries)
    files = []
    main = [c.name for c in configs if not c.is_apq or c.threshold == threshold]
    main_results = results[results.config.isin(["float", *main])] if len(results) else results
    table = aggregate(main_results)
    sweep = threshold_table(results, thresholds) if thresholds and len(results) else pd.DataFrame()
    stab = stability(results) if len(results) else stability(pd.DataFrame(columns=["config"]))
    files.append(io.write_csv(out / "results.csv", results))
    files.append(io.write_csv(out / "stability.csv", stab))
    md = [
        "# apq reproduce: results",
        "",
        "Regenerate (finished runs are kept, unfinished ones resume):",
        "",
        "```",
        command,
        "```",
        "",
        f"Test RMSE in target units over {len(seed_list)} seed(s); 'vs float' is the mean "
        "relative RMSE change against the float model of the same seed; 'APQ → AQ' is how many "
        "APQ quantisers ended on the asymmetric scheme (mean over seeds); 'val RMSE' is on the "
        "validation split (what early stopping selects on); 'skill vs persistence' is "
        "1 - RMSE / persistence RMSE on the test split, and in how many seeds it is above 0.",
        "",
    ]
    if len(table):
        md.append(markdown_table(table, finn=bool(finn_summaries)))
        files.append(plot_bars(table, out / "rmse_bars.png"))
        files.append(plot_rmse_vs_zero_point_ops(table, out / "rmse_vs_zero_point_ops.png"))
    if len(sweep):
        files.append(io.write_csv(out / "thresholds.csv", sweep))
        files.append(plot_thresholds(sweep, out / "thresholds.png"))
        md += ["", "## APQ threshold sweep", "", markdown_table(sweep)]
    if len(table) and table["schemes"].isin(APQ_SCHEMES).any():
        md += [
            "",
            "## APQ decisions per configuration",
            "",
            "Flips: changes of an APQ quantiser's SQ/AQ decision over all QAT mini-batches. "
            "'exported = kept epoch's S': the share of APQ quantisers whose exported decision "
            "is the one their mean S over the kept (best validation) epoch gives, counting "
            f"those whose mean S is outside threshold ± {DEFAULT_DECISION_BAND:.0%}.",
            "",
            decision_table(table),
        ]
    if len(stab):
        top = stab.sort_values("flips_mean", ascending=False).head(10)
        md += [
            "",
            "## Stability of the APQ decisions (most flips first, see stability.csv)",
            "",
            "| configuration | quantiser | runs | flips (mean) | flips (max) | final AQ runs |",
            "|---|---|---|---|---|---|",
        ]
        md += [
            f"| {r.config} | {r.quantizer} | {r.runs} | {r.flips_mean:.1f} | {r.flips_max} | "
            f"{r.final_aq_runs} |"
            for r in top.itertuples()
        ]
        files.append(_plot_representative(results, threshold, out))
    if failed:
        md += ["", "## Failed runs", ""] + [f"- `{d}` (see its error.txt)" for d in failed]
    bad = results[results.degenerate == 1] if len(results) else results
    if len(bad):
        md += ["", "## Degenerate models (their RMSE is not that of a forecast)", ""]
        md += [f"- `{r.run_dir}`: {r.degenerate_reasons}" for r in bad.itertuples()]
        log(f"DEGENERATE: {len(bad)} run(s) have a degenerate model (see results.md):")
        for r in bad.itertuples():
            log(f"  {r.run_dir}: {r.degenerate_reasons}")
    files.append(io.write_text(out / "results.md", "\n".join(md) + "\n"))
    return GridResult(
        out=out,
        results=results,
        table=table,
        thresholds=sweep,
        stability=stab,
        failed=failed,
        seconds=time.perf_counter() - start,
        command=command,
        files=files,
    )


def _plot_representative(results: pd.DataFrame, threshold: float, out: Path) -> Path:
    """S over training of the first seed of mixed-4-8/sq-apq (or the first APQ run)."""
    from brevitas_apq import plots

    apq = results[results.schemes.isin(APQ_SCHEMES)]
    preferred = apq[(apq.config == Config("mixed-4-8", "sq-apq", threshold).name)]
    run = (preferred if len(preferred) else apq).iloc[0]
    sym = pd.read_csv(Path(run["run_dir"]) / "symmetry.csv")
    return plots.symmetry(sym, out / "symmetry_representative.png", run["threshold"])
