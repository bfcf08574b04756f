"""Tables and plots of an experiment grid (``apq reproduce``), from its run directories.

One row per run (:func:`run_row`, from its ``metrics.json``, ``symmetry.csv`` and
``history.csv``), aggregated over seeds (:func:`aggregate`); the APQ decisions of each run
(:func:`decision_records`: flips, the exported decision against the kept epoch's S) and per
quantiser (:func:`stability`); the Markdown tables and plots, and :func:`write_report`, which
writes them all. ``brevitas_apq.experiments`` runs the grid and calls this module.

Files written to the grid directory (atomically):

    results.csv          one row per run (float baselines and QAT configurations); ``degenerate``
                         (1 for a model with constant or non-finite output or a collapsed
                         quantiser, brevitas_apq.health) and ``degenerate_reasons``
    results.md           the table aggregated over seeds, with the command that regenerates it;
                         the APQ decisions per configuration; degenerate and failed runs listed
    rmse_bars.png        RMSE per configuration, mean and std over seeds
    rmse_vs_zero_point_ops.png   RMSE against zero-point operations, one point per configuration
    thresholds.csv/.png  the APQ threshold sweep
    stability.csv        per APQ quantiser: how often its SQ/AQ decision flipped in training
    symmetry_representative.png  S over training of one representative APQ run
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brevitas_apq import io
from brevitas_apq.health import degenerate_reasons
from brevitas_apq.plans import APQ_SCHEMES, BIT_PRESETS, SCHEME_PRESETS
from brevitas_apq.quant.core import DEFAULT_DECISION_BAND
from brevitas_apq.report import fmt

#: What to do with a run whose metrics cannot be read.
RETRAIN = "delete its run folder and run the same command again (the run is trained again)"


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


def run_row(config: Any, seed: int, run: Path, metrics: dict[str, Any]) -> dict[str, Any]:
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
        frozen = io.read_json(path, fix=RETRAIN).get("schemes", {}) if path.is_file() else {}
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


def write_report(
    out: Path,
    *,
    results: pd.DataFrame,
    table: pd.DataFrame,
    sweep: pd.DataFrame,
    stab: pd.DataFrame,
    command: str,
    seeds: int,
    failed: dict[str, str],
    finn: bool,
    representative: str,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Write the grid's files (module docstring) and return their paths: ``results.csv``,
    ``stability.csv``, ``results.md`` headed by ``command``, and the plots; degenerate runs
    are also logged. ``representative`` names the configuration whose first seed's S trace is
    plotted (the first APQ run where it has none)."""
    files = []
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
        f"Test RMSE in target units over {seeds} seed(s); 'vs float' is the mean "
        "relative RMSE change against the float model of the same seed; 'APQ → AQ' is how many "
        "APQ quantisers ended on the asymmetric scheme (mean over seeds); 'val RMSE' is on the "
        "validation split (what early stopping selects on); 'skill vs persistence' is "
        "1 - RMSE / persistence RMSE on the test split, and in how many seeds it is above 0.",
        "",
    ]
    if len(table):
        md.append(markdown_table(table, finn=finn))
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
        files.append(_plot_representative(results, representative, out))
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
    return files


def _plot_representative(results: pd.DataFrame, config: str, out: Path) -> Path:
    """S over training of the first seed of ``config`` (or of the first APQ run)."""
    from brevitas_apq import plots

    apq = results[results.schemes.isin(APQ_SCHEMES)]
    preferred = apq[apq.config == config]
    run = (preferred if len(preferred) else apq).iloc[0]
    sym = pd.read_csv(Path(run["run_dir"]) / "symmetry.csv")
    return plots.symmetry(sym, out / "symmetry_representative.png", run["threshold"])
