"""Multi-objective bit-plan search (``apq search``) with Optuna.

Each trial picks a bit width per linear layer ``L1``-``L8`` (its weight, bias and output), one
bit width for the other activations (the model input stays at 8 bits), a scheme for the
weights and biases and one for the activations (sq / aq / apq), trains QAT from a shared float
model and reports three objectives, all minimised: validation RMSE (the search never looks
at the test split; test RMSE is recorded per trial as ``test_rmse``, for reporting), model size
in bits and zero-point operations per inference (``metrics["zero_point_ops"]``, 0 included;
where a metrics file has none, the number of quantisers using AQ stands in).

Sharing and resuming:

* The study lives in Optuna storage: ``sqlite:///OUT/study.db`` by default, or any Optuna
  storage URL (``postgresql://user@host/db`` ...), so many ``apq search`` workers on one or
  many machines share one study. ``load_if_exists`` makes a second run continue the study; a
  worker that died leaves a trial that the heartbeat marks failed and re-queues.
* The search settings (data, training, space) are stored on the study; a worker with other
  settings is refused.
* The float model is trained once per output directory (``OUT/float/<key>``), under a file lock
  and moved into place by an atomic rename; workers with their own output directory (other
  machines) train the same float model deterministically from the seed.
* Each trial's run directory is named by a hash of its plan and settings
  (``OUT/trials/<hash>``): a re-queued trial resumes from its checkpoint, a repeated plan
  reuses the finished run.

Outputs in OUT: ``trials.csv`` (every finished trial of the study), ``pareto.csv`` (the Pareto
front) and ``pareto.png``. A trial whose model is degenerate (constant or non-finite output, a
collapsed quantiser; ``brevitas_apq.health``) keeps its objectives but says why in its
``degenerate`` column (empty for a sound model) and in its log line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from brevitas_apq import io
from brevitas_apq.data import DataSpec
from brevitas_apq.errors import APQError
from brevitas_apq.health import degenerate_reasons
from brevitas_apq.plans import ACTIVATIONS, LAYERS, UNSIGNED_ACTIVATIONS, BitPlan
from brevitas_apq.rundir import CHECKPOINT, fingerprint
from brevitas_apq.runner import Task, run_tasks
from brevitas_apq.training import TrainConfig

#: What the search minimises: validation RMSE (never the test split), size, zero-point ops.
OBJECTIVES = ("val_rmse", "model_size_bits", "zero_point_ops")
SCHEMES = ("sq", "aq", "apq")
SAMPLERS = ("tpe", "nsga2", "random")
DEFAULT_STUDY = "apq-search"
HEARTBEAT_SECONDS = 60
GRACE_SECONDS = 180


class SearchError(APQError):
    """A search option, storage or study that cannot be used as given."""


@dataclass(frozen=True)
class SearchSpace:
    """What a trial chooses: per-layer bits in ``[min_bits, max_bits]``, schemes from lists.

    ``layers``: the layers whose bits are searched, by module name (a subset of the
    Transformer's ``L1``..``L8``, e.g. ``("L1", "L8")``); the others stay at ``max_bits``.
    """

    min_bits: int = 2
    max_bits: int = 8
    weight_schemes: tuple[str, ...] = SCHEMES
    act_schemes: tuple[str, ...] = SCHEMES
    threshold: float = 0.1
    layers: tuple[str, ...] = LAYERS

    def __post_init__(self) -> None:
        if not (isinstance(self.min_bits, int) and isinstance(self.max_bits, int)) or not (
            2 <= self.min_bits <= self.max_bits <= 16
        ):
            raise SearchError(
                f"bit range {self.min_bits}..{self.max_bits} is invalid; allowed: "
                "2 <= min_bits <= max_bits <= 16"
            )
        for name in ("weight_schemes", "act_schemes"):
            values = getattr(self, name)
            if not values:
                raise SearchError(f"{name} is empty; valid: {', '.join(SCHEMES)}")
            for value in values:
                if value not in SCHEMES:
                    raise SearchError(f"unknown scheme {value!r}; valid: {', '.join(SCHEMES)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise SearchError(f"threshold={self.threshold!r} is out of range; allowed: [0, 1]")
        layers = tuple(dict.fromkeys(self.layers))
        unknown = [layer for layer in layers if layer not in LAYERS]
        if not layers or unknown:
            problem = f"unknown {', '.join(unknown)}" if unknown else "no layer"
            raise SearchError(
                f"layers={list(self.layers)!r}: {problem}; allowed: a non-empty list of "
                f"{', '.join(LAYERS)}"
            )
        object.__setattr__(self, "layers", layers)


def parse_schemes(text: str | None) -> tuple[str, ...]:
    if text is None:
        return SCHEMES
    items = tuple(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    for item in items:
        if item not in SCHEMES:
            raise SearchError(f"unknown scheme {item!r}; valid: {', '.join(SCHEMES)}")
    if not items:
        raise SearchError(f"no scheme given; valid: {', '.join(SCHEMES)}")
    return items


def plan_from_params(
    params: dict[str, Any], threshold: float, name: str = "search", fixed_bits: int = 8
) -> BitPlan:
    """The plan of a trial's parameters (``bits_L1``..``bits_L8``, ``bits_act``,
    ``weight_scheme``, ``act_scheme``); a layer without ``bits_<layer>`` (outside the search
    space) gets ``fixed_bits``."""
    ws, acts = params["weight_scheme"], params["act_scheme"]
    layers = {}
    for layer in LAYERS:
        b = params.get(f"bits_{layer}", fixed_bits)
        layers[layer] = {
            "weight": {"bits": b, "scheme": ws, "threshold": threshold},
            "bias": {"bits": b, "scheme": ws, "threshold": threshold},
            "output": {"bits": b, "scheme": acts, "threshold": threshold},
        }
    activations = {}
    for act in ACTIVATIONS:
        if act == "input":
            activations[act] = {"bits": 8, "scheme": acts, "threshold": threshold}
        elif act in UNSIGNED_ACTIVATIONS:
            activations[act] = {"bits": params["bits_act"], "scheme": "sq"}
        else:
            activations[act] = {"bits": params["bits_act"], "scheme": acts, "threshold": threshold}
    return BitPlan.from_dict({"name": name, "layers": layers, "activations": activations})


def suggest_params(trial, space: SearchSpace) -> dict[str, Any]:
    params = {
        f"bits_{layer}": trial.suggest_int(f"bits_{layer}", space.min_bits, space.max_bits)
        for layer in space.layers
    }
    params["bits_act"] = trial.suggest_int("bits_act", space.min_bits, space.max_bits)
    params["weight_scheme"] = trial.suggest_categorical("weight_scheme", list(space.weight_schemes))
    params["act_scheme"] = trial.suggest_categorical("act_scheme", list(space.act_schemes))
    return params


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing), released on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def float_model_dir(
    out: Path,
    data: DataSpec,
    train: TrainConfig,
    model_options: dict[str, Any] | None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """The float model shared by this directory's trials, trained once (locked, atomic rename)."""
    from brevitas_apq.training import train_float

    float_settings = {
        k: v for k, v in dataclasses.asdict(train).items() if k not in ("qat_epochs", "qat_lr")
    }
    key = fingerprint(
        {"data": data.to_dict(), "model": model_options or {}, "train": float_settings}, 16
    )
    final = out / "float" / key
    if (final / "model.pt").is_file():
        return final
    with file_lock(out / "float" / f".{key}.lock"):
        if (final / "model.pt").is_file():  # another worker finished it meanwhile
            return final
        partial = out / "float" / f".{key}.partial"
        if (partial / "metrics.json").is_file():
            pass  # trained, not yet renamed
        else:
            log(f"training the float model ({final}) ...")
            train_float(
                partial,
                data=data,
                train=train,
                model_options=model_options,
                resume=(partial / CHECKPOINT).exists(),
                progress=progress,
            )
        if final.exists():  # an incomplete leftover cannot exist (only renames create it)
            shutil.rmtree(final)
        os.replace(partial, final)
    return final


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def make_storage(url: str):
    """An Optuna RDB storage with heartbeats (dead workers' trials are failed and re-queued)."""
    import optuna
    from optuna import storages

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several local workers write one SQLite file: wait for the lock instead of failing.
        engine_kwargs = {"connect_args": {"timeout": 120}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = getattr(storages, "RetryHeartbeatStaleTrialCallback", None)
            if retry is None:  # optuna < 4.9
                retry = storages.RetryFailedTrialCallback
            return storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=retry(max_retry=2),
            )
    except (ImportError, ModuleNotFoundError) as err:
        raise SearchError(
            f"storage {_redact(url)}: its database driver is not installed ({err}); for "
            "postgresql:// install psycopg (pip install 'psycopg[binary]')"
        ) from None
    except optuna.exceptions.StorageInternalError as err:
        raise SearchError(f"storage {_redact(url)} cannot be used: {err}") from None
    except Exception as err:  # sqlalchemy.exc.ArgumentError, OperationalError, ...
        if type(err).__module__.startswith("sqlalchemy"):
            message = str(err).splitlines()[0]
            raise SearchError(f"storage {_redact(url)} cannot be used: {message}") from None
        raise


def _redact(url: str) -> str:
    """The URL without a password, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def _offset(seed: int | None, worker: int) -> int | None:
    return None if seed is None else seed + worker


def _worker(args: dict[str, Any], trials: int, sampler_seed: int | None) -> None:
    """One worker process of ``search(jobs=...)``: its share of the trials in the shared study
    (the study object does not cross processes; the parent reads the storage)."""
    search(**args, trials=trials, sampler_seed=sampler_seed)


def _sampler(name: str, seed: int | None):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=16)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SearchError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")


def open_study(storage: str, study_name: str, settings: dict[str, Any], sampler, lock: Path | None):
    """Create or load the study; refuse one made with other search settings."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with file_lock(lock) if lock else contextlib.nullcontext():
        store = make_storage(storage)
        for attempt in range(5):  # concurrent creation from several machines
            try:
                study = optuna.create_study(
                    storage=store,
                    study_name=study_name,
                    directions=["minimize"] * len(OBJECTIVES),
                    sampler=sampler,
                    load_if_exists=True,
                )
                break
            except Exception as err:
                if type(err).__module__.startswith("sqlalchemy") and attempt < 4:
                    time.sleep(1 + attempt)
                    continue
                if isinstance(err, ValueError):
                    raise SearchError(f"study {study_name!r}: {err}") from None
                raise
        if len(study.directions) != len(OBJECTIVES):
            raise SearchError(
                f"study {study_name!r} in {_redact(storage)} has {len(study.directions)} "
                f"objective(s), not {len(OBJECTIVES)}: it is not an `apq search` study"
            )
        saved = study.user_attrs.get("settings")
        objectives = study.user_attrs.get("objectives")
        if saved is not None and objectives != list(OBJECTIVES):
            raise SearchError(
                f"study {study_name!r} optimises {objectives} (an older apq that selected on the "
                f"test split), this apq {list(OBJECTIVES)}: use another --study-name"
            )
        if saved is None:
            study.set_user_attr("settings", settings)
            study.set_user_attr("objectives", list(OBJECTIVES))
        elif json.loads(json.dumps(saved)) != json.loads(json.dumps(settings)):
            changed = sorted(k for k in settings if saved.get(k) != settings[k])
            raise SearchError(
                f"study {study_name!r} was created with other settings ({', '.join(changed)}); "
                "use the same options, or another --study-name"
            )
    return study


def _validation_rmse(run: Path) -> float:
    """Validation RMSE of a finished run's quantised model (runs that predate ``val_rmse``)."""
    from brevitas_apq.rundir import load_run
    from brevitas_apq.training import evaluate

    _, quant_model, spec = load_run(run)
    return evaluate(quant_model, spec.load(), "val")["rmse"]


def trials_frame(study) -> pd.DataFrame:
    """Every finished trial: objectives, parameters and where its run lives."""
    import optuna

    rows = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        row = {"trial": t.number}
        row.update(dict(zip(OBJECTIVES, t.values, strict=True)))
        row.update({k: v for k, v in t.user_attrs.items() if k != "plan_summary"})
        row.update(t.params)
        rows.append(row)
    return pd.DataFrame(rows)


def pareto_frame(study) -> pd.DataFrame:
    front = {t.number for t in study.best_trials} if trials_exist(study) else set()
    frame = trials_frame(study)
    if frame.empty:
        return frame
    return frame[frame.trial.isin(front)].sort_values(["val_rmse", "model_size_bits"])


def trials_exist(study) -> bool:
    import optuna

    return bool(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def plot_pareto(trials: pd.DataFrame, pareto: pd.DataFrame, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from brevitas_apq import plots  # noqa: F401  (Agg backend)

    fig, ax = plt.subplots(figsize=(8, 5))
    if trials.empty:
        ax.text(0.5, 0.5, "no finished trial yet", ha="center", va="center")
    else:
        ax.scatter(trials.model_size_bits, trials.val_rmse, color="0.7", s=18, label="trials")
        points = ax.scatter(
            pareto.model_size_bits,
            pareto.val_rmse,
            c=pareto.zero_point_ops,
            cmap="viridis",
            s=40,
            edgecolors="black",
            label="Pareto front",
        )
        fig.colorbar(points, ax=ax, label="zero-point operations")
        for r in pareto.itertuples():
            ax.annotate(str(r.trial), (r.model_size_bits, r.val_rmse), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
        ax.legend()
    ax.set(
        xlabel="model size (bits)",
        ylabel="validation RMSE (the objective)",
        title="Bit-plan search: Pareto front",
    )
    ax.grid(alpha=0.3)
    return io.save_figure(fig, path)


def write_outputs(study, out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``trials.csv``, ``pareto.csv`` and ``pareto.png`` from the study's current state.

    Under a lock, reading the study inside it: with several workers, the last one to write has
    read every trial finished before it, so a slower writer never overwrites newer outputs with
    an older view (it did: two workers, trials.csv with one of two trials).
    """
    with file_lock(out / ".outputs.lock"):
        trials = trials_frame(study)
        pareto = pareto_frame(study)
        io.write_csv(out / "trials.csv", trials)
        io.write_csv(out / "pareto.csv", pareto)
        plot_pareto(trials, pareto, out / "pareto.png")
    return trials, pareto


def search(
    out: str | Path,
    *,
    storage: str | None = None,
    study_name: str = DEFAULT_STUDY,
    trials: int = 10,
    space: SearchSpace | None = None,
    train: TrainConfig | None = None,
    data: DataSpec | None = None,
    model_options: dict[str, Any] | None = None,
    sampler: str = "tpe",
    sampler_seed: int | None = None,
    jobs: int = 1,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run ``trials`` trials of this worker in the (shared) study, then write the Pareto front.

    ``train`` defaults to ``TrainConfig(float_epochs=10, qat_epochs=5)``, ``data`` to the
    embedded Beijing data. ``jobs > 1`` splits the trials over that many worker processes
    (``brevitas_apq.runner``), each a worker of the shared study as a second ``apq search``
    would be, after the float model is trained here once; with ``sampler_seed`` worker ``i``
    samples with ``sampler_seed + i`` (the same seed would propose the same plans). Returns
    ``{"study", "trials", "pareto", "storage", "float_dir"}``.
    """
    from brevitas_apq.training import train_run

    out = Path(out)
    space = space or SearchSpace()
    train = dataclasses.replace(train or TrainConfig(float_epochs=10, qat_epochs=5), threads=1)
    data = data or DataSpec()
    if not isinstance(trials, int) or trials < 0:
        raise SearchError(f"trials={trials!r} is invalid; allowed: an integer >= 0")
    if not isinstance(jobs, int) or jobs < 1:
        raise SearchError(f"jobs={jobs!r} is invalid; allowed: an integer >= 1")
    if sampler not in SAMPLERS:
        raise SearchError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    out.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(out)
    settings = {
        "data": data.to_dict(),
        "model_options": model_options or {},
        "train": dataclasses.asdict(train),
        # without layers when it is all of them: studies from before the field stay usable
        "space": {
            k: v for k, v in dataclasses.asdict(space).items() if k != "layers" or v != LAYERS
        },
    }
    local_lock = out / ".study.lock" if url.startswith("sqlite") else None
    study = open_study(url, study_name, settings, _sampler(sampler, sampler_seed), local_lock)
    fdir = float_model_dir(out, data, train, model_options, progress, log) if trials else None
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial) -> tuple[float, float, float]:
        params = suggest_params(trial, space)
        plan = plan_from_params(
            params, space.threshold, name=f"search-{trial.number}", fixed_bits=space.max_bits
        )
        key = fingerprint({"params": params, "settings": settings}, 16)
        run = out / "trials" / key
        with file_lock(out / "trials" / f".{key}.lock"):
            metrics_path = run / "metrics.json"
            if metrics_path.is_file():
                metrics = io.read_json(metrics_path, fix=f"delete the folder {run}")
            else:
                metrics = train_run(
                    run,
                    data=data,
                    plan=plan,
                    train=train,
                    model_options=model_options,
                    resume=(run / CHECKPOINT).exists(),
                    progress=progress,
                    float_init=fdir,
                )
        schemes = metrics.get("schemes", {})
        n_aq = sum(v == "AQ" for v in schemes.values())
        zp = metrics.get("zero_point_ops")
        val_rmse = metrics.get("val_rmse")
        if val_rmse is None:  # a run trained before metrics recorded it
            val_rmse = _validation_rmse(run)
        trial.set_user_attr("run_dir", str(run.resolve()))
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("n_aq", n_aq)
        trial.set_user_attr("zero_point_ops_source", "metrics" if zp is not None else "n_aq")
        trial.set_user_attr("float_rmse", metrics.get("float_rmse"))
        trial.set_user_attr("test_rmse", metrics.get("rmse"))  # reported, never selected on
        degenerate = "; ".join(degenerate_reasons(metrics, "qat"))
        trial.set_user_attr("degenerate", degenerate)
        values = (
            float(val_rmse),
            float(metrics["model_size_bits"]),
            float(zp if zp is not None else n_aq),
        )
        log(
            f"trial {trial.number}: validation RMSE {values[0]:.3f} (test {metrics['rmse']:.3f}),"
            f" size {values[1]:,.0f} bits, zero-point ops {values[2]:,.0f} ({worker})"
            + (f"; DEGENERATE: {degenerate}" if degenerate else "")
        )
        return values

    if trials and jobs > 1:
        shares = [trials // jobs + (i < trials % jobs) for i in range(jobs)]
        worker_args = {
            "out": str(out),
            "storage": url,
            "study_name": study_name,
            "space": space,
            "train": train,
            "data": data,
            "model_options": model_options,
            "sampler": sampler,
        }
        tasks = [
            Task(f"worker {i}", _worker, (worker_args, n, _offset(sampler_seed, i)))
            for i, n in enumerate(shares)
            if n
        ]
        run_tasks(tasks, jobs)  # a failing worker stops the search, as a failing trial does
    elif trials:
        study.optimize(objective, n_trials=trials, gc_after_trial=False)
    trials_df, pareto = write_outputs(study, out)
    return {
        "study": study,
        "trials": trials_df,
        "pareto": pareto,
        "storage": _redact(url),
        "float_dir": fdir,
    }
