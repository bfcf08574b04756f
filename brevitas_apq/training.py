"""Training runs: float pre-training, then quantisation-aware training, resumable and seeded.

``train_run`` is what ``apq train`` calls; it writes one run directory (its layout, the
finished-run check, loading and fingerprints: ``brevitas_apq.rundir``; the data settings:
``brevitas_apq.data.DataSpec``). Here: the epoch loop with early stopping and a cosine
learning-rate schedule, evaluation in target units, and the metrics and plots of a run.

Determinism: the model is initialised from ``seed`` and the batch order of every epoch is drawn
from a generator seeded with ``(seed, phase, epoch)``, so nothing random lives outside the
checkpoint and ``--resume`` continues an interrupted run to the same result as an uninterrupted
one. Checkpoints hold only tensors and plain Python values and load with
``torch.load(..., weights_only=True)``.

Sharing one float model among many QAT runs (``apq reproduce``, ``apq search``): the float phase
depends only on the data, the model options and ``TrainConfig`` (seed, float epochs, batch size,
learning rate, patience, batch cap), never on the plan. ``train_float`` runs that phase alone, and
``train_run(..., float_init=RUN_DIR)`` skips the float phase and starts QAT from those weights;
the result is identical to a run that trained its own float model with the same settings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from brevitas_apq import io, plots
from brevitas_apq.analysis import float_size_bits, model_size_bits, operation_counts
from brevitas_apq.data import DataSpec, WindowedDataset
from brevitas_apq.errors import ConfigError, FileError, RunError
from brevitas_apq.health import QuantizerWatch, output_problems
from brevitas_apq.models import ModelConfig, TimeSeriesTransformer
from brevitas_apq.plans import BitPlan
from brevitas_apq.quant import (
    decision_flips,
    iter_quantizers,
    scheme_decisions,
    symmetry_history,
)
from brevitas_apq.rundir import (
    CHECKPOINT,
    METRICS_FILE,
    MODEL_FILE,
    PHASES,
    fingerprint,
    load_checkpoint,
    load_float_state,
    phases_done,
    save_model,
    take_run_dir,
)

EVAL_BATCH = 2048


class DivergedError(RunError):
    """Training produced a non-finite loss or validation RMSE; the run stops there."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of a run: Adam with cosine learning-rate decay over each phase,
    MSE loss, early stopping on validation RMSE (the best epoch is kept)."""

    float_epochs: int = 30
    qat_epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    qat_lr: float = 1e-3
    # Epoch-to-epoch validation RMSE of one-hour forecasts is noisy: patience 5 stopped the float
    # model (predict="change", seed 0) at epoch 10 of 30 with test RMSE 18.36, against 17.97
    # after all 30 epochs of the cosine schedule.
    patience: int = 10
    seed: int = 0
    qat_from_scratch: bool = False
    max_batches: int | None = None  # cap on training batches per epoch (quick runs, tests)
    # One intra-op thread: this model is so small that thread synchronisation costs more than
    # it saves, and on a busy 2-core machine 2 threads were measured 40x slower than 1.
    # Parallelism comes from processes (``apq reproduce --jobs``).
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("float_epochs", "qat_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name}={value!r} is invalid; allowed: an integer >= 0")
        for name in ("batch_size", "patience", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} is invalid; allowed: an integer >= 1")
        for name in ("lr", "qat_lr"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name}={value!r} is invalid; allowed: a number > 0")
        if self.max_batches is not None and (
            not isinstance(self.max_batches, int) or self.max_batches < 1
        ):
            raise ConfigError(f"max_batches={self.max_batches!r} is invalid; allowed: >= 1")
        if self.float_epochs == 0 and not self.qat_from_scratch:
            raise ConfigError(
                "float_epochs=0 leaves no float weights to start QAT from; "
                "set float_epochs >= 1 or qat_from_scratch=True"
            )


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


@torch.no_grad()
def predict(model: nn.Module, X: np.ndarray) -> np.ndarray:
    """Forecasts (scaled units) of ``model`` in eval mode for windows ``X``."""
    was_training = model.training
    model.eval()
    out = [model(torch.from_numpy(X[i : i + EVAL_BATCH])) for i in range(0, len(X), EVAL_BATCH)]
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def evaluate(model: nn.Module, data: WindowedDataset, split: str) -> dict[str, Any]:
    """RMSE and MAE in target units and RMSE on the min-max scaled target, for ``split``, and
    ``degenerate``: why the model is degenerate on these windows (constant or non-finite
    output, a collapsed quantiser; ``brevitas_apq.health``), empty when it is not."""
    X, y, _ = data.arrays(split)
    with QuantizerWatch(model) as watch:
        output = predict(model, X)
    pred = data.forecast(output, X)
    truth, forecast = data.inverse_target(y), data.inverse_target(pred)
    return {
        "rmse": _rmse(forecast, truth),
        "mae": float(np.mean(np.abs(forecast - truth))),
        "rmse_normalised": _rmse(pred, y),
        "degenerate": output_problems(output, forecast) + watch.problems(),
    }


def _batch_order(seed: int, phase: str, epoch: int, n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(
        seed * 1_000_003 + PHASES.index(phase) * 10_007 + epoch
    )
    return torch.randperm(n, generator=generator)


def epoch_batches(train: TrainConfig, phase: str, epoch: int, n: int) -> tuple[torch.Tensor, ...]:
    """The mini-batches (index tensors) of one epoch: seeded order, capped by ``max_batches``."""
    batches = _batch_order(train.seed, phase, epoch, n).split(train.batch_size)
    return batches[: train.max_batches] if train.max_batches else batches


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    X: torch.Tensor,
    y: torch.Tensor,
    batches,
) -> float:
    """One epoch of MSE training over ``batches`` (index tensors, or a tqdm bar over them, whose
    postfix shows the running loss); returns the mean training loss."""
    model.train()
    total, count = 0.0, 0
    for number, idx in enumerate(batches, 1):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(X[idx]), y[idx])
        if not math.isfinite(loss.item()):
            raise DivergedError(
                f"training diverged: the loss is {loss.item()} at mini-batch {number}; lower "
                "the learning rate (--lr / --qat-lr) or check the data for extreme values"
            )
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
        count += len(idx)
        if isinstance(batches, tqdm):
            batches.set_postfix(loss=f"{total / count:.5f}", refresh=False)
    return total / max(count, 1)


def _fresh_phase() -> dict[str, Any]:
    return {"done": False, "epoch": 0, "model": None, "opt": None, "best": None, "best_val": None}


def _records(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: core.record.state() for name, core in iter_quantizers(model)}


def _restore_records(model: nn.Module, records: dict[str, torch.Tensor]) -> None:
    for name, core in iter_quantizers(model):
        if name in records:
            core.record.load_state(records[name])


@torch.no_grad()
def _calibrate(
    model: nn.Module, X_train: torch.Tensor, order: torch.Tensor, train: TrainConfig
) -> None:
    """Zero QAT epochs (``train_float``): one training-mode forward pass of the first mini-batch
    gives the activation quantisers their ranges (post-training calibration), so the quantised
    model can be evaluated."""
    model.train()
    model(X_train[order[: train.batch_size]])
    model.eval()  # commits the pending ranges


def build_models(
    model_config: ModelConfig, plan: BitPlan, seed: int
) -> tuple[TimeSeriesTransformer, TimeSeriesTransformer]:
    """The float and the quantised model, initialised from ``seed``."""
    torch.manual_seed(seed)
    float_model = TimeSeriesTransformer(model_config)
    torch.manual_seed(seed + 1)
    quant_model = TimeSeriesTransformer(model_config, plan)
    return float_model, quant_model


def train_run(
    out_dir: str | Path,
    *,
    data: DataSpec = DataSpec(),
    plan: BitPlan | None = None,
    train: TrainConfig = TrainConfig(),
    model_options: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    float_init: str | Path | Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train float, then QAT, in ``out_dir``; write all artefacts; return the metrics.

    ``on_epoch`` is called with each epoch's history row after its checkpoint is written (tests
    use it to interrupt a run).

    ``float_init`` skips the float phase: the float model takes these weights (a state dict, a
    finished run directory such as one of ``train_float``, or a ``.pt`` file; see
    ``brevitas_apq.rundir.load_float_state``) and QAT starts from them. ``train.float_epochs``
    is then unused. A fingerprint of the weights is part of the run's settings, so ``resume``
    refuses other ones.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(train.threads)
    try:
        return _train_run(
            Path(out_dir),
            data,
            plan or BitPlan.from_presets("mixed-4-8", "sq-apq"),
            train,
            model_options,
            resume,
            overwrite,
            progress,
            on_epoch,
            float_init,
        )
    finally:
        torch.set_num_threads(previous_threads)


def train_float(
    out_dir: str | Path,
    *,
    data: DataSpec = DataSpec(),
    train: TrainConfig = TrainConfig(),
    model_options: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run only the float phase in ``out_dir`` (a run with zero QAT epochs) and return its metrics.

    The float weights equal those a full ``train_run`` with the same ``data``, ``train`` and
    ``model_options`` trains; pass ``float_init=out_dir`` to ``train_run`` to start QAT runs
    from them. ``metrics["float_rmse"]`` is the float model's test RMSE (``rmse`` is the
    all-8/all-sq plan applied to the float weights without QAT).
    """
    return train_run(
        out_dir,
        data=data,
        plan=BitPlan.from_presets("all-8", "all-sq"),
        train=dataclasses.replace(train, qat_epochs=0),
        model_options=model_options,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
    )


def _train_run(
    out: Path,
    data: DataSpec,
    plan: BitPlan,
    train: TrainConfig,
    model_options: dict[str, Any] | None,
    resume: bool,
    overwrite: bool,
    progress: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    float_init: str | Path | Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    ckpt_path = out / CHECKPOINT
    if resume and overwrite:
        raise RunError("--resume and --overwrite exclude each other: give one of them")
    if ckpt_path.exists() and not (resume or overwrite):
        raise RunError(
            f"{out} already holds a run ({CHECKPOINT}); pass --resume to continue it or "
            "--overwrite to start again"
        )
    finished = [name for name in (METRICS_FILE, MODEL_FILE) if (out / name).exists()]
    if finished and not ckpt_path.exists() and not overwrite:
        raise RunError(
            f"{out} holds the results of a run ({', '.join(finished)}) but no {CHECKPOINT} to "
            "continue from; pass --overwrite to start again (they are removed first) or use "
            "another --out"
        )
    if out.exists() and not out.is_dir():
        raise FileError(f"--out {out} is a file, not a run directory; choose another --out")
    dataset = data.load()
    model_config = ModelConfig(
        n_features=dataset.n_features, window=data.window, **(model_options or {})
    )
    run = {
        "data": data.to_dict(),
        "model": model_config.to_dict(),
        "plan": plan.to_dict(),
        "train": dataclasses.asdict(train),
    }
    float_state = None if float_init is None else load_float_state(float_init, data)
    if float_state is not None:
        run["float_init"] = fingerprint(float_state)
    state: dict[str, Any] = {
        "format": 1,
        "run": run,
        "phases": {p: _fresh_phase() for p in PHASES},
        "history": [],
        "records": {},
        "train_seconds": 0.0,
    }
    if ckpt_path.exists() and resume:
        state = load_checkpoint(ckpt_path)
        if json.dumps(state["run"], sort_keys=True) != json.dumps(run, sort_keys=True):
            raise RunError(
                f"{out} holds a run with other settings; resume it with the same options, or "
                "use another --out (or --overwrite)"
            )
    take_run_dir(out, overwrite=overwrite, finished=phases_done(state))
    float_model, quant_model = build_models(model_config, plan, train.seed)
    if float_state is not None and not state["phases"]["float"]["done"]:
        try:
            float_model.load_state_dict(float_state)  # checks the shapes against this model
        except RuntimeError as err:
            raise RunError(
                f"float_init {float_init if isinstance(float_init, str | Path) else 'weights'} "
                f"do not fit this model ({str(err).splitlines()[0]}); train the float model "
                "with the same model options"
            ) from None
        state["phases"]["float"].update(done=True, best=float_state)
    X_train = torch.from_numpy(dataset.X_train)
    y_train = torch.from_numpy(dataset.model_target("train"))

    def save_checkpoint() -> None:
        io.torch_save(ckpt_path, state)

    for phase in PHASES:
        model = float_model if phase == "float" else quant_model
        ps = state["phases"][phase]
        max_epochs = train.float_epochs if phase == "float" else train.qat_epochs
        lr = train.lr if phase == "float" else train.qat_lr
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        # Cosine decay over the phase's epoch budget: QAT from float weights first has to undo
        # a large quantisation error (large steps help), then settle on the grid.
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(max_epochs, 1))
        if ps["model"] is not None:
            model.load_state_dict(ps["model"])
            optimizer.load_state_dict(ps["opt"])
            scheduler.load_state_dict(ps["sched"])
            if phase == "qat":
                _restore_records(model, state["records"])
        elif phase == "qat" and not train.qat_from_scratch:
            quant_model.load_float_weights(float_model)
        if ps["done"]:
            model.load_state_dict(ps["best"])
            if phase == "qat":
                _restore_records(model, state["records"])
            continue
        bad_epochs = ps.get("bad", 0)
        for epoch in range(ps["epoch"], max_epochs):
            start = time.perf_counter()
            model.train()
            bar = tqdm(
                epoch_batches(train, phase, epoch, len(X_train)),
                desc=f"{phase} epoch {epoch + 1}/{max_epochs}",
                disable=not progress,
                leave=True,
                dynamic_ncols=True,
            )
            try:
                train_loss = train_epoch(model, optimizer, X_train, y_train, bar)
            except DivergedError as err:
                raise DivergedError(f"{phase} epoch {epoch + 1}: {err}") from None
            scheduler.step()
            val = evaluate(model, dataset, "val")
            bar.set_postfix(loss=f"{train_loss:.5f}", val_rmse=f"{val['rmse']:.3f}")
            bar.close()
            if not math.isfinite(val["rmse"]):
                raise DivergedError(
                    f"training diverged: validation RMSE is {val['rmse']} after {phase} epoch "
                    f"{epoch + 1} ({'; '.join(val['degenerate'])}); lower the learning rate "
                    "(--lr / --qat-lr) or check the data"
                )
            seconds = time.perf_counter() - start
            state["train_seconds"] += seconds
            improved = ps["best_val"] is None or val["rmse"] < ps["best_val"]
            if improved:
                ps["best_val"] = val["rmse"]
                ps["best"] = {k: v.clone() for k, v in model.state_dict().items()}
                bad_epochs = 0
            else:
                bad_epochs += 1
            row = {
                "phase": phase,
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_rmse": val["rmse"],
                "val_rmse_normalised": val["rmse_normalised"],
                "best": improved,
                "seconds": seconds,
            }
            state["history"].append(row)
            ps.update(
                epoch=epoch + 1,
                model=model.state_dict(),
                opt=optimizer.state_dict(),
                sched=scheduler.state_dict(),
                bad=bad_epochs,
                done=bad_epochs >= train.patience or epoch + 1 == max_epochs,
            )
            if phase == "qat":
                state["records"] = _records(model)
                # over the whole of QAT (the kept best epoch's buffers stop at that epoch)
                state["decision_flips"] = decision_flips(model)
            save_checkpoint()
            if on_epoch is not None:
                on_epoch(row)
            if ps["done"]:
                break
        if ps["best"] is None:  # zero epochs in this phase
            if phase == "qat":
                _calibrate(model, X_train, _batch_order(train.seed, phase, 0, len(X_train)), train)
                state["records"] = _records(model)
                state["decision_flips"] = decision_flips(model)
            ps["best"] = {k: v.clone() for k, v in model.state_dict().items()}
        ps["done"] = True
        save_checkpoint()
        model.load_state_dict(ps["best"])
        if phase == "qat":
            # Brevitas rebuilds its quantiser cores when loading a state dict, which empties
            # the in-memory symmetry records: put them back.
            _restore_records(model, state["records"])

    return _finish(out, state, dataset, data, model_config, plan, train, float_model, quant_model)


def _finish(
    out: Path,
    state: dict[str, Any],
    dataset: WindowedDataset,
    data: DataSpec,
    model_config: ModelConfig,
    plan: BitPlan,
    train: TrainConfig,
    float_model: TimeSeriesTransformer,
    quant_model: TimeSeriesTransformer,
) -> dict[str, Any]:
    float_model.eval()
    quant_model.eval()
    quant = evaluate(quant_model, dataset, "test")
    flt = evaluate(float_model, dataset, "test")
    # validation figures: what anything that chooses (search, sensitivity) may look at
    quant_val = evaluate(quant_model, dataset, "val")
    flt_val = evaluate(float_model, dataset, "val")
    # Why a model is degenerate, per model and split; empty when both are sound.
    evaluations = {"qat/val": quant_val, "qat/test": quant, "float/val": flt_val}
    evaluations["float/test"] = flt
    degenerate = {k: e.pop("degenerate") for k, e in evaluations.items()}
    degenerate = {k: reasons for k, reasons in degenerate.items() if reasons}
    _, y_test, t_test = dataset.arrays("test")
    truth = dataset.inverse_target(y_test)
    persistence = _rmse(dataset.inverse_target(dataset.persistence("test")), truth)
    history = pd.DataFrame(state["history"])
    ops = operation_counts(quant_model)
    epochs_run = {p: int((history.phase == p).sum()) if len(history) else 0 for p in PHASES}
    metrics = {
        **quant,
        "val_rmse": quant_val["rmse"],
        "val_mae": quant_val["mae"],
        "float_val_rmse": flt_val["rmse"],
        "float_rmse": flt["rmse"],
        "float_mae": flt["mae"],
        "float_rmse_normalised": flt["rmse_normalised"],
        "persistence_rmse": persistence,
        "rmse_vs_float": quant["rmse"] / flt["rmse"] - 1.0,
        "model_size_bits": model_size_bits(quant_model),
        "float_model_size_bits": float_size_bits(float_model),
        # integer operations per inference under the final SQ / AQ decisions (analysis.py)
        "int_ops": ops["int_ops"],
        "zero_point_ops": ops["zero_point_ops"],
        "macs_by_bits": ops["macs_by_bits"],
        "layers": ops["per_layer"],
        "schemes": scheme_decisions(quant_model),
        # changes of SQ / AQ decision per quantiser over all QAT mini-batches
        "decision_flips": state.get("decision_flips") or decision_flips(quant_model),
        "decision_rule": plan.decision.to_dict(),
        "plan": plan.name,
        "dataset": data.dataset,
        "target": dataset.target,
        "predict": data.predict,
        "features": list(dataset.features),
        "n_train": dataset.n_train,
        "n_val": dataset.n_val,
        "n_test": dataset.n_test,
        "epochs_run": epochs_run["float"] + epochs_run["qat"],
        "float_epochs_run": epochs_run["float"],
        "qat_epochs_run": epochs_run["qat"],
        "train_seconds": state["train_seconds"],
        "seed": train.seed,
        "model": model_config.to_dict(),
        "degenerate": degenerate,
        "data_warnings": list(dataset.data_warnings),
    }
    save_model(out, model_config, plan, data, float_model, quant_model)
    plan.to_yaml(out / "plan.yaml")
    io.write_csv(out / "history.csv", history)
    sym = symmetry_history(quant_model, adaptive_only=True)
    io.write_csv(out / "symmetry.csv", sym)
    plots.learning_curves(history, out / "learning_curves.png")
    stretch = slice(0, min(24 * 14, len(truth)))  # two weeks of hourly test forecasts
    X_shown = dataset.X_test[stretch]
    plots.forecast(
        t_test[stretch],
        truth[stretch],
        {
            "float": dataset.inverse_target(
                dataset.forecast(predict(float_model, X_shown), X_shown)
            ),
            f"QAT {plan.name}": dataset.inverse_target(
                dataset.forecast(predict(quant_model, X_shown), X_shown)
            ),
        },
        out / "forecast.png",
        unit=dataset.target,
    )
    thresholds = {core.symmetry_threshold for _, core in iter_quantizers(quant_model)}
    plots.symmetry(sym, out / "symmetry.png", next(iter(thresholds)) if thresholds else None)
    io.write_json(out / METRICS_FILE, metrics)
    return metrics
