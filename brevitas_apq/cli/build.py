"""``apq build`` and ``apq hls-fetch``: the FINN build of a model (``brevitas_apq.finn_bridge``,
``finn_flow``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brevitas_apq import report
from brevitas_apq.cli.common import (
    app,
    clean_errors,
    finite_at_least_zero,
    finite_positive,
    option_error,
)
from brevitas_apq.errors import RunError
from brevitas_apq.report import console, err_console

# --- apq build (FINN, brevitas_apq.finn_bridge) ---------------------------------------------


@app.command("build")
@clean_errors
def build_cmd(
    model: Annotated[
        Path,
        typer.Argument(help="A QONNX file (apq export) or a finished run directory."),
    ],
    board: Annotated[
        str,
        typer.Option(
            "--board",
            "-b",
            help="Pynq-Z1, Pynq-Z2, ZCU104, KV260_SOM, Ultra96-V2 or an FPGA part name.",
        ),
    ] = "Pynq-Z1",
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output directory (default RUN_DIR/finn or MODEL_finn)."),
    ] = None,
    target_fps: Annotated[
        int | None,
        typer.Option("--target-fps", min=1, help="Target inferences/s (auto-folding)."),
    ] = None,
    folding: Annotated[
        Path | None, typer.Option("--folding", help="FINN folding config JSON.")
    ] = None,
    run: Annotated[
        Path | None,
        typer.Option("--run", help="Run directory supplying test windows and the Brevitas model."),
    ] = None,
    windows: Annotated[
        int,
        typer.Option(min=0, help="Test windows to emulate through FINN's HW graph (0: none)."),
    ] = 32,
    tolerance: Annotated[
        float, typer.Option(callback=finite_at_least_zero, help="Max abs emulation difference.")
    ] = 1e-4,
    clock_ns: Annotated[
        float,
        typer.Option("--clock-ns", callback=finite_positive, help="Target clock period (ns)."),
    ] = 10.0,
    inputs: Annotated[
        Path | None,
        typer.Option(
            "--inputs",
            help="A .npy of samples (N, *input shape) for a model without a run directory.",
        ),
    ] = None,
    cppsim: Annotated[
        int,
        typer.Option(
            "--cppsim",
            help="Also compile every HLS node with g++ and run the first N windows through "
            "the C++ kernels, bit for bit against Python and QONNX (0: off).",
            min=0,
        ),
    ] = 0,
    hls_dir: Annotated[
        Path | None,
        typer.Option(
            "--hls-dir",
            help="Folder with finn-hlslib/ and attention-hlslib/ for --cppsim (default: "
            "$APQ_HLS_DIR, else finn's deps folder).",
        ),
    ] = None,
    jobs: Annotated[int, typer.Option(min=1, help="Parallel C++ compiles for --cppsim.")] = 2,
    max_util: Annotated[
        float | None,
        typer.Option(
            "--max-util",
            help="Without --target-fps/--folding: the fastest folding whose estimate uses at "
            "most this share of the board's LUT/BRAM/URAM/DSP (default 0.8).",
        ),
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option(
            "--budget",
            help="Explicit limits instead of --max-util, e.g. lut=8000,dsp=20,bram18=20 "
            "(bram36=N counts two BRAM_18K).",
        ),
    ] = None,
    pareto: Annotated[
        bool,
        typer.Option("--pareto", help="Write OUT/pareto.csv and pareto.png (all candidates)."),
    ] = False,
    prefer_hls: Annotated[
        bool,
        typer.Option(
            "--prefer-hls",
            help="Use HLS variants wherever finn-plus has one (it prefers RTL for thresholds "
            "and matrix units), so --cppsim checks the whole design in C++.",
        ),
    ] = False,
) -> None:
    """Build a model with FINN for a board: resource/throughput estimate plus emulation.

    By default the fastest folding whose estimate fits 80 % of the board (--max-util,
    --budget; exit 1 if none fits); --target-fps or --folding choose it instead. Without
    Xilinx tools (no XILINX_VIVADO) the flow stops after HLS/RTL code generation; with them it
    goes on to the bitfile. Writes FINN's reports and OUT/summary.json. With --cppsim N the
    HLS kernels are compiled (g++, cached) and N windows simulated in C++.
    """
    import warnings

    from brevitas_apq.finn_bridge import build_model, run_onnx
    from brevitas_apq.io import read_json
    from finn_flow.errors import EmulationMismatchError

    if target_fps is not None and folding is not None:
        raise option_error("--target-fps and --folding exclude each other: give one of them")
    if max_util is not None and not 0 < max_util <= 1:
        raise option_error(f"--max-util {max_util}: expected a share in (0, 1], e.g. 0.8")
    if cppsim > windows:
        raise option_error(
            f"--cppsim {cppsim} > --windows {windows}: simulate at most the "
            "emulated windows (raise --windows)"
        )
    if inputs is not None and model.is_dir():
        raise option_error(f"{model} is a run directory (it supplies the inputs): drop --inputs")
    if inputs is not None and run is not None:
        raise option_error("--inputs and --run exclude each other: give one of them")
    if out is not None and out.exists() and not out.is_dir():
        raise option_error(f"--out {out} is a file: give a folder for FINN's outputs")
    if model.is_dir():
        if run is not None and run.resolve() != model.resolve():
            raise option_error(f"{model} is a run directory: drop --run or pass the .onnx file")
        run = model
        if not any((model / name).exists() for name in ("model.onnx", "model.pt", "metrics.json")):
            raise RunError(
                f"{model} is a directory without model.onnx or model.pt: pass a QONNX file "
                "or a finished `apq train` run directory"
            )
        onnx_path = run_onnx(model, log=lambda line: console.print(line, highlight=False))
        out = out or model / "finn"
    else:
        onnx_path = model
        out = out or model.with_name(model.stem + "_finn")
    samples = None
    if inputs is not None:
        from brevitas_apq.finn_bridge import load_inputs

        samples = load_inputs(inputs, onnx_path)
    console.print(f"FINN build of {onnx_path} for {board} -> {out}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            summary = build_model(
                onnx_path,
                out,
                board=board,
                run_dir=run,
                windows=windows,
                target_fps=target_fps,
                folding=folding,
                tolerance=tolerance,
                clock_ns=clock_ns,
                inputs=samples,
                cppsim=cppsim,
                hls_dir=hls_dir,
                jobs=jobs,
                prefer_hls=prefer_hls,
                max_util=max_util,
                budget=budget,
                pareto=pareto,
            )
            failure = None
        except EmulationMismatchError as err:
            summary, failure = read_json(out / "summary.json"), err
    report.print_finn_warnings(caught)
    console.print(report.summary_table(summary))
    console.print(f"reports in {out / 'report'}, summary in {out / 'summary.json'}")
    fit = summary.get("fit")
    if failure is None and fit is not None and not fit["fits"]:
        failure = (
            f"no folding fits {fit['budget_source']} (estimates); the smallest design is "
            f"summarised above, binding resource {fit['binding_resource']}"
        )
    if failure is not None:
        err_console.print(f"[bold red]error:[/] {failure}")
        raise typer.Exit(1)


@app.command("hls-fetch")
@clean_errors
def hls_fetch(
    dest: Annotated[Path, typer.Argument(help="Folder to clone the HLS sources into.")],
) -> None:
    """Clone the HLS C++ sources `apq build --cppsim` compiles against, at pinned commits.

    finn-hlslib and attention-hlslib at the commits finn-plus pins, and Xilinx's open-source
    ap_int headers (git and network needed). Then: export APQ_HLS_DIR=DEST (or --hls-dir DEST).
    """
    from finn_flow.hls_sources import fetch, pinned_sources

    pins = pinned_sources()
    for name, (url, commit) in pins.items():
        console.print(f"{name}: {url} @ {commit[:12]}")
    fetched = fetch(dest, pins)
    console.print(f"HLS sources in {dest.absolute()} ({', '.join(fetched)})")
    console.print(f"use them with: export APQ_HLS_DIR={dest.absolute()}")
