"""Build a QONNX model (exported by Brevitas) into a FINN dataflow accelerator.

:func:`build` runs finn-plus's builder (``build_dataflow_cfg``) with the step lists of
:mod:`finn_flow.steps`: without ``XILINX_VIVADO`` the estimate-only flow up to HLS/RTL code
generation, with it the full flow to bitfile, PYNQ driver and deployment package. It writes
FINN's reports to ``out_dir/report`` plus ``out_dir/summary.json`` (built from those reports
by :func:`finn_flow.reports.summarise`).

Model-construction rules for a Transformer to map completely (Brevitas, batch 1, one head,
tensors ``(1, seq, d_model)``):

* Quantise the model input (``QuantIdentity``) and every tensor entering a matrix product:
  ``QuantLinear`` q/k/v/out projections with ``output_quant``; ``QuantIdentity`` on the
  scores before softmax, after softmax (unsigned, e.g. ``Uint8ActPerTensorFloat``, zero point
  0) and on the attention-times-values product; ``torch.matmul`` of those quantised tensors.
* Both inputs of every add (positional encoding, residuals) through ONE shared quantiser
  instance (same scale), so the add is an integer add after streamlining.
* The positional encoding is a constant ``(seq, d_model)`` tensor added after the input
  projection; it stays a hardware ``ElementwiseAdd`` with a constant operand.
* ``QuantReLU`` (or the quantiser after ``ReLU``) unsigned and not narrow, zero point 0.
* Normalisation without affine terms: ``BatchNorm1d(affine=False)`` over ``d_model``
  (applied as ``norm(x.transpose(1, 2)).transpose(1, 2)``), followed by a quantiser; it is
  absorbed into thresholds. ``LayerNorm(elementwise_affine=False)`` maps to finn-plus's float
  ``LayerNorm`` operator (float datapath, listed in the summary's ``float_datapath_nodes``;
  the dequantiser scale and zero-point offset in front of it are absorbed exactly, see
  :class:`finn_flow.hw_rewrites.AbsorbScalarMulIntoLayerNorm`).
* Mean pooling over time: ``h.mean(dim=1)`` followed by a quantiser (``GlobalAccPool``).
* Activation bit widths <= 8 (FINN's ``max_multithreshold_bit_width``); weights any width.
* Zero points (signed or unsigned grids) are lowered exactly by :mod:`finn_flow.transforms`
  except on the quantisers after ReLU and softmax, whose handlers need zero point 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from finn_flow.boards import resolve_target
from finn_flow.errors import EmulationMismatchError, FinnFlowError, FinnFlowWarning
from finn_flow.no_vivado import finn_session, vivado_available
from finn_flow.reports import SUMMARY_FILES
from finn_flow.reports import summarise as _summarise  # test_cli_errors.py imports it

__all__ = ["build", "flow_steps", "load_qonnx_model"]

DEFAULT_TOLERANCE = 1e-4
#: Node domains a model may use (anything else is refused before qonnx imports it).
_STANDARD_DOMAINS = ("", "ai.onnx", "onnx.brevitas")
_KNOWN_DOMAINS = ("qonnx.custom_op.", "finn.custom_op.")


# ------------------------------------------------------------------------------ validation
def load_qonnx_model(model_path: str | Path):
    """Load and check a QONNX model; FinnFlowError if it is not one FINN can start from."""
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper

    path = Path(model_path)
    if not path.is_file():
        raise FinnFlowError(f"Model file not found: {path}")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, OSError, ...
        raise FinnFlowError(f"{path} is not an ONNX model ({type(exc).__name__}: {exc}).") from exc
    if len(proto.graph.node) == 0:
        raise FinnFlowError(f"{path} is not an ONNX model (no graph nodes).")
    # qonnx resolves a node's domain with importlib.import_module: an untrusted file could name
    # any installed module. Refuse domains outside ONNX's, QONNX's and FINN's before that.
    foreign = sorted(
        {
            f"{n.domain!r} ({n.op_type} {n.name!r})"
            for n in proto.graph.node
            if n.domain not in _STANDARD_DOMAINS and not n.domain.startswith(_KNOWN_DOMAINS)
        }
    )
    if foreign:
        raise FinnFlowError(
            f"{path} has nodes in unknown domains: {', '.join(foreign[:5])}. Only ONNX, QONNX "
            "(qonnx.custom_op.*) and FINN (finn.custom_op.*) operators are accepted; export the "
            "model with brevitas.export.export_qonnx."
        )
    model = ModelWrapper(proto)
    ops = [n.op_type for n in model.graph.node]
    if not any(op in ("Quant", "BipolarQuant", "Trunc", "MultiThreshold") for op in ops):
        raise FinnFlowError(
            f"{path} has no QONNX Quant nodes: a float model cannot be built with FINN. "
            "Export a Brevitas-quantised model with brevitas.export.export_qonnx."
        )
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise FinnFlowError(
            f"{path}: FINN's flow needs exactly one graph input and one output, found "
            f"{len(inputs)} and {len(model.graph.output)}."
        )
    if any(d.dim_param or d.dim_value == 0 for d in inputs[0].type.tensor_type.shape.dim):
        raise FinnFlowError(f"{path}: the input shape must be static (batch 1).")
    return model


def flow_steps(full: bool | None = None) -> list[str]:
    """Names of the steps of the estimate-only (``full=False``) or full flow."""
    if full is None:
        full = vivado_available()
    with finn_session():
        from finn_flow.steps import build_steps, step_names

        return step_names(build_steps(full, {}, emulation=None))


# ------------------------------------------------------------------------------- summary
def _cppsim_summary(result, tolerance: float) -> dict:
    """``summary["cppsim"]``: the whole-graph C++ simulation against Python and QONNX."""
    worst = max(result.max_abs_diff_vs_python, result.max_abs_diff_vs_qonnx or 0.0)
    failed = [
        n.name for n in result.nodes if n.max_abs_diff > tolerance or (n.decisions_changed or 0) > 0
    ]
    return {
        "windows": result.n_inputs,
        "max_abs_diff_vs_python": result.max_abs_diff_vs_python,
        "max_abs_diff_vs_qonnx": result.max_abs_diff_vs_qonnx,
        "tolerance": float(tolerance),
        "passed": bool(worst <= tolerance and not failed),
        "nodes_failed": failed,
        "hls_nodes": sum(n.level == "cppsim" for n in result.nodes),
        "rtl_verilator_nodes": sum(n.level == "rtl-verilator" for n in result.nodes),
        "compiled": result.compile.n_compiled,
        "cached": result.compile.n_cached,
        "jobs": result.compile.jobs,
        "seconds": result.seconds,
        "notes": result.notes,
    }


def cppsim_failure(sim: dict, out_dir: Path) -> str:
    """The error message of a C++ simulation above tolerance."""
    return (
        f"C++ simulation of the HLS kernels differs above tolerance {sim['tolerance']:g} on "
        f"{sim['windows']} window(s): max |diff| vs Python {sim['max_abs_diff_vs_python']:.3g}, "
        f"vs QONNX {sim['max_abs_diff_vs_qonnx']:.3g}"
        + (f", nodes {', '.join(sim['nodes_failed'])}" if sim.get("nodes_failed") else "")
        + "; per-node differences in "
        f"{out_dir / 'summary.json'} ('verification')."
    )


def write_summary(out_dir: Path, summary: dict) -> None:
    """Write ``out_dir/summary.json`` atomically (a temporary file, then a rename)."""
    path = Path(out_dir) / "summary.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(summary, indent=2, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _noting_interrupts(record: dict):
    """Note a Ctrl-C (SIGINT) in ``record["interrupted"]`` while FINN's builder runs: it
    catches KeyboardInterrupt and returns -1, and :func:`build` raises it again. The signal
    still interrupts as before (the previous handler runs); in a thread other than the main
    one, where signal handlers cannot be set, the steps' own record of it is used."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous == signal.SIG_IGN:
        yield
        return

    def handler(signum, frame):
        try:
            if callable(previous):
                previous(signum, frame)  # Python's default raises KeyboardInterrupt
            else:
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            record["interrupted"] = True
            raise

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------------- build
def build(
    model_path: str | Path,
    out_dir: str | Path,
    board: str = "Pynq-Z1",
    target_fps: int | None = None,
    folding_config: str | Path | None = None,
    emulation_inputs: np.ndarray | None = None,
    expected_outputs: np.ndarray | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    clock_ns: float = 10.0,
    full: bool | None = None,
    save_intermediate_models: bool = True,
    raise_on_mismatch: bool = True,
    quiet: bool = False,
    cppsim: int = 0,
    hls_dir: str | Path | None = None,
    jobs: int = 2,
    prefer_hls: bool = False,
    max_util: float | None = None,
    budget: str | None = None,
    pareto: bool = False,
) -> dict:
    """Build ``model_path`` for ``board`` (preset name or FPGA part); return the summary.

    Args:
        model_path: QONNX model exported by ``brevitas.export.export_qonnx``.
        out_dir: output directory (FINN reports in ``report/``, ``summary.json``).
        board: a preset of :mod:`finn_flow.boards` or an FPGA part name.
        target_fps: target inferences/s for auto-folding (a warning if unreachable).
        folding_config: FINN JSON folding config (node name -> attributes), applied after
            auto-folding; every node name must exist in the specialised dataflow graph.
        emulation_inputs: samples run through FINN's python emulation of the HW graph.
        expected_outputs: reference outputs; computed with qonnx from ``model_path`` if None.
        tolerance: max abs difference allowed between emulation and reference.
        clock_ns: target clock period.
        full: run the full Vivado flow; default: only when ``XILINX_VIVADO`` is set.
        save_intermediate_models: keep FINN's intermediate ONNX models (needed for emulation,
            which forces it on).
        raise_on_mismatch: raise EmulationMismatchError above ``tolerance`` (after writing
            ``summary.json``); with False the caller checks ``summary["emulation"]["passed"]``
            and finds the emulated outputs in ``summary["emulation_outputs"]`` (not saved to
            JSON).
        quiet: keep FINN's console output (step progress) out of the terminal; it still goes
            to ``out_dir/build_dataflow.log``.
        cppsim: also compile every ``*_hls`` node with g++ and run the first ``cppsim``
            emulation inputs through the C++ kernels (:mod:`finn_flow.cppsim`), bit for bit
            against FINN's Python execution and the reference; ``summary["cppsim"]``. The
            mismatch rules of the emulation apply.
        hls_dir: folder with ``finn-hlslib/`` and ``attention-hlslib/`` for cppsim (default
            ``$APQ_HLS_DIR``, else finn's deps folder).
        jobs: parallel C++ compiles.
        prefer_hls: use the HLS variant of every node that has one (finn-plus prefers RTL
            for thresholds and matrix units), so that cppsim covers the whole design.
        max_util: without ``target_fps``/``folding_config``, fold for the fastest design whose
            estimate stays within this share of the board's LUT, BRAM, URAM and DSP (default
            0.8; :mod:`finn_flow.fit`). ``summary["fit"]`` says what was chosen.
        budget: explicit limits instead (``"lut=8000,dsp=20,bram18=20"``); needed for a part
            whose capacities are unknown.
        pareto: also write ``pareto.csv`` and ``pareto.png`` (every candidate folding).

    ``summary["verification"]`` lists every hardware node with the deepest level it was
    checked at (:mod:`finn_flow.verification`).

    Raises:
        FinnFlowError: bad model/board/folding file/unmappable operator (names op and node).
        EmulationMismatchError: emulation differs from the reference beyond ``tolerance``.
    """
    t0 = time.time()
    if not isinstance(clock_ns, int | float) or not 0 < float(clock_ns) < 1e6:
        raise FinnFlowError(f"clock_ns must be a positive clock period in ns, got {clock_ns!r}.")
    target = resolve_target(board)
    model_path = Path(model_path).absolute()
    load_qonnx_model(model_path)
    out_dir = Path(out_dir).absolute()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FinnFlowError(
            f"cannot create the output folder {out_dir}: a file is in the way; choose another "
            "output folder (--out)"
        ) from None
    for name in SUMMARY_FILES:
        (out_dir / name).unlink(missing_ok=True)
    if full is None:
        full = vivado_available()
    if full and not vivado_available():
        raise FinnFlowError("The full flow needs the Xilinx tools: XILINX_VIVADO is not set.")
    if folding_config is not None:
        folding_config = Path(folding_config).absolute()
        if not folding_config.is_file():
            raise FinnFlowError(f"Folding config not found: {folding_config}")
    if target_fps is not None and (not isinstance(target_fps, int | float) or target_fps <= 0):
        raise FinnFlowError(f"target_fps must be a positive number, got {target_fps!r}.")

    fit_budget = None
    if target_fps is None and folding_config is None:
        from finn_flow.fit import DEFAULT_MAX_UTIL, Budget

        if budget is not None:
            fit_budget = Budget.parse(budget)
        elif any(v is not None for v in target.capacities().values()):
            fit_budget = Budget.from_capacities(
                target.capacities(), DEFAULT_MAX_UTIL if max_util is None else max_util, target.name
            )
    elif budget is not None or max_util is not None:
        raise FinnFlowError("--budget/--max-util choose the folding: drop --target-fps/--folding.")
    if pareto and fit_budget is None:
        raise FinnFlowError("--pareto needs a budget (a board with known capacities, or --budget).")
    if cppsim and emulation_inputs is None:
        raise FinnFlowError("cppsim needs emulation inputs (the windows to simulate).")
    cppsim_toolchain = None
    if cppsim:
        from finn_flow.hls_toolchain import HlsToolchain

        cppsim_toolchain = HlsToolchain.resolve(hls_dir)  # fails early, before the build
    emulation = None
    if emulation_inputs is not None:
        from finn_flow.emulation import qonnx_reference

        inputs = np.asarray(emulation_inputs, dtype=np.float32)
        if expected_outputs is None:
            expected = qonnx_reference(model_path, inputs)
        else:
            expected = np.asarray(expected_outputs, dtype=np.float32)
        emulation = (inputs, expected, float(tolerance))

    record: dict = {"warnings": [], "raise_on_mismatch": False, "budget": fit_budget}
    with finn_session(out_dir / "finn_work"):
        from finn.builder.build_dataflow import build_dataflow_cfg
        from finn.builder.build_dataflow_config import (
            DataflowBuildConfig,
            DataflowOutputType,
            ShellFlowType,
        )

        from finn_flow.steps import build_steps, step_names

        steps = build_steps(full, record, emulation, prefer_hls=prefer_hls)
        record["steps"] = step_names(steps)
        outputs = [DataflowOutputType.ESTIMATE_REPORTS]
        if full:
            outputs += [DataflowOutputType.STITCHED_IP, DataflowOutputType.OOC_SYNTH]
            if target.board is not None:
                outputs += [
                    DataflowOutputType.RTLSIM_PERFORMANCE,
                    DataflowOutputType.BITFILE,
                    DataflowOutputType.PYNQ_DRIVER,
                    DataflowOutputType.DEPLOYMENT_PACKAGE,
                ]
        cfg = DataflowBuildConfig(
            output_dir=str(out_dir),
            board=target.board,
            fpga_part=target.part,
            shell_flow_type=ShellFlowType.VIVADO_ZYNQ if target.board else None,
            synth_clk_period_ns=float(clock_ns),
            target_fps=int(target_fps) if target_fps is not None else None,
            folding_config_file=folding_config,
            generate_outputs=outputs,
            steps=steps,
            save_intermediate_models=save_intermediate_models or emulation is not None,
            standalone_thresholds=True,
            minimize_bit_width=True,
            auto_fifo_depths=True,
            verbose=False,
        )
        try:
            with contextlib.ExitStack() as stack:
                if quiet:
                    null = stack.enter_context(open(os.devnull, "w"))
                    stack.enter_context(contextlib.redirect_stdout(null))
                    stack.enter_context(contextlib.redirect_stderr(null))
                stack.enter_context(_noting_interrupts(record))
                exit_code = build_dataflow_cfg(str(model_path), cfg)
        except FinnFlowError:
            raise
        except Exception as exc:  # re-raised by FINN under pytest
            record.setdefault("error", ("build_dataflow_cfg", exc))
            exit_code = -1
        if exit_code != 0:
            step, exc = record.get("error", ("unknown", None))
            if isinstance(exc, FinnFlowError):
                raise exc
            # FINN's builder turns Ctrl-C into exit code -1: it stays a Ctrl-C
            if isinstance(exc, BaseException) and not isinstance(exc, Exception):
                raise exc  # in a step (steps.guard_step recorded it)
            if record.get("interrupted"):
                raise KeyboardInterrupt  # between steps (_noting_interrupts)
            raise FinnFlowError(
                f"FINN build failed in {step}: {type(exc).__name__}: {exc} "
                f"(log: {out_dir / 'build_dataflow.log'})"
            ) from exc
        if "target_fps_warning" in record:
            record["warnings"].append(record["target_fps_warning"])
        summary = _summarise(out_dir, target, record, cfg, t0, full)
        summary["fit"] = record.get("fit")
        if pareto:
            from finn_flow.fit import write_pareto

            summary["pareto"] = write_pareto(record["fit_candidates"], fit_budget, target, out_dir)
    # warn only after the session: FINN's logging setup captures warnings while it lasts
    for message in summary["warnings"]:
        warnings.warn(message, FinnFlowWarning, stacklevel=2)
    result = None
    if cppsim:
        from finn_flow.cppsim import simulate_cppsim

        inputs, expected, _ = emulation
        n = min(int(cppsim), len(inputs))
        result = simulate_cppsim(
            out_dir,
            inputs[:n],
            expected=expected[:n],
            toolchain=cppsim_toolchain,
            jobs=jobs,
            progress=not quiet,
        )
        summary["cppsim"] = _cppsim_summary(result, tolerance)
    from finn_flow.verification import verification_table

    summary["verification"] = verification_table(out_dir, summary["emulation"], result)
    write_summary(out_dir, summary)
    emu, sim = summary["emulation"], summary.get("cppsim")
    if emu is not None and not emu["passed"] and raise_on_mismatch:
        raise EmulationMismatchError(
            f"FINN hardware-graph emulation differs from the reference: max abs difference "
            f"{emu['max_abs_diff']:.3g} > tolerance {emu['tolerance']:.3g} over "
            f"{emu['n_inputs']} input(s) (details: {out_dir / 'summary.json'})."
        )
    if sim is not None and not sim["passed"] and raise_on_mismatch:
        raise EmulationMismatchError(cppsim_failure(sim, out_dir))
    if "emulation_outputs" in record:
        summary["emulation_outputs"] = record["emulation_outputs"]
    return summary


if __name__ == "__main__":  # pragma: no cover - convenience entry point
    import sys

    s = build(sys.argv[1], sys.argv[2], *(sys.argv[3:4] or []))
    print(json.dumps({k: s[k] for k in ("LUT", "BRAM_18K", "DSP", "estimated_throughput_fps")}))
    os._exit(0)
