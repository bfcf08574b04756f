"""The paper's experiment grid (``apq reproduce``): float baseline, bit x scheme presets, seeds.

For every seed the float model is trained once (``runs/float/seed<N>``) and every QAT
configuration of that seed starts from it (``train_run(..., float_init=...)``). Each
configuration is its own run directory ``runs/<bits>_<schemes>[_t<threshold>]/seed<N>``:
finished runs (``metrics.json`` present) are never redone and half-finished ones resume from
their checkpoint, so an interrupted ``apq reproduce`` continues where it stopped. Runs of
``jobs > 1`` go to spawned worker processes with one torch thread each.

Outputs in the grid directory (all written atomically):

    settings.json        the training/data settings (a grid refuses to continue with others)
    results.csv          one row per run (float baselines and QAT configurations)
    results.md           the table aggregated over seeds, with the command that regenerates it
    rmse_bars.png        RMSE per configuration, mean and std over seeds
    rmse_vs_zero_point_ops.png   RMSE against zero-point operations, one point per configuration
    thresholds.csv/.png  the APQ threshold sweep (``thresholds=...``)
    stability.csv        per APQ quantiser: how often its SQ/AQ decision flipped in training
    symmetry_representative.png  S over training of one representative APQ run
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brevitas_apq import io
from brevitas_apq.plans import BIT_PRESETS, SCHEME_PRESETS, BitPlan, PlanError
from brevitas_apq.training import CHECKPOINT, DataSpec, TrainConfig

# The paper's order of the scheme presets.
GRID_SCHEMES = ("all-aq", "all-sq", "sq-aq", "sq-apq", "all-apq")
APQ_SCHEMES = ("sq-apq", "all-apq")
DEFAULT_THRESHOLD = 0.1
QUICK = {"seeds": 1, "float_epochs": 20, "qat_epochs": 3, "max_batches": 200}
FINN_COLUMNS = ("LUT", "BRAM_18K", "DSP", "estimated_throughput_fps")


class GridError(ValueError):
    """A grid option or grid directory that cannot be used as given."""


@dataclass(frozen=True)
class Config:
    """One QAT configuration of the grid: bit preset, scheme preset and APQ threshold."""

    bits: str
    schemes: str
    threshold: float = DEFAULT_THRESHOLD

    @property
    def is_apq(self) -> bool:
        return "apq" in self.schemes

    @property
    def name(self) -> str:
        base = f"{self.bits}/{self.schemes}"
        return f"{base} t={self.threshold:g}" if self.is_apq else base

    @property
    def dirname(self) -> str:
        base = f"{self.bits}_{self.schemes}"
        return f"{base}_t{self.threshold:g}" if self.is_apq else base

    def plan(self) -> BitPlan:
        return BitPlan.from_presets(self.bits, self.schemes, self.threshold)


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
    bits: Sequence[str], schemes: Sequence[str], thresholds: Sequence[float], threshold: float
) -> list[Config]:
    """The main grid (APQ at ``threshold``) followed by the threshold sweep of the APQ schemes."""
    grid = [Config(b, s, threshold) for b in bits for s in schemes]
    for t in thresholds:
        for b in bits:
            for s in schemes:
                if s in APQ_SCHEMES:
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
        return {"metrics": json.loads(metrics_path.read_text()), "skipped": True, "seconds": 0.0}
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
    """Run ``tasks`` (a QAT task waits for its seed's float task); return {dir: error}."""
    done: set[str] = set()
    failed: dict[str, str] = {}
    total = len(tasks)
    counter = [0]

    def report(task: dict[str, Any], result: dict[str, Any] | None, error: str | None) -> None:
        counter[0] += 1
        label = "float" if task["kind"] == "float" else task["config"].name
        head = f"[{counter[0]}/{total}] {label} seed {task['seed']}"
        if error is not None:
            log(f"{head}: FAILED ({error.strip().splitlines()[-1]})")
        elif result["skipped"]:
            log(f"{head}: done before, kept")
        else:
            m = result["metrics"]
            rmse = m["float_rmse"] if task["kind"] == "float" else m["rmse"]
            log(f"{head}: test RMSE {rmse:.3f} ({result['seconds']:.0f} s)")

    def ready(task: dict[str, Any]) -> bool:
        return task.get("after") is None or task["after"] in done

    def blocked(task: dict[str, Any]) -> bool:
        return task.get("after") is not None and task["after"] in failed

    def record_failure(task: dict[str, Any], error: str) -> None:
        failed[task["dir"]] = error
        io.write_text(Path(task["dir"]) / "error.txt", error)

    pending = list(tasks)
    if jobs <= 1:
        for task in pending:
            if blocked(task):
                failed[task["dir"]] = f"its float model failed: {task['after']}"
                report(task, None, failed[task["dir"]])
                continue
            try:
                result = _run_task(task)
            except Exception:
                record_failure(task, traceback.format_exc())
                report(task, None, failed[task["dir"]])
                continue
            done.add(task["dir"])
            report(task, result, None)
        return failed

    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        running: dict[Any, dict[str, Any]] = {}
        while pending or running:
            for task in [t for t in pending if blocked(t)]:
                pending.remove(task)
                failed[task["dir"]] = f"its float model failed: {task['after']}"
                report(task, None, failed[task["dir"]])
            for task in [t for t in pending if ready(t)]:
                pending.remove(task)
                running[pool.submit(_run_task, task)] = task
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                task = running.pop(future)
                try:
                    result = future.result()
                except Exception as err:
                    tb = "".join(traceback.format_exception(err))
                    record_failure(task, tb)
                    report(task, None, tb)
                    continue
                done.add(task["dir"])
                report(task, result, None)
    return failed


# --- results ------------------------------------------------------------------------------------


def _adaptive_quantizers(run: Path) -> list[str]:
    path = run / "symmetry.csv"
    if not path.is_file() or path.stat().st_size == 0:
        return []
    frame = pd.read_csv(path, usecols=["quantizer"])
    return list(dict.fromkeys(frame.quantizer))


def _zero_point_ops(metrics: dict[str, Any]) -> float:
    value = metrics.get("zero_point_ops")
    return float(value) if value is not None else float("nan")


def _row(config: Config | None, seed: int, run: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    if config is None:  # float baseline
        return {
            "config": "float",
            "bits": "float",
            "schemes": "",
            "threshold": float("nan"),
            "seed": seed,
            "rmse": metrics["float_rmse"],
            "mae": metrics.get("float_mae", float("nan")),
            "float_rmse": metrics["float_rmse"],
            "rmse_vs_float": 0.0,
            "model_size_bits": metrics["float_model_size_bits"],
            "int_ops": float("nan"),
            "zero_point_ops": 0.0,
            "n_quantizers": 0,
            "n_aq": 0,
            "n_apq": 0,
            "n_apq_aq": 0,
            "epochs_run": metrics.get("float_epochs_run", metrics.get("epochs_run")),
            "train_seconds": metrics.get("train_seconds"),
            "run_dir": str(run),
        }
    schemes = metrics.get("schemes", {})
    adaptive = _adaptive_quantizers(run)
    return {
        "config": config.name,
        "bits": config.bits,
        "schemes": config.schemes,
        "threshold": config.threshold if config.is_apq else float("nan"),
        "seed": seed,
        "rmse": metrics["rmse"],
        "mae": metrics.get("mae", float("nan")),
        "float_rmse": metrics["float_rmse"],
        "rmse_vs_float": metrics["rmse"] / metrics["float_rmse"] - 1.0,
        "model_size_bits": metrics["model_size_bits"],
        "int_ops": float(metrics["int_ops"]) if "int_ops" in metrics else float("nan"),
        "zero_point_ops": _zero_point_ops(metrics),
        "n_quantizers": len(schemes),
        "n_aq": sum(v == "AQ" for v in schemes.values()),
        "n_apq": len(adaptive),
        "n_apq_aq": sum(schemes.get(q) == "AQ" for q in adaptive),
        "epochs_run": metrics.get("qat_epochs_run", metrics.get("epochs_run")),
        "train_seconds": metrics.get("train_seconds"),
        "run_dir": str(run),
    }


def collect(
    out: Path, configs: Sequence[Config], seeds: Sequence[int], finn: dict[str, dict] | None = None
) -> pd.DataFrame:
    """One row per finished run of the grid (float baselines first)."""
    rows = []
    for seed in seeds:
        path = float_dir(out, seed) / "metrics.json"
        if path.is_file():
            rows.append(_row(None, seed, path.parent, json.loads(path.read_text())))
    for config in configs:
        for seed in seeds:
            run = run_dir(out, config, seed)
            path = run / "metrics.json"
            if path.is_file():
                row = _row(config, seed, run, json.loads(path.read_text()))
                for key, value in ((finn or {}).get(str(run)) or {}).items():
                    row[f"finn_{key}"] = value
                rows.append(row)
    return pd.DataFrame(rows)


def aggregate(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per configuration, in grid order."""
    if results.empty:
        return pd.DataFrame()
    keys = ["config", "bits", "schemes", "threshold"]
    frame = results.copy()
    frame["threshold"] = frame["threshold"].fillna(-1.0)  # groupby drops NaN keys
    numeric = [
        c
        for c in frame.columns
        if c not in (*keys, "seed", "run_dir") and pd.api.types.is_numeric_dtype(frame[c])
    ]
    grouped = frame.groupby(keys, sort=False)
    agg = grouped[numeric].mean()
    agg["rmse_std"] = grouped["rmse"].std(ddof=1) if len(frame) else np.nan
    agg["rmse_vs_float_std"] = grouped["rmse_vs_float"].std(ddof=1)
    agg["seeds"] = grouped["seed"].nunique()
    agg = agg.reset_index()
    agg["threshold"] = agg["threshold"].where(agg["threshold"] >= 0)
    agg = agg.rename(columns={"rmse": "rmse_mean", "rmse_vs_float": "rmse_vs_float_mean"})
    return agg


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def markdown_table(agg: pd.DataFrame, finn: bool = False) -> str:
    header = [
        "configuration",
        "seeds",
        "RMSE (mean ± std)",
        "vs float",
        "model size (bits)",
        "zero-point ops",
        "APQ → AQ",
        "AQ quantisers",
    ]
    finn_cols = [c for c in agg.columns if c.startswith("finn_")] if finn else []
    header += [c.removeprefix("finn_") for c in finn_cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in agg.iterrows():
        std = "" if pd.isna(r.get("rmse_std")) else f" ± {r['rmse_std']:.3f}"
        apq = f"{r['n_apq_aq']:.1f} of {r['n_apq']:.0f}" if r["n_apq"] else "–"
        aq = f"{r['n_aq']:.1f} of {r['n_quantizers']:.0f}" if r["n_quantizers"] else "–"
        cells = [
            str(r["config"]),
            str(int(r["seeds"])),
            f"{r['rmse_mean']:.3f}{std}",
            f"{100 * r['rmse_vs_float_mean']:+.2f} %",
            f"{r['model_size_bits']:,.0f}",
            _fmt(r["zero_point_ops"], ",.0f"),
            apq,
            aq,
        ]
        cells += [_fmt(r[c], ",.1f") for c in finn_cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stability(results: pd.DataFrame) -> pd.DataFrame:
    """Per configuration and APQ quantiser: decision flips during training, over seeds."""
    rows = []
    for _, run in results[results.config != "float"].iterrows():
        path = Path(run["run_dir"]) / "symmetry.csv"
        if not path.is_file() or path.stat().st_size == 0:
            continue
        sym = pd.read_csv(path)
        for quantizer, q in sym.groupby("quantizer", sort=False):
            q = q.sort_values("step")
            schemes = q["scheme"].to_numpy()
            rows.append(
                {
                    "config": run["config"],
                    "threshold": run["threshold"],
                    "seed": run["seed"],
                    "quantizer": quantizer,
                    "steps": len(q),
                    "flips": int((schemes[1:] != schemes[:-1]).sum()),
                    "aq_step_fraction": float((schemes == "AQ").mean()) if len(q) else np.nan,
                    "final_scheme": schemes[-1] if len(q) else "",
                    "final_symmetry": float(q["symmetry"].iloc[-1]) if len(q) else np.nan,
                }
            )
    per_run = pd.DataFrame(rows)
    if per_run.empty:
        return pd.DataFrame(
            columns=[
                "config",
                "threshold",
                "quantizer",
                "runs",
                "steps_mean",
                "flips_mean",
                "flips_max",
                "runs_with_flips",
                "final_aq_runs",
                "aq_step_fraction",
                "final_symmetry_mean",
                "final_symmetry_std",
            ]
        )
    grouped = per_run.groupby(["config", "threshold", "quantizer"], sort=False)
    out = grouped.agg(
        runs=("seed", "nunique"),
        steps_mean=("steps", "mean"),
        flips_mean=("flips", "mean"),
        flips_max=("flips", "max"),
        runs_with_flips=("flips", lambda f: int((f > 0).sum())),
        final_aq_runs=("final_scheme", lambda s: int((s == "AQ").sum())),
        aq_step_fraction=("aq_step_fraction", "mean"),
        final_symmetry_mean=("final_symmetry", "mean"),
        final_symmetry_std=("final_symmetry", "std"),
    )
    return out.reset_index()


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


def command_line(
    out: Path,
    *,
    bits: Sequence[str],
    schemes: Sequence[str],
    seeds: int,
    thresholds: Sequence[float],
    threshold: float,
    train: TrainConfig,
    data: DataSpec,
    jobs: int,
    finn: bool,
) -> str:
    """The ``apq reproduce`` command that regenerates this grid."""
    parts = ["apq reproduce", f"--out {out}", f"--seeds {seeds}"]
    parts += [f"--epochs {train.float_epochs}", f"--qat-epochs {train.qat_epochs}"]
    if train.max_batches:
        parts.append(f"--max-batches {train.max_batches}")
    if tuple(bits) != BIT_PRESETS:
        parts.append(f"--bits {','.join(bits)}")
    if tuple(schemes) != GRID_SCHEMES:
        parts.append(f"--schemes {','.join(schemes)}")
    if threshold != DEFAULT_THRESHOLD:
        parts.append(f"--threshold {threshold:g}")
    if thresholds:
        parts.append(f"--thresholds {','.join(f'{t:g}' for t in thresholds)}")
    if data.dataset != "beijing":
        parts.append(f"--data {data.dataset}")
        for key, value in data.options:
            parts.append(f"--{key.replace('_', '-')} {value}")
    if jobs > 1:
        parts.append(f"--jobs {jobs}")
    if finn:
        parts.append("--finn")
    return " ".join(parts)


def _check_settings(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    path = out / "settings.json"
    if path.is_file() and not overwrite:
        old = json.loads(path.read_text())
        if old != settings:
            changed = sorted(k for k in settings if old.get(k) != settings[k])
            raise GridError(
                f"{out} holds a grid trained with other settings ({', '.join(changed)}); use "
                "the same options to continue it, or another --out"
            )
    io.write_json(path, settings)


def _finn_summaries(
    results: pd.DataFrame, board: str | None, log: Callable[[str], None]
) -> dict[str, dict]:
    try:
        from brevitas_apq import finn_bridge
    except ImportError as err:
        raise GridError(
            f"--finn needs brevitas_apq.finn_bridge, which is not available: {err}"
        ) from None
    build = getattr(finn_bridge, "build_run", None)
    if build is None:
        raise GridError("--finn: brevitas_apq.finn_bridge has no build_run function")
    params = inspect.signature(build).parameters
    summaries = {}
    for run in results.loc[results.config != "float", "run_dir"]:
        run = Path(run)
        cache = run / "finn_summary.json"
        if cache.is_file():
            summary = json.loads(cache.read_text())
        else:
            kwargs: dict[str, Any] = {}
            if "out" in params:
                kwargs["out"] = run / "finn"
            if "windows" in params:
                kwargs["windows"] = 0
            if board and "board" in params:
                kwargs["board"] = board
            log(f"FINN estimate of {run} ...")
            summary = build(run, **kwargs)
            io.write_json(cache, summary)
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
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list or any(not isinstance(s, int) or s < 0 for s in seed_list):
        raise GridError(f"seeds={seeds!r} is invalid; allowed: a count >= 1 or integers >= 0")
    if not isinstance(jobs, int) or jobs < 1:
        raise GridError(f"jobs={jobs!r} is invalid; allowed: an integer >= 1")
    if thresholds and not any(s in APQ_SCHEMES for s in schemes):
        raise GridError(
            f"--thresholds sweeps the APQ schemes ({', '.join(APQ_SCHEMES)}), "
            "but --schemes selects none of them"
        )
    try:
        BitPlan.from_presets(bits[0], schemes[0], threshold)
    except PlanError as err:
        raise GridError(str(err)) from None
    train = dataclasses.replace(train, threads=1)
    settings = {
        "data": data.to_dict(),
        "model_options": model_options or {},
        "train": {k: v for k, v in dataclasses.asdict(train).items() if k != "seed"},
    }
    _check_settings(out, settings, overwrite_settings)
    configs = configurations(bits, schemes, thresholds, threshold)
    command = command_line(
        out,
        bits=bits,
        schemes=schemes,
        seeds=len(seed_list) if seed_list == list(range(len(seed_list))) else seed_list,
        thresholds=thresholds,
        threshold=threshold,
        train=train,
        data=data,
        jobs=jobs,
        finn=finn,
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
        "APQ quantisers ended on the asymmetric scheme (mean over seeds).",
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
