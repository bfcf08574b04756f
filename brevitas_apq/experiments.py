"""The paper's experiment grid (``apq reproduce``): float baseline, bit x scheme presets, seeds.

For every seed the float model is trained once (``runs/float/seed<N>``) and every QAT
configuration of that seed starts from it (``train_run(..., float_init=...)``). Each
configuration is its own run directory ``runs/<bits>_<schemes>[_t<threshold>[_<rule>]]/seed<N>``
(the decision rule only when it is not the paper's). Finished runs (``metrics.json`` present)
are never redone and half-finished ones resume from their checkpoint, so an interrupted
``apq reproduce`` continues where it stopped. The runs go through the one parallel runner
(``brevitas_apq.runner``): with ``jobs > 1``, spawned worker processes with one torch thread
each.

Outputs in the grid directory (all written atomically): ``settings.json`` (the training/data
settings; a grid refuses to continue with others), the per-run directories, and the tables and
plots of ``brevitas_apq.grid_report`` (results.csv/.md, stability.csv, plots).
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

import pandas as pd

from brevitas_apq import io
from brevitas_apq.data import DataSpec
from brevitas_apq.errors import APQError
from brevitas_apq.grid_report import (
    RETRAIN,
    aggregate,
    run_row,
    stability,
    threshold_table,
    write_report,
)
from brevitas_apq.models import ModelConfig
from brevitas_apq.plans import (
    APQ_SCHEMES,
    BIT_PRESETS,
    SCHEME_PRESETS,
    BitPlan,
    DecisionRule,
    PlanError,
)
from brevitas_apq.quant.core import DEFAULT_DECISION_RULE
from brevitas_apq.quant.validation import DECISION_RULES
from brevitas_apq.rundir import CHECKPOINT
from brevitas_apq.runner import Task, run_tasks
from brevitas_apq.training import TrainConfig

# The paper's order of the scheme presets.
GRID_SCHEMES = ("all-aq", "all-sq", "sq-aq", "sq-apq", "all-apq")
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


# --- results ---------------------------------------------------------------------------------


def collect(
    out: Path, configs: Sequence[Config], seeds: Sequence[int], finn: dict[str, dict] | None = None
) -> pd.DataFrame:
    """One row per finished run of the grid (float baselines first)."""
    rows = []
    for seed in seeds:
        path = float_dir(out, seed) / "metrics.json"
        if path.is_file():
            rows.append(run_row(None, seed, path.parent, io.read_json(path, fix=RETRAIN)))
    for config in configs:
        for seed in seeds:
            run = run_dir(out, config, seed)
            path = run / "metrics.json"
            if path.is_file():
                row = run_row(config, seed, run, io.read_json(path, fix=RETRAIN))
                for key, value in ((finn or {}).get(str(run)) or {}).items():
                    row[f"finn_{key}"] = value
                rows.append(row)
    return pd.DataFrame(rows)


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


#: ``DataSpec.options`` keys and the ``apq reproduce`` flags that set them (cli.common).
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
    main = [c.name for c in configs if not c.is_apq or c.threshold == threshold]
    main_results = results[results.config.isin(["float", *main])] if len(results) else results
    table = aggregate(main_results)
    sweep = threshold_table(results, thresholds) if thresholds and len(results) else pd.DataFrame()
    stab = stability(results) if len(results) else stability(pd.DataFrame(columns=["config"]))
    files = write_report(
        out,
        results=results,
        table=table,
        sweep=sweep,
        stab=stab,
        command=command,
        seeds=len(seed_list),
        failed=failed,
        finn=bool(finn_summaries),
        representative=Config("mixed-4-8", "sq-apq", threshold).name,
        log=log,
    )
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
