"""Accelerators that fit: the fastest folding within a budget, side by side (FINN estimates).

Prints one table for the targets of the "fit and fly" issue, each row built here with
`finn_flow.build.build` (estimate-only flow, FINN's cycle and resource estimates plus the fitted
attention model; nothing here is measured on a board):

* the quickstart model (``runs/quickstart``, from ``make run``) on Pynq-Z1, default 80 % cap;
* the same model under an XC7S15-class budget (8,000 LUT, 20 DSP, 10 BRAM36);
* a TFC-shaped MLP (784-64-64-64-10, 4-bit weights and activations, the project's APQ
  quantisers) on Pynq-Z1, calibrated on random data (resources and throughput do not depend
  on the trained values beyond the chosen zero points);
* the byo example's 1D-conv model (built and emulated against QONNX on 8 inputs).

Usage::

    .venv/bin/python benchmarks/bench_fit.py [--run runs/quickstart] [--out runs/bench_fit]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from finn_flow.build import build

ROOT = Path(__file__).resolve().parents[1]


def tfc_mlp(path: Path) -> Path:
    """784-64-64-64-10 with 4-bit APQ weights/activations, exported to QONNX."""
    import brevitas.nn as qnn

    from brevitas_apq.export import export_qonnx_model
    from brevitas_apq.quant import APQActQuant, APQWeightQuant, UnsignedActQuant

    torch.manual_seed(0)
    layers = [qnn.QuantIdentity(act_quant=APQActQuant, bit_width=4, return_quant_tensor=False)]
    sizes = [784, 64, 64, 64]
    for a, b in itertools.pairwise(sizes):
        layers += [
            qnn.QuantLinear(a, b, bias=False, weight_quant=APQWeightQuant, weight_bit_width=4),
            qnn.QuantReLU(act_quant=UnsignedActQuant, bit_width=4, return_quant_tensor=False),
        ]
    layers.append(
        qnn.QuantLinear(64, 10, bias=False, weight_quant=APQWeightQuant, weight_bit_width=4)
    )
    model = torch.nn.Sequential(*layers)
    model.train()
    with torch.no_grad():
        for _ in range(8):  # calibrate the runtime statistics and the APQ decisions
            model(torch.rand(64, 784))
    model.eval()
    return export_qonnx_model(model, torch.rand(1, 784), path)


def byo_model(out: Path) -> Path:
    sys.path.insert(0, str(ROOT / "examples"))
    import byo_brevitas_model

    byo_brevitas_model.main(["--quick", "--out", str(out)])
    return out / "byo_model.onnx"


def row(name: str, model: Path, out: Path, **kwargs) -> dict:
    t0 = time.perf_counter()
    summary = build(model, out, quiet=True, **kwargs)
    fit = summary.get("fit") or {}
    emu = summary.get("emulation")
    return {
        "target": name,
        "fits": "yes" if fit.get("fits") else "NO",
        "inferences/s": summary["estimated_throughput_fps"],
        "LUT": summary["LUT"],
        "DSP": summary["DSP"],
        "BRAM_18K": summary["BRAM_18K"],
        "binding": fit.get("binding_resource") or "-",
        "emulation": "-" if emu is None else f"{emu['max_abs_diff']:.1e} ({emu['n_inputs']})",
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "quickstart")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_fit")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    quick = args.run / "model.onnx"
    if quick.is_file():
        rows.append(row("quickstart, Pynq-Z1 80 %", quick, args.out / "qs_pynq"))
        rows.append(
            row(
                "quickstart, XC7S15 budget",
                quick,
                args.out / "qs_s15",
                budget="lut=8000,dsp=20,bram36=10",
            )
        )
    else:
        print(f"{quick} missing (run `make run` first): quickstart rows skipped")
    rows.append(row("TFC MLP 4-bit APQ, Pynq-Z1", tfc_mlp(args.out / "tfc.onnx"), args.out / "tfc"))
    byo = byo_model(args.out / "byo")
    x = np.random.default_rng(0).uniform(0, 1, size=(8, 1, 24, 3)).astype(np.float32)
    rows.append(row("byo 1D conv, Pynq-Z1", byo, args.out / "byo_build", emulation_inputs=x))
    table = Table(
        title="Fastest folding within the budget (FINN estimates + fitted attention model)"
    )
    for key in rows[0]:
        table.add_column(key, justify="left" if key in ("target", "binding") else "right")
    for r in rows:
        table.add_row(
            *(f"{v:,.0f}" if isinstance(v, float) and k != "seconds" else
              f"{v:.1f}" if k == "seconds" else str(v) for k, v in r.items())
        )  # fmt: skip
    Console(width=160).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
