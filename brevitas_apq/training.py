"""Training runs: float pre-training, then quantisation-aware training, resumable and seeded.

``train_run`` is what ``apq train`` calls. One run directory holds everything::

    checkpoint.pt   resumable state, written atomically after every epoch
    model.pt        the final float and quantised weights with model config, plan and data spec
    metrics.json    test metrics in target units, sizes, decisions and decision flips, timings,
                    ``degenerate`` (brevitas_apq.health) and ``data_warnings``
    plan.yaml       the plan in explicit form
    history.csv     one row per epoch and phase
    symmetry.csv    S and the scheme per APQ quantiser and training step
    *.png           learning curves, forecast against truth, S over training

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
import gzip
import hashlib
import json
import lzma
import math
import shutil
import time
import zipfile
import zlib
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
from brevitas_apq.data import (
    PREDICT_MODES,
    DataError,
    WindowedDataset,
    load_dataset,
    prepare_dataset,
)
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

CHECKPOINT = "checkpoint.pt"
MODEL_FILE = "model.pt"
PHASES = ("float", "qat")
EVAL_BATCH = 2048
METRICS_FILE = "metrics.json"
#: What a run directory holds besides its checkpoint: the results of ``_finish`` (metrics.json,
#: the finished marker, is written last and removed first) and what ``apq export``, ``apq
#: analyze`` and ``apq reproduce --finn`` derive from them. ``--overwrite`` removes them before
#: training starts, and so does resuming an unfinished checkpoint: a run directory never shows
#: an earlier run's results beside a newer checkpoint.
RUN_OUTPUTS = (
    METRICS_FILE,
    MODEL_FILE,
    "plan.yaml",
    "history.csv",
    "symmetry.csv",
    "learning_curves.png",
    "forecast.png",
    "symmetry.png",
    "model.onnx",
    "export.json",
    "analysis.csv",
    "finn_summary*.json",
    "error.txt",
)
#: Folders of results derived from a run (``apq build``, ``apq sensitivity``), removed with
#: RUN_OUTPUTS only when they hold one of these, so a folder of the user's is never touched.
RUN_OUTPUT_DIRS = {
    "finn": ("summary.json", "build_dataflow.log"),
    "sensitivity": ("configs", "sensitivity.csv"),
}


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


@dataclass(frozen=True)
class DataSpec:
    """Where the data comes from, how it is windowed and what the model predicts; saved so a
    run can be reloaded.

    ``predict="change"`` (the default): the model outputs the change of the target from the
    window's last hour and the forecast adds that last value back (see
    ``brevitas_apq.data.windows``); ``"level"``: the model outputs the target itself. Measured
    on the embedded data, the README's "What the model predicts" section.
    """

    dataset: str = "beijing"
    window: int = 24
    horizon: int = 1
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    options: tuple[tuple[str, Any], ...] = ()  # loader options (csv: target, delimiter, ...)
    predict: str = "change"

    def __post_init__(self) -> None:
        if self.predict not in PREDICT_MODES:
            raise RunError(
                f"predict={self.predict!r} is invalid; valid: {', '.join(PREDICT_MODES)}"
            )

    def load(self) -> WindowedDataset:
        """Load, window and split the data; a file that cannot be read (a truncated or corrupt
        compressed CSV, no permission) is a DataError naming it."""
        try:
            series = load_dataset(self.dataset, **dict(self.options))
        except (EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, OSError) as err:
            if isinstance(err, OSError) and not isinstance(err, gzip.BadGzipFile):
                reason = err.strerror or str(err)
                fix = "check the path and its permissions"
            else:
                reason = f"truncated or corrupt compressed file: {type(err).__name__}: {err}"
                fix = "check it (e.g. gzip -t FILE) and download or compress it again"
            raise DataError(f"{self.dataset}: cannot read the data ({reason}); {fix}") from None
        return prepare_dataset(
            series, window=self.window, horizon=self.horizon, split=self.split, predict=self.predict
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "window": self.window,
            "horizon": self.horizon,
            "split": list(self.split),
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.options},
            "predict": self.predict,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSpec:
        options = tuple(
            (k, tuple(v) if isinstance(v, list) else v) for k, v in data["options"].items()
        )
        return cls(
            data["dataset"],
            data["window"],
            data["horizon"],
            tuple(data["split"]),
            options,
            # Runs saved before ``predict`` existed were trained on the level.
            data.get("predict", "level"),
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
    ``load_float_state``) and QAT starts from them. ``train.float_epochs`` is then unused. A
    fingerprint of the weights is part of the run's settings, so ``resume`` refuses other ones.
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


def load_float_state(
    source: str | Path | Mapping[str, torch.Tensor], data: DataSpec | None = None
) -> dict[str, torch.Tensor]:
    """Float-model weights from a state dict, a finished run directory (its ``model.pt``), a
    ``model.pt`` file or a ``.pt`` file holding a plain state dict.

    With ``data``, a run's weights are refused unless that run used the same data settings
    (weights trained to predict the level are no start for a run that predicts the change).
    """
    if isinstance(source, Mapping):
        return {k: v.detach().clone() for k, v in source.items()}
    path = Path(source)
    if path.is_dir() and (path / METRICS_FILE).exists():
        _, saved = _finished_run(path)
        path = path / MODEL_FILE
    elif path.is_file():
        saved = io.torch_load(path, fix="pass another float_init (a finished run directory)")
    else:
        raise RunError(
            f"float_init {str(source)!r}: no such file or finished run directory "
            f"(expected {MODEL_FILE} and {METRICS_FILE}; train it with `train_float` first)"
        )
    if isinstance(saved, Mapping) and "float_state_dict" in saved:
        if data is not None and "data" in saved:
            theirs, ours = DataSpec.from_dict(saved["data"]).to_dict(), data.to_dict()
            differ = {k: (v, ours[k]) for k, v in theirs.items() if ours[k] != v}
            if differ:
                listing = "; ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in differ.items())
                raise RunError(
                    f"float_init {str(path)!r} was trained with other data settings ({listing}); "
                    "train the float model with the same data options"
                )
        saved = saved["float_state_dict"]
    if not isinstance(saved, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in saved.values()
    ):
        raise RunError(f"float_init {str(path)!r} holds no float state dict")
    return dict(saved)


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """A SHA-256 of a state dict's names, shapes, dtypes and values (order-independent)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


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
        run["float_init"] = state_fingerprint(float_state)
    state: dict[str, Any] = {
        "format": 1,
        "run": run,
        "phases": {p: _fresh_phase() for p in PHASES},
        "history": [],
        "records": {},
        "train_seconds": 0.0,
    }
    if ckpt_path.exists() and resume:
        state = _load_checkpoint(ckpt_path)
        if json.dumps(state["run"], sort_keys=True) != json.dumps(run, sort_keys=True):
            raise RunError(
                f"{out} holds a run with other settings; resume it with the same options, or "
                "use another --out (or --overwrite)"
            )
    _take_run_dir(out, overwrite=overwrite, finished=_phases_done(state))
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
    io.torch_save(
        out / MODEL_FILE,
        {
            "format": 1,
            "model": model_config.to_dict(),
            "plan": plan.to_dict(),
            "data": data.to_dict(),
            "state_dict": quant_model.state_dict(),
            "float_state_dict": float_model.state_dict(),
        },
    )
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
    io.write_json(out / "metrics.json", metrics)
    return metrics


def load_run(run_dir: str | Path) -> tuple[TimeSeriesTransformer, TimeSeriesTransformer, DataSpec]:
    """The trained float and quantised models of a finished run, and its data spec.

    RunError if ``run_dir`` is not a finished run (``check_finished``); FileError if one of its
    files is truncated, corrupt or from an incompatible version.
    """
    _, saved = _finished_run(run_dir)
    path = Path(run_dir) / MODEL_FILE
    try:
        config = ModelConfig(**saved["model"])
        plan = BitPlan.from_dict(saved["plan"])
        float_model, quant_model = build_models(config, plan, 0)
        float_model.load_state_dict(saved["float_state_dict"])
        quant_model.load_state_dict(saved["state_dict"])
        data = DataSpec.from_dict(saved["data"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise FileError(
            f"{path} does not fit this version of brevitas-apq ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else err!r}); train the run again with "
            f"`apq train --out {run_dir} --overwrite`"
        ) from None
    return float_model.eval(), quant_model.eval(), data


# --- run directories: taking one over, checking that one is finished -------------------------


def _phases_done(state: Mapping[str, Any]) -> bool:
    return all(state["phases"][phase]["done"] for phase in PHASES)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """A run's checkpoint; FileError if it is truncated, corrupt or not an `apq train` one."""
    fix = (
        f"the run cannot continue from it: start it again with `apq train --out {path.parent} "
        "--overwrite`"
    )
    state = io.torch_load(path, fix=fix)
    run, phases = (state.get("run"), state.get("phases")) if isinstance(state, dict) else (0, 0)
    if (
        not isinstance(run, dict)
        or not isinstance(phases, dict)
        or not all(isinstance(phases.get(p), dict) and "done" in phases[p] for p in PHASES)
    ):
        raise FileError(f"{path} is not a checkpoint written by `apq train`; {fix}")
    return state


def _clear_outputs(out: Path) -> None:
    """Remove ``out``'s results (RUN_OUTPUTS, RUN_OUTPUT_DIRS), the finished marker first."""
    for pattern in RUN_OUTPUTS:
        for path in sorted(out.glob(pattern)):
            path.unlink(missing_ok=True)
    for name, markers in RUN_OUTPUT_DIRS.items():
        folder = out / name
        ours = any((folder / marker).exists() for marker in markers)
        if ours and folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)


def _take_run_dir(out: Path, *, overwrite: bool, finished: bool) -> None:
    """Make ``out`` ready for training (the checks of ``_train_run`` passed). If it holds a
    run: with ``overwrite`` remove it (results and checkpoint); when the training to come is
    not finished (``finished`` False), remove results that would otherwise stand beside it.
    Always remove the temporary files of writes a killed process left. A folder without a
    run keeps everything (it may be the user's)."""
    io.make_dir(out)
    holds_run = any((out / name).exists() for name in (CHECKPOINT, METRICS_FILE, MODEL_FILE))
    if holds_run and (overwrite or not finished):
        _clear_outputs(out)
    if overwrite:
        (out / CHECKPOINT).unlink(missing_ok=True)
    io.remove_stale_temps(out)


def _finished_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metrics, model.pt content)`` of the finished run in ``run_dir``, else RunError /
    FileError. Finished: ``metrics.json`` (written last) and ``model.pt`` are there, a kept
    checkpoint is finished and was trained with the settings of ``model.pt``, and
    ``metrics.json`` describes that model."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file" if run_dir.exists() else "does not exist"
        raise RunError(
            f"not a finished run directory: {run_dir} {what}; pass the --out of a finished "
            "`apq train`"
        )
    redo = (
        f"finish the run again with `apq train --out {run_dir} --resume` and the options it "
        "was trained with, or start again with --overwrite"
    )
    ckpt_path = run_dir / CHECKPOINT
    state = _load_checkpoint(ckpt_path) if ckpt_path.is_file() else None
    if state is not None and not _phases_done(state):
        epochs = len(state.get("history") or [])
        raise RunError(
            f"{run_dir} holds an unfinished run ({CHECKPOINT} after {epochs} epoch(s)); "
            f"continue it with `apq train --out {run_dir} --resume` and the options it was "
            "started with, or start again with --overwrite"
        )
    for name in (METRICS_FILE, MODEL_FILE):
        if not (run_dir / name).is_file():
            raise RunError(
                f"not a finished run directory: {run_dir} has no {name} (run `apq train --out "
                "DIR` first, or `--resume` an interrupted one)"
            )
    metrics = io.read_json(run_dir / METRICS_FILE, fix=redo)
    saved = io.torch_load(run_dir / MODEL_FILE, fix=redo)
    keys = ("model", "plan", "data", "state_dict", "float_state_dict")
    if not isinstance(metrics, dict):
        raise FileError(f"{run_dir / METRICS_FILE} holds no metrics table; {redo}")
    if not isinstance(saved, dict) or any(key not in saved for key in keys):
        raise FileError(f"{run_dir / MODEL_FILE} is not a model written by `apq train`; {redo}")
    mixed = [
        f"{CHECKPOINT} {key}"
        for key in ("data", "model", "plan")
        if state is not None
        and json.dumps(state["run"].get(key), sort_keys=True)
        != json.dumps(saved[key], sort_keys=True)
    ]
    if "model" in metrics and metrics["model"] != saved["model"]:
        mixed.append(f"{METRICS_FILE} model")
    if metrics.get("dataset", saved["data"]["dataset"]) != saved["data"]["dataset"]:
        mixed.append(f"{METRICS_FILE} dataset")
    if mixed:
        raise RunError(
            f"{run_dir} mixes files of different runs ({', '.join(mixed)} differ from "
            f"{MODEL_FILE}): train it again with `apq train --out {run_dir} --overwrite`"
        )
    return metrics, saved


def check_finished(run_dir: str | Path) -> dict[str, Any]:
    """The metrics of the finished run in ``run_dir``; RunError if it is not one (missing
    ``metrics.json`` or ``model.pt``, an unfinished checkpoint, files of different runs),
    FileError if one of its files is truncated or corrupt.

    Example::

        metrics = check_finished("runs/train")  # what `apq show` prints
    """
    return _finished_run(run_dir)[0]
