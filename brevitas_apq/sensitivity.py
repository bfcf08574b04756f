"""Per-layer bit-width sensitivity of a trained run (``apq sensitivity RUN_DIR``).

For each linear layer ``L1``-``L8`` two short QAT runs start from the run's trained *float*
weights:

* ``Lk-low``: ``Lk`` (its weights, bias and output) at ``low`` bits, everything else at ``high``;
  compared with the all-``high`` baseline (``base-high``): how much does lowering this layer
  alone hurt?
* ``Lk-high``: ``Lk`` at ``high`` bits, everything else at ``low``; compared with the all-``low``
  baseline (``base-low``): how much does raising this layer alone help?

"Everything else" is the seven other layers. The extra activation quantisers that make the
model integer-deployable (model input, positional-encoding add, attention scores, softmax,
context, residuals, norms, ReLU, pooling) keep the run plan's widths in every configuration
(the presets keep them at 8 bits, see ``brevitas_apq.plans``: several of them alone at 4 bits
are worse than persistence), so the study measures the paper's layers only. Every quantiser
keeps the run plan's scheme (SQ / AQ / APQ and threshold). The sensitivity score of a layer is
``delta_low + delta_high`` (test RMSE, target units): the damage of lowering it plus the gain of
raising it. The ``keep`` most sensitive layers at ``high`` bits on a ``low`` background is the
proposed mixed plan, written as ``sensitivity/plan.yaml`` (with ``keep=1`` it is exactly the
measured ``Lk-high`` configuration).

Each configuration is a short QAT run of ``apq train`` itself (``training.train_run`` from the
run's float weights: same optimizer, cosine schedule, early stopping and best-epoch weights),
``SensitivitySettings.epochs`` epochs long, run through the one parallel runner
(``brevitas_apq.runner``) with ``jobs`` workers.

Output in ``RUN_DIR/sensitivity/``: ``configs/NAME.json`` (one per configuration, written
atomically as it finishes and skipped on a rerun with the same settings), ``runs/NAME/`` (its
QAT run directory: an interrupted configuration resumes from its last finished epoch),
``sensitivity.csv``, ``sensitivity.png``, ``plan.yaml`` and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from brevitas_apq import io
from brevitas_apq.errors import ConfigError, RunError
from brevitas_apq.models import TimeSeriesTransformer
from brevitas_apq.plans import LAYERS, BitPlan, LayerSpec
from brevitas_apq.quant.validation import check_bit_width
from brevitas_apq.rundir import CHECKPOINT, MODEL_FILE, fingerprint, load_run
from brevitas_apq.runner import Task, run_tasks
from brevitas_apq.training import TrainConfig, train_run

OUT_DIR = "sensitivity"
RUNS_DIR = "runs"  # the configurations' QAT run directories, beside configs/
BASE_HIGH = "base-high"
BASE_LOW = "base-low"


@dataclass(frozen=True)
class SensitivitySettings:
    """Bit widths and the short QAT of every configuration."""

    low: int = 4
    high: int = 8
    epochs: int = 3
    max_batches: int | None = None  # cap on training batches per epoch
    batch_size: int = TrainConfig.batch_size
    lr: float = TrainConfig.qat_lr
    seed: int = TrainConfig.seed

    def __post_init__(self) -> None:
        object.__setattr__(self, "low", check_bit_width(self.low, "low"))
        object.__setattr__(self, "high", check_bit_width(self.high, "high"))
        if self.low >= self.high:
            raise ConfigError(f"low={self.low} must be below high={self.high}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"epochs={self.epochs!r} is invalid; allowed: an integer >= 1")
        if self.max_batches is not None and (
            not isinstance(self.max_batches, int) or self.max_batches < 1
        ):
            raise ConfigError(f"max_batches={self.max_batches!r} is invalid; allowed: >= 1")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size!r} is invalid; allowed: >= 1")
        if not isinstance(self.lr, int | float) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ConfigError(f"lr={self.lr!r} is invalid; allowed: a number > 0")

    def train_config(self) -> TrainConfig:
        """The QAT of one configuration: ``apq train``'s, for ``epochs`` epochs (its patience
        and schedule), one torch thread."""
        return TrainConfig(
            qat_epochs=self.epochs,
            max_batches=self.max_batches,
            batch_size=self.batch_size,
            qat_lr=self.lr,
            seed=self.seed,
            threads=1,
        )


# --- plans ----------------------------------------------------------------------------------


def background_plan(plan: BitPlan, bits: int, name: str | None = None) -> BitPlan:
    """``plan`` with the weights, biases and outputs of every layer ``L1``-``L8`` at ``bits``
    (schemes and the extra activation quantisers kept)."""
    layers = {
        k: LayerSpec(
            *(getattr(s, role).replace(bits=bits) for role in ("weight", "bias", "output"))
        )
        for k, s in plan.layers.items()
    }
    return dataclasses.replace(plan, layers=layers, name=name or f"all-{bits}:{plan.name}")


def mixed_plan(plan: BitPlan, low: int, high: int, keep: list[str] | tuple[str, ...]) -> BitPlan:
    """``keep`` layers at ``high`` bits, the rest of ``plan`` at ``low`` (schemes kept)."""
    out = background_plan(plan, low)
    for layer in keep:
        out = out.with_layer_bits(layer, high)
    kept = "+".join(keep) if keep else "none"
    return dataclasses.replace(out, name=f"sensitivity-{low}-{high}:{kept}@{high}")


def check_layers(layers: Any) -> tuple[str, ...]:
    """The layers of a study (module names of the Transformer's ``L1``..``L8``), checked."""
    names = tuple(dict.fromkeys(layers)) if not isinstance(layers, str) else (layers,)
    unknown = [layer for layer in names if layer not in LAYERS]
    if not names or unknown:
        problem = f"unknown {', '.join(map(str, unknown))}" if unknown else "no layer"
        raise ConfigError(
            f"layers={list(names)!r}: {problem}; allowed: a non-empty list of {', '.join(LAYERS)}"
        )
    return names


def configurations(
    plan: BitPlan, low: int, high: int, layers: tuple[str, ...] = LAYERS
) -> dict[str, BitPlan]:
    """The 2 + 2 * len(layers) configurations of a sensitivity study, by name; ``layers`` (the
    search space, module names; default all eight) are the layers studied one at a time."""
    high_plan = background_plan(plan, high)
    low_plan = background_plan(plan, low)
    configs = {BASE_HIGH: high_plan, BASE_LOW: low_plan}
    for layer in check_layers(layers):
        configs[f"{layer}-low"] = dataclasses.replace(
            high_plan.with_layer_bits(layer, low), name=f"all-{high}:{layer}@{low}"
        )
        configs[f"{layer}-high"] = dataclasses.replace(
            low_plan.with_layer_bits(layer, high), name=f"all-{low}:{layer}@{high}"
        )
    return configs


# --- one configuration: a short QAT run (in this process or a runner worker) ---------------


def _model_options(model: TimeSeriesTransformer) -> dict[str, Any]:
    """The ``train_run`` model options that rebuild ``model`` (the data sets the rest)."""
    options = dataclasses.asdict(model.config)
    return {k: v for k, v in options.items() if k not in ("n_features", "window")}


def _run_config(
    run_dir: str,
    name: str,
    plan_dict: dict,
    settings: dict,
    path: str,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Train configuration ``name`` and write its result to ``path`` (``configs/NAME.json``).

    The training is ``apq train``'s QAT phase itself (``training.train_run`` with the run's
    float weights as ``float_init``: its optimizer, cosine schedule, early stopping on the
    validation split, best-epoch weights and checkpoints), in ``runs/NAME`` beside ``configs``,
    so an interrupted configuration resumes from its last epoch (``overwrite``: starts again).
    """
    start = time.perf_counter()
    float_model, _, data = load_run(run_dir)
    s = SensitivitySettings(**{k: v for k, v in settings.items() if k != "run"})
    work = Path(path).parent.parent / RUNS_DIR / name
    resume = (work / CHECKPOINT).is_file() and not overwrite
    metrics = train_run(
        work,
        data=data,
        plan=BitPlan.from_dict(plan_dict),
        train=s.train_config(),
        model_options=_model_options(float_model),
        float_init=run_dir,
        resume=resume,
        overwrite=not resume,
        progress=progress,
    )
    history = pd.read_csv(work / "history.csv")
    history = history[history.phase == "qat"][["epoch", "train_loss", "val_rmse"]]
    result = {
        "name": name,
        "plan": metrics["plan"],
        "plan_spec": plan_dict,
        "settings": settings,
        "val_rmse": metrics["val_rmse"],  # ranks and proposes
        "test_rmse": metrics["rmse"],  # reported only
        "test_mae": metrics["mae"],
        "best_val_rmse": float(history.val_rmse.min()),
        "int_ops": metrics["int_ops"],
        "zero_point_ops": metrics["zero_point_ops"],
        "model_size_bits": metrics["model_size_bits"],
        "history": history.to_dict("records"),
        "seconds": time.perf_counter() - start,
    }
    io.write_json(path, result)
    return result


# --- the study ------------------------------------------------------------------------------


def _run_defaults(run_dir: Path) -> dict[str, Any]:
    """batch size, QAT learning rate and seed of the run (from its checkpoint, if kept)."""
    ckpt = run_dir / CHECKPOINT
    if not ckpt.is_file():
        return {}
    state = io.torch_load(ckpt, fix=f"delete it or train the run again ({run_dir})")
    train = state.get("run", {}).get("train", {}) if isinstance(state, dict) else {}
    defaults = TrainConfig()
    return {
        "batch_size": train.get("batch_size", defaults.batch_size),
        "lr": train.get("qat_lr", defaults.qat_lr),
        "seed": train.get("seed", defaults.seed),
    }


def default_settings(run_dir: str | Path, **overrides: Any) -> SensitivitySettings:
    """Settings with the run's own batch size, QAT learning rate and seed, then ``overrides``
    (``None`` values are ignored)."""
    values = _run_defaults(Path(run_dir))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return SensitivitySettings(**values)


def run_sensitivity(
    run_dir: str | Path,
    settings: SensitivitySettings | None = None,
    *,
    keep: int = 1,
    jobs: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    on_result: Any = None,
    layers: tuple[str, ...] = LAYERS,
) -> dict[str, Any]:
    """Run (or resume) the sensitivity study of a finished run; write and return the results.

    ``layers``: the layers studied (module names, a subset of ``L1``..``L8``; default all).

    Returns ``table`` (a DataFrame, one row per layer, ranked), ``baselines``, ``ranking``
    (most sensitive first), ``plan`` (the proposed :class:`BitPlan`), ``plan_path``,
    ``proposal`` (its measured result), ``computed`` and ``skipped`` (configuration names).
    ``on_result(name, result)`` is called after each configuration finishes (tests use it).
    """
    run_dir = Path(run_dir)
    _, quant_model, _ = load_run(run_dir)  # clear RunError for anything that is not a run
    settings = settings or default_settings(run_dir)
    layers = check_layers(layers)
    if not isinstance(keep, int) or not 1 <= keep <= len(layers):
        raise ConfigError(f"keep={keep!r} is invalid; allowed: 1 to {len(layers)}")
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs={jobs!r} is invalid; allowed: an integer >= 1")
    plan = quant_model.plan
    out = run_dir / OUT_DIR
    config_dir = out / "configs"
    # the run's model file: results of another run (or a retrained one) never mix
    stamp = {**dataclasses.asdict(settings), "run": fingerprint(run_dir / MODEL_FILE, 16)}
    configs = configurations(plan, settings.low, settings.high, layers)

    results: dict[str, dict] = {}
    todo = []
    for name, config_plan in configs.items():
        path = config_dir / f"{name}.json"
        if path.is_file() and not overwrite:
            saved = io.read_json(path, fix="delete it (the configuration is then computed again)")
            same_plan = saved.get("plan_spec") == io.jsonable(config_plan.to_dict())
            if saved.get("settings") != stamp or not same_plan:
                old = saved.get("settings") or {}
                diff = {k: (old.get(k), v) for k, v in stamp.items() if old.get(k) != v}
                if not same_plan:
                    diff["plan"] = (saved.get("plan"), config_plan.name)
                changes = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in diff.items())
                raise RunError(
                    f"{path} was computed with other settings ({changes}); pass --overwrite to "
                    "recompute, or use the same options"
                )
            if "val_rmse" in saved:
                results[name] = saved
                continue
        # new, or computed by an apq that ranked on the test split (no val_rmse): (re)compute
        todo.append((name, config_plan, path))
    skipped = sorted(results)

    args = [(str(run_dir), n, p.to_dict(), stamp, str(path), overwrite) for n, p, path in todo]
    bar = tqdm(total=len(args), desc="sensitivity", disable=not progress)

    def done(task: Task, result: dict) -> None:
        results[task.key] = result
        bar.update()
        if on_result is not None:
            on_result(task.key, result)

    try:
        run_tasks([Task(a[1], _run_config, a) for a in args], jobs, on_done=done)
    finally:
        bar.close()

    table = sensitivity_table(results)
    ranking = list(table.layer)
    kept = ranking[:keep]
    proposed = mixed_plan(plan, settings.low, settings.high, kept)
    if keep == 1:
        proposal = results[f"{kept[0]}-high"]
    else:
        name = "keep-" + "+".join(kept)
        path = config_dir / f"{name}.json"
        fix = "delete it (the configuration is then computed again)"
        saved = io.read_json(path, fix=fix) if path.is_file() and not overwrite else {}
        if (
            saved.get("settings") == stamp
            and saved.get("plan_spec") == io.jsonable(proposed.to_dict())
            and "val_rmse" in saved
        ):
            proposal = saved
        else:
            proposal = _run_config(
                str(run_dir), name, proposed.to_dict(), stamp, str(path), overwrite
            )
    baselines = {k: results[k] for k in (BASE_HIGH, BASE_LOW)}
    io.write_csv(out / "sensitivity.csv", table)
    plot_sensitivity(table, baselines, settings, out / "sensitivity.png")
    plan_path = proposed.to_yaml(out / "plan.yaml")
    summary = {
        "run": str(run_dir),
        "settings": stamp,
        "run_plan": plan.name,
        "baselines": {k: _brief(v) for k, v in baselines.items()},
        "ranking": ranking,
        "kept_high": kept,
        "proposed_plan": proposed.name,
        "proposal": _brief(proposal),
    }
    io.write_json(out / "summary.json", summary)
    return {
        "table": table,
        "baselines": baselines,
        "ranking": ranking,
        "plan": proposed,
        "plan_path": plan_path,
        "proposal": proposal,
        "computed": [a[1] for a in args],
        "skipped": skipped,
        "out": out,
    }


def _brief(result: dict) -> dict:
    keys = (
        "plan",
        "val_rmse",
        "test_rmse",
        "test_mae",
        "int_ops",
        "zero_point_ops",
        "model_size_bits",
    )
    return {k: result[k] for k in keys}


def sensitivity_table(results: dict[str, dict]) -> pd.DataFrame:
    """One row per layer from the configuration results, most sensitive first.

    On the validation split (the ranking chooses the proposed plan, so it never looks at the
    test split): ``delta_low = rmse(Lk low, rest high) - rmse(all high)`` (damage of lowering
    the layer), ``delta_high = rmse(all low) - rmse(Lk high, rest low)`` (gain of raising it),
    ``score = delta_low + delta_high``; ``rank`` by score, ``rank_low`` / ``rank_high`` by each
    delta alone (1 = most sensitive). ``test_rmse_layer_low/high`` are reported alongside.
    """
    base_high = results[BASE_HIGH]["val_rmse"]
    base_low = results[BASE_LOW]["val_rmse"]
    rows = []
    for layer in (layer for layer in LAYERS if f"{layer}-low" in results):  # those studied
        low = results[f"{layer}-low"]
        high = results[f"{layer}-high"]
        rows.append(
            {
                "layer": layer,
                "rmse_layer_low": low["val_rmse"],
                "rmse_layer_high": high["val_rmse"],
                "base_high_rmse": base_high,
                "base_low_rmse": base_low,
                "delta_low": low["val_rmse"] - base_high,
                "delta_high": base_low - high["val_rmse"],
                "test_rmse_layer_low": low["test_rmse"],
                "test_rmse_layer_high": high["test_rmse"],
                "int_ops_layer_low": low["int_ops"],
                "size_bits_layer_low": low["model_size_bits"],
                "size_bits_layer_high": high["model_size_bits"],
            }
        )
    table = pd.DataFrame(rows)
    table["score"] = table.delta_low + table.delta_high
    table["rank_low"] = table.delta_low.rank(ascending=False, method="first").astype(int)
    table["rank_high"] = table.delta_high.rank(ascending=False, method="first").astype(int)
    table = table.sort_values(["score", "layer"], ascending=[False, True], kind="stable")
    table.insert(1, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True)


def plot_sensitivity(
    table: pd.DataFrame, baselines: dict, settings: SensitivitySettings, path: str | Path
) -> Path:
    """Grouped bars per layer: RMSE damage of lowering it, RMSE gain of raising it."""
    import matplotlib.pyplot as plt
    import numpy as np

    from brevitas_apq import plots  # noqa: F401  (selects the Agg backend)

    ordered = table.set_index("layer").loc[[x for x in LAYERS if x in set(table.layer)]]
    x = np.arange(len(ordered))
    fig, ax = plt.subplots(figsize=(8, 4))
    lo, hi = settings.low, settings.high
    ax.bar(x - 0.2, ordered.delta_low, 0.4, label=f"layer at {lo} b, rest {hi} b: RMSE increase")
    ax.bar(x + 0.2, ordered.delta_high, 0.4, label=f"layer at {hi} b, rest {lo} b: RMSE decrease")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, list(ordered.index))
    ax.set_ylabel("validation RMSE change (target units)")
    ax.set_title(
        f"Per-layer sensitivity (validation RMSE: all-{hi} {baselines[BASE_HIGH]['val_rmse']:.2f}"
        f", all-{lo} {baselines[BASE_LOW]['val_rmse']:.2f})"
    )
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return io.save_figure(fig, path)


__all__ = [
    "BASE_HIGH",
    "BASE_LOW",
    "SensitivitySettings",
    "background_plan",
    "check_layers",
    "configurations",
    "default_settings",
    "mixed_plan",
    "plot_sensitivity",
    "run_sensitivity",
    "sensitivity_table",
]
