"""Run directories: their layout, taking one over, checking that one is finished, loading it,
and the fingerprints that tell runs apart.

One run directory (``apq train --out DIR``, ``brevitas_apq.training.train_run``) holds::

    checkpoint.pt   resumable state, written atomically after every epoch
    model.pt        the final float and quantised weights with model config, plan and data spec
    metrics.json    test metrics in target units, sizes, decisions and decision flips, timings,
                    ``degenerate`` (brevitas_apq.health) and ``data_warnings``
    plan.yaml       the plan in explicit form
    history.csv     one row per epoch and phase
    symmetry.csv    S and the scheme per APQ quantiser and training step
    *.png           learning curves, forecast against truth, S over training

``metrics.json`` is written last: a run is finished when it and ``model.pt`` are there and agree
with a kept checkpoint (:func:`check_finished`). Every file is written atomically
(``brevitas_apq.io``) and loads with ``torch.load(..., weights_only=True)``.

Example::

    from brevitas_apq.rundir import check_finished, load_run

    metrics = check_finished("runs/train")  # RunError unless it is a finished run
    float_model, quant_model, data = load_run("runs/train")
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from brevitas_apq import io
from brevitas_apq.data import DataSpec
from brevitas_apq.errors import FileError, RunError
from brevitas_apq.models import ModelConfig
from brevitas_apq.plans import BitPlan

if TYPE_CHECKING:
    from brevitas_apq.models import TimeSeriesTransformer

CHECKPOINT = "checkpoint.pt"
MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
#: The training phases, in order; a checkpoint holds the state of each.
PHASES = ("float", "qat")
#: What a run directory holds besides its checkpoint: the results of training (metrics.json,
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


# --- fingerprints ----------------------------------------------------------------------------


def fingerprint(value: Any, length: int = 64) -> str:
    """The SHA-256 (the first ``length`` hex digits) that tells runs, weights and settings apart.

    What is hashed depends on ``value``:

    * a :class:`~pathlib.Path`: the file's bytes (``model.pt`` of a run: results derived from
      it never mix with another or a retrained run's);
    * a non-empty mapping of tensors (a state dict): names, shapes, dtypes and values,
      independent of the order (``float_init`` weights in a checkpoint's settings);
    * anything else: its JSON with sorted keys, ``str()`` for what JSON cannot hold (settings
      naming a run directory, ``apq search``).

    These fingerprints are stored (checkpoints, configuration files, folder names): changing
    how one is computed makes users' runs look like other runs.

    Example::

        fingerprint({"seed": 0, "lr": 1e-3}, 16)  # 16 hex digits
    """
    digest = hashlib.sha256()
    if isinstance(value, Path):
        with open(value, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    elif (
        isinstance(value, Mapping)
        and value
        and all(isinstance(v, torch.Tensor) for v in value.values())
    ):
        for name in sorted(value):
            tensor = value[name].detach().cpu().contiguous()
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            digest.update(tensor.numpy().tobytes() if tensor.numel() else b"")
    else:
        digest.update(json.dumps(value, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:length]


# --- the model file --------------------------------------------------------------------------


def save_model(
    out: Path,
    model_config: ModelConfig,
    plan: BitPlan,
    data: DataSpec,
    float_model: torch.nn.Module,
    quant_model: torch.nn.Module,
) -> Path:
    """Write ``out/model.pt``: both models' weights with what rebuilds them (:func:`load_run`)."""
    return io.torch_save(
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


def load_run(
    run_dir: str | Path,
) -> tuple[TimeSeriesTransformer, TimeSeriesTransformer, DataSpec]:
    """The trained float and quantised models of a finished run, and its data spec.

    RunError if ``run_dir`` is not a finished run (``check_finished``); FileError if one of its
    files is truncated, corrupt or from an incompatible version.
    """
    # the models are built as training builds them (brevitas_apq.training imports this module)
    from brevitas_apq.training import build_models

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


# --- the checkpoint; taking a run directory over ---------------------------------------------


def phases_done(state: Mapping[str, Any]) -> bool:
    """Whether the checkpoint state ``state`` has finished every phase."""
    return all(state["phases"][phase]["done"] for phase in PHASES)


def load_checkpoint(path: Path) -> dict[str, Any]:
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


def take_run_dir(out: Path, *, overwrite: bool, finished: bool) -> None:
    """Make ``out`` ready for training (the checks of ``train_run`` passed). If it holds a
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


# --- finished runs ---------------------------------------------------------------------------


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
    state = load_checkpoint(ckpt_path) if ckpt_path.is_file() else None
    if state is not None and not phases_done(state):
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
