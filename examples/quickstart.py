"""Quick start in Python: train, export, build for an FPGA, emulate.

The same pipeline as ``apq quickstart``, written against the library so you can change any
step: float training then QAT with the paper's proposal (``mixed-4-8`` bits, ``sq-apq``
schemes) on the embedded Beijing PM2.5 data, QONNX export checked against Brevitas on real test
windows, and a FINN build (estimate flow without Xilinx tools, the full flow with them) with
emulation of the hardware graph on test windows.

Run::

    python examples/quickstart.py --out runs/example            # the full default budget
    python examples/quickstart.py --out runs/example --quick    # a minute: tiny budget
"""

from __future__ import annotations

import argparse
from pathlib import Path

from brevitas_apq.export import export_run
from brevitas_apq.finn_bridge import build_run
from brevitas_apq.plans import BitPlan
from brevitas_apq.rundir import CHECKPOINT
from brevitas_apq.training import TrainConfig, train_run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/example"))
    parser.add_argument("--board", default="Pynq-Z1")
    parser.add_argument("--quick", action="store_true", help="tiny training budget")
    args = parser.parse_args(argv)

    budget = (
        TrainConfig(float_epochs=2, qat_epochs=1, max_batches=30)
        if args.quick
        else TrainConfig(float_epochs=30, qat_epochs=20)
    )
    metrics = train_run(
        args.out,
        plan=BitPlan.from_presets("mixed-4-8", "sq-apq"),
        train=budget,
        resume=(args.out / CHECKPOINT).exists(),
        progress=not args.quick,
    )
    print(
        f"test RMSE: QAT {metrics['rmse']:.2f}, float {metrics['float_rmse']:.2f}, "
        f"persistence {metrics['persistence_rmse']:.2f} (µg/m³)"
    )
    export = export_run(args.out, n_windows=32 if args.quick else 256)
    print(f"QONNX vs Brevitas: max |diff| {export['max_abs_diff']:.2e}")
    summary = build_run(args.out, board=args.board, windows=8 if args.quick else 32)
    print(
        f"FINN on {summary['board']}: LUT {summary['LUT']:,}, BRAM_18K {summary['BRAM_18K']}, "
        f"DSP {summary['DSP']}, {summary['estimated_throughput_fps']:,.0f} inferences/s"
    )
    return {"metrics": metrics, "export": export, "finn": summary}


if __name__ == "__main__":
    main()
