"""Training-step time of a QuantLinear stack with APQ against the same stack with SQ and AQ.

"stock" is Brevitas's own Int8WeightPerTensorFloat / Int8ActPerTensorFloat stack at the same bit
width, for the cost of our quantiser core against Brevitas's. Measured side by side in one run
(interleaved rounds, median of rounds), printed as ratios.
Target: APQ / SQ <= 1.10. Run: ``.venv/bin/python benchmarks/bench_quantizers.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import brevitas.nn as qnn
import torch
from brevitas.quant import (
    Int8ActPerTensorFloat,
    Int8BiasPerTensorFloatInternalScaling,
    Int8WeightPerTensorFloat,
)
from torch import nn

from brevitas_apq.quant import SCHEME_QUANTIZERS

SCHEMES = {
    **{name.upper(): quants for name, quants in SCHEME_QUANTIZERS.items()},
    # Brevitas's stock symmetric quantisers, for the cost of our core against Brevitas's own.
    "stock": (
        Int8WeightPerTensorFloat,
        Int8BiasPerTensorFloatInternalScaling,
        Int8ActPerTensorFloat,
    ),
}


def make_stack(scheme: str, width: int, depth: int, bits: int) -> nn.Module:
    weight, bias, act = SCHEMES[scheme]
    layers: list[nn.Module] = [qnn.QuantIdentity(act_quant=act, bit_width=bits)]
    for _ in range(depth):
        layers.append(
            qnn.QuantLinear(
                width,
                width,
                bias=True,
                weight_quant=weight,
                weight_bit_width=bits,
                bias_quant=bias,
                output_quant=act,
                output_bit_width=bits,
            )
        )
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def step_time(model: nn.Module, opt: torch.optim.Optimizer, x, y, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    x = torch.randn(args.batch, args.width)
    y = torch.randn(args.batch, args.width)
    models = {s: make_stack(s, args.width, args.depth, args.bits) for s in SCHEMES}
    opts = {s: torch.optim.Adam(m.parameters(), lr=1e-3) for s, m in models.items()}
    for s in SCHEMES:  # warm-up
        step_time(models[s], opts[s], x, y, 5)
    times: dict[str, list[float]] = {s: [] for s in SCHEMES}
    for _ in range(args.rounds):
        for s in SCHEMES:
            times[s].append(step_time(models[s], opts[s], x, y, args.steps))
    med = {s: statistics.median(t) for s, t in times.items()}
    print(
        f"QuantLinear stack: {args.depth} x {args.width}x{args.width}, batch {args.batch}, "
        f"{args.bits} bits, {args.rounds} rounds x {args.steps} steps, median per step"
    )
    for s in SCHEMES:
        print(f"  {s:4s} {med[s] * 1e3:8.3f} ms/step")
    print(f"  APQ/SQ = {med['APQ'] / med['SQ']:.3f}   (target <= 1.10)")
    print(f"  APQ/AQ = {med['APQ'] / med['AQ']:.3f}")
    print(f"  AQ/SQ  = {med['AQ'] / med['SQ']:.3f}")
    print(f"  APQ/stock Brevitas Int8*PerTensorFloat = {med['APQ'] / med['stock']:.3f}")


if __name__ == "__main__":
    main()
