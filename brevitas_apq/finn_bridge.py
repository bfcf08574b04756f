"""From a training run (or an exported QONNX file) to a FINN dataflow accelerator estimate.

This is the glue between the project's runs and :mod:`finn_flow` (finn-plus). Two entry points:

* :func:`build_run` -- a finished ``apq train`` run directory: exports ``RUN_DIR/model.onnx``
  if missing, builds it for a board, emulates real test windows through FINN's hardware graph
  and writes ``RUN_DIR/finn/summary.json``. Used by ``apq quickstart`` and ``apq reproduce``.
* :func:`build_model` -- an ONNX file, optionally with a run directory that supplies test
  windows and the Brevitas reference (``apq build``).

Both return the summary dict (also written to ``OUT/summary.json``; ``apq`` prints it with
``brevitas_apq.report.summary_table``). Its main keys::

    board, part, capacities{LUT, FF, BRAM_18K, URAM, DSP}
    LUT, BRAM_18K, URAM, DSP          FINN estimate + analytical attention estimate
    estimated_throughput_fps, estimated_latency_ns, clock_ns
    nodes_outside_dataflow_partition  [{op, name, role}]
    nodes_not_estimated_by_finn       [{node, reason, analytical_estimate}]
    float_datapath_nodes              HW nodes with float tensors (LayerNorm)
    emulation                         None (windows=0) or {n_inputs, passed, tolerance,
                                      max_abs_diff (vs QONNX), max_abs_diff_vs_brevitas,
                                      qonnx_vs_brevitas_max_abs_diff, rmse_target_units, ...}
    flow_time_s

Without Xilinx tools the flow stops after HLS/RTL code generation (estimates only); with
``XILINX_VIVADO`` set, ``finn_flow`` runs the full flow to a bitfile (``full=True``).

Example::

    from brevitas_apq.finn_bridge import build_run
    s = build_run("runs/quickstart", windows=0)          # estimate only, no emulation
    s["LUT"], s["DSP"], s["estimated_throughput_fps"]
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_BOARD = "Pynq-Z1"
DEFAULT_WINDOWS = 32
DEFAULT_TOLERANCE = 1e-4

__all__ = ["DEFAULT_BOARD", "build_model", "build_run", "load_inputs", "run_onnx"]


def run_onnx(run_dir: str | Path, log: Callable[[str], None] | None = None) -> Path:
    """``RUN_DIR/model.onnx`` of a finished run (RunError otherwise), exported (and checked,
    ``export.json``) first when it is missing or older than the run's ``model.pt``."""
    from brevitas_apq.rundir import MODEL_FILE, check_finished

    run_dir = Path(run_dir)
    check_finished(run_dir)
    model_path = run_dir / "model.onnx"
    if (
        not model_path.is_file()
        or model_path.stat().st_mtime < (run_dir / MODEL_FILE).stat().st_mtime
    ):
        from brevitas_apq.export import export_run

        if log is not None:
            log(f"exporting {model_path} first")
        export_run(run_dir)
    return model_path


def _run_reference(run_dir: Path, windows: int) -> dict[str, Any]:
    """Test windows, labels, Brevitas outputs and the target inverse of a finished run."""
    import torch

    from brevitas_apq.rundir import load_run

    _, quant_model, spec = load_run(run_dir)
    dataset = spec.load()
    n = min(windows, len(dataset.X_test))
    X = np.asarray(dataset.X_test[:n], dtype=np.float32)
    with torch.no_grad():
        brevitas = quant_model.eval()(torch.from_numpy(X)).numpy().reshape(-1)

    def forecast_in_target_units(outputs: np.ndarray) -> np.ndarray:
        """Model outputs for the windows ``X`` -> forecasts in target units (the host side:
        add the last observed value back for ``predict="change"``, undo the scaling)."""
        return dataset.inverse_target(dataset.forecast(outputs, X))

    return {
        "X": X,
        "truth": dataset.inverse_target(dataset.y_test[:n]).reshape(-1),
        "brevitas": brevitas,
        "forecast": forecast_in_target_units,
        "source": f"first {n} test windows of {run_dir}",
    }


def _input_shape(model_path: Path) -> list[int]:
    from finn_flow.build import load_qonnx_model

    model = load_qonnx_model(model_path)
    inits = {i.name for i in model.graph.initializer}
    name = next(i.name for i in model.graph.input if i.name not in inits)
    return list(model.get_tensor_shape(name))


def _random_inputs(model_path: Path, windows: int) -> np.ndarray:
    """Inputs in [0, 1] (the range of min-max scaled data) with the model's input shape."""
    shape = _input_shape(model_path)
    rng = np.random.default_rng(0)
    return rng.uniform(0.0, 1.0, size=(windows, *shape[1:])).astype(np.float32)


def load_inputs(path: str | Path, model_path: str | Path) -> np.ndarray:
    """Samples from a ``.npy`` file for a model without a run: ``(N, *input shape without the
    batch axis)`` or ``(N, *input shape)``, float; returned as ``(N, *shape[1:])`` float32.

    Raises ``FinnFlowError`` (a ValueError) naming the file and the expected shape.
    """
    from finn_flow.errors import FinnFlowError

    path = Path(path)
    shape = _input_shape(Path(model_path))
    expected = f"(N, {', '.join(map(str, shape[1:]))})"
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise FinnFlowError(
            f"--inputs {path}: not a readable .npy array ({exc}); save one with "
            f"numpy.save(path, x) where x has shape {expected}"
        ) from exc
    if not np.issubdtype(arr.dtype, np.number):
        raise FinnFlowError(f"--inputs {path}: dtype {arr.dtype} is not numeric")
    if arr.ndim == len(shape) + 1 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != len(shape) or list(arr.shape[1:]) != shape[1:] or arr.shape[0] == 0:
        raise FinnFlowError(
            f"--inputs {path}: shape {arr.shape} does not match the model input; expected "
            f"{expected} (N samples, the model's input shape without its batch axis)"
        )
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise FinnFlowError(f"--inputs {path}: contains NaN or infinite values")
    return arr


def build_model(
    model_path: str | Path,
    out: str | Path,
    board: str = DEFAULT_BOARD,
    run_dir: str | Path | None = None,
    windows: int = DEFAULT_WINDOWS,
    target_fps: int | None = None,
    folding: str | Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    clock_ns: float = 10.0,
    inputs: np.ndarray | None = None,
    cppsim: int = 0,
    hls_dir: str | Path | None = None,
    jobs: int = 2,
    prefer_hls: bool = False,
    max_util: float | None = None,
    budget: str | None = None,
    pareto: bool = False,
) -> dict[str, Any]:
    """Build a QONNX file with FINN for ``board``; emulate ``windows`` inputs; return the summary.

    Args:
        model_path: QONNX model exported from Brevitas (``apq export`` writes one).
        out: output directory (FINN reports in ``report/``, ``summary.json``).
        board: board preset (Pynq-Z1, Pynq-Z2, ZCU104, KV260_SOM, Ultra96-V2) or FPGA part.
        run_dir: a finished run whose test windows are emulated and whose Brevitas model is a
            second reference (RMSE in target units too); without it, ``windows`` random
            inputs in [0, 1] are compared against the QONNX model only.
        windows: number of inputs to emulate; 0 skips emulation (estimate only, fastest).
        inputs: samples for a model without a run (:func:`load_inputs`); the first
            ``windows`` are emulated. Excludes ``run_dir``.
        cppsim: the first ``cppsim`` windows also run through the HLS kernels compiled with
            g++ (``summary["cppsim"]``, finn_flow.cppsim); ``hls_dir`` and ``jobs`` for it.
        prefer_hls: HLS variants wherever finn-plus has one (whole design in cppsim).
        max_util, budget, pareto: without ``target_fps``/``folding`` the fastest folding whose
            estimate fits ``max_util`` (default 0.8) of the board, or ``budget``
            (``"lut=8000,dsp=20"``); ``pareto`` writes every candidate (finn_flow.fit).
        target_fps: target inferences/s for FINN's auto-folding (warning if unreachable).
        folding: FINN folding JSON (node name -> PE/SIMD/...), applied after auto-folding.
        tolerance: max abs difference allowed (scaled model output units).
        clock_ns: target clock period.

    Raises:
        finn_flow.FinnFlowError (a ValueError): bad model, board, folding file, or an
            operator FINN cannot map; the message names the problem and the fix.
        finn_flow.EmulationMismatchError: emulation differs from the QONNX or Brevitas
            outputs by more than ``tolerance`` (``summary.json`` is written first).
    """
    from finn_flow.build import build, cppsim_failure, load_qonnx_model, write_summary
    from finn_flow.emulation import qonnx_reference
    from finn_flow.errors import EmulationMismatchError, FinnFlowError

    model_path, out = Path(model_path), Path(out)
    load_qonnx_model(model_path)  # refuses non-QONNX files and unknown node domains first
    if not isinstance(windows, int) or windows < 0:
        raise FinnFlowError(f"windows={windows!r} is invalid; allowed: an integer >= 0")
    if inputs is not None and run_dir is not None:
        raise FinnFlowError("give either a run directory or inputs, not both")
    ref, source = None, None
    if windows == 0:
        inputs = None
    elif run_dir is not None:
        ref = _run_reference(Path(run_dir), windows)
        inputs, source = ref["X"], ref["source"]
    elif inputs is not None:
        inputs = np.asarray(inputs, dtype=np.float32)[:windows]
        source = f"first {len(inputs)} of the given inputs"
    else:
        inputs = _random_inputs(model_path, windows)
        source = f"{len(inputs)} random inputs in [0, 1]"
    expected = None
    if inputs is not None:
        expected = qonnx_reference(model_path, inputs[:, None]).reshape(len(inputs), -1)
    summary = build(
        model_path,
        out,
        board=board,
        target_fps=target_fps,
        folding_config=folding,
        emulation_inputs=None if inputs is None else inputs[:, None],
        expected_outputs=expected,
        tolerance=tolerance,
        clock_ns=clock_ns,
        save_intermediate_models=inputs is not None,
        raise_on_mismatch=False,
        quiet=True,
        cppsim=cppsim if inputs is not None else 0,
        hls_dir=hls_dir,
        jobs=jobs,
        prefer_hls=prefer_hls,
        max_util=max_util,
        budget=budget,
        pareto=pareto,
    )
    summary["model"] = str(model_path)
    emulated = summary.pop("emulation_outputs", None)
    emu = summary.get("emulation")
    problems = []
    if emu is not None and emulated is not None:
        emulated = np.asarray(emulated, dtype=np.float64).reshape(len(inputs), -1)
        emu["inputs"] = source
        emu["max_abs_diff_vs_qonnx"] = emu["max_abs_diff"]
        if not emu["passed"]:
            problems.append(f"vs QONNX max |diff| {emu['max_abs_diff']:.3g}")
        if ref is not None:
            brev = ref["brevitas"].astype(np.float64).reshape(len(inputs), -1)
            emu["max_abs_diff_vs_brevitas"] = float(np.abs(emulated - brev).max())
            emu["qonnx_vs_brevitas_max_abs_diff"] = float(
                np.abs(expected.astype(np.float64) - brev).max()
            )
            truth = ref["truth"]
            pred = ref["forecast"](emulated.reshape(-1))
            pred_brev = ref["forecast"](brev.reshape(-1))
            emu["rmse_target_units"] = float(np.sqrt(np.mean((pred - truth) ** 2)))
            emu["brevitas_rmse_target_units"] = float(np.sqrt(np.mean((pred_brev - truth) ** 2)))
            if emu["max_abs_diff_vs_brevitas"] > tolerance:
                emu["passed"] = False
                problems.append(f"vs Brevitas max |diff| {emu['max_abs_diff_vs_brevitas']:.3g}")
        write_summary(out, summary)
    if problems:
        raise EmulationMismatchError(
            f"FINN hardware-graph emulation differs from the reference above tolerance "
            f"{tolerance:g} ({'; '.join(problems)}); see {out / 'summary.json'}. Check the "
            "model follows the mapping rules in finn_flow/build.py or raise --tolerance."
        )
    sim = summary.get("cppsim")
    if sim is not None and not sim["passed"]:
        raise EmulationMismatchError(cppsim_failure(sim, out))
    return summary


def build_run(
    run_dir: str | Path,
    board: str = DEFAULT_BOARD,
    out: str | Path | None = None,
    windows: int = DEFAULT_WINDOWS,
    target_fps: int | None = None,
    folding: str | Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    cppsim: int = 0,
    hls_dir: str | Path | None = None,
    jobs: int = 2,
) -> dict[str, Any]:
    """FINN estimate (and emulation) of a finished run; writes ``OUT/summary.json``.

    Args:
        run_dir: a finished ``apq train`` run; ``RUN_DIR/model.onnx`` is exported (and checked,
            ``export.json``) first if missing or older than ``model.pt`` (:func:`run_onnx`).
        board: board preset or FPGA part (default Pynq-Z1).
        out: output directory, default ``RUN_DIR/finn``.
        windows: test windows to emulate (default 32); ``0`` = estimate only, no emulation,
            no intermediate models saved: the cheap mode for tables of many configurations.
        target_fps, folding, tolerance, cppsim, hls_dir, jobs: see :func:`build_model`.

    Returns the summary dict; the keys ``LUT``, ``BRAM_18K``, ``DSP``, ``URAM``,
    ``estimated_throughput_fps`` and ``estimated_latency_ns`` are plain numbers.
    """
    run_dir = Path(run_dir)
    return build_model(
        run_onnx(run_dir),
        out if out is not None else run_dir / "finn",
        board=board,
        run_dir=run_dir,
        windows=windows,
        target_fps=target_fps,
        folding=folding,
        tolerance=tolerance,
        cppsim=cppsim,
        hls_dir=hls_dir,
        jobs=jobs,
    )
