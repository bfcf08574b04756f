"""Bring your own Brevitas model: APQ quantisers and a bit plan in a model you wrote yourself.

The model here is NOT the project's Transformer but a small 1D-convolutional regressor written
with plain ``brevitas.nn`` layers (``QuantIdentity``, ``QuantConv1d``, ``QuantReLU``,
``QuantLinear``). The SQ / AQ / APQ quantisers of ``brevitas_apq.quant`` are ordinary Brevitas
injectors, so they go into any such layer in two ways, both shown below:

* from a bit plan: ``BitPlan.from_presets(bits, schemes)`` describes the Transformer's
  quantisers (linear layers ``L1``..``L8``, activations ``input``, ``relu``, ``pool``, ...);
  map your layers onto those names and pass ``plan.linear_kwargs("L1")`` to a
  ``QuantLinear``/``QuantConv1d`` and ``plan.act_kwargs("relu")`` to a ``QuantReLU``;
* directly: ``weight_quant=SQWeightQuant, weight_bit_width=4, output_quant=APQActQuant, ...``.

Mapping used here (with ``mixed-4-8`` L8 gets 8 bits, the others 4):

    input  -> QuantIdentity on the raw window
    L1     -> the first convolution (the second one gets its injectors directly)
    relu   -> the first QuantReLU (the second one: UnsignedActQuant directly)
    pool   -> QuantIdentity before the head (L8's input, as in the Transformer)
    L8     -> the regression head

It then trains briefly on synthetic data (every optimizer step ends an APQ mini-batch, at which
each APQ quantiser measures its range's symmetry and picks SQ or AQ), prints the decisions
(``scheme_decisions``), exports to QONNX (``export_qonnx_model``) and checks the exported graph
against the Brevitas model with qonnx's executor (``run_qonnx``, max abs diff).

Run::

    python examples/byo_brevitas_model.py --quick            # ~5 s
    python examples/byo_brevitas_model.py --bits all-8 --schemes all-apq --steps 400
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import brevitas.nn as qnn
import numpy as np
import torch
from torch import nn

from brevitas_apq.export import export_qonnx_model, run_qonnx
from brevitas_apq.plans import BIT_PRESETS, SCHEME_PRESETS, BitPlan
from brevitas_apq.quant import (
    APQActQuant,
    SQBiasQuant,
    SQWeightQuant,
    UnsignedActQuant,
    scheme_decisions,
)

# Brevitas's optional CUDA kernel, irrelevant here; it warns when the exporter is imported.
warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")


class ConvRegressor(nn.Module):
    """A user's model: two quantised 1D convolutions and a linear head on their flattened output.

    Input ``(batch, window, features)``, output ``(batch,)``: a one-step-ahead forecast.
    """

    def __init__(self, n_features: int, window: int, plan: BitPlan, channels: int = 8) -> None:
        super().__init__()
        threshold = plan.activations["input"].threshold
        self.inp = qnn.QuantIdentity(**plan.act_kwargs("input"))
        self.conv1 = qnn.QuantConv1d(
            n_features, channels, 3, padding=1, bias=True, **plan.linear_kwargs("L1")
        )
        self.relu1 = qnn.QuantReLU(**plan.act_kwargs("relu"))
        # The same kind of configuration written out with the injectors themselves.
        self.conv2 = qnn.QuantConv1d(
            channels,
            channels,
            3,
            padding=1,
            bias=True,
            weight_quant=SQWeightQuant,
            weight_bit_width=4,
            bias_quant=SQBiasQuant,
            bias_bit_width=8,
            output_quant=APQActQuant,
            output_bit_width=8,
            output_symmetry_threshold=threshold,
            return_quant_tensor=False,
        )
        self.relu2 = qnn.QuantReLU(
            act_quant=UnsignedActQuant, bit_width=8, return_quant_tensor=False
        )
        self.pool = qnn.QuantIdentity(**plan.act_kwargs("pool"))
        self.head = qnn.QuantLinear(channels * window, 1, bias=True, **plan.linear_kwargs("L8"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x).transpose(1, 2)  # (B, F, T) for Conv1d
        x = self.relu1(self.conv1(x))
        x = self.relu2(self.conv2(x))
        x = self.pool(x.flatten(1))  # (B, C*T): keeps where in the window a feature is
        return self.head(x).squeeze(-1)


def synthetic_windows(n: int, window: int, n_features: int, seed: int = 0):
    """Windows of noisy sinusoids (one offset channel) and the next value of channel 0."""
    rng = np.random.default_rng(seed)
    t = np.arange(n + window + 1)[:, None]
    periods = rng.uniform(8, 40, size=n_features)
    series = np.sin(2 * np.pi * t / periods) + 0.1 * rng.standard_normal((len(t), n_features))
    series[:, -1] += 1.5  # a one-sided channel, so that APQ has something to decide
    X = np.stack([series[i : i + window] for i in range(n)]).astype(np.float32)
    y = series[window : window + n, 0].astype(np.float32)
    return torch.from_numpy(X), torch.from_numpy(y)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: fewer steps and data")
    parser.add_argument("--bits", default="mixed-4-8", choices=BIT_PRESETS)
    parser.add_argument("--schemes", default="sq-apq", choices=SCHEME_PRESETS)
    parser.add_argument("--steps", type=int, help="optimizer steps (default 300, quick 40)")
    parser.add_argument("--out", type=Path, default=Path("runs/byo_example"), help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    steps = args.steps or (40 if args.quick else 300)
    n_check = 8 if args.quick else 64

    torch.manual_seed(args.seed)
    window, n_features = 24, 3
    X, y = synthetic_windows(256 if args.quick else 2048, window, n_features, args.seed)
    n_train = int(0.8 * len(X))
    plan = BitPlan.from_presets(args.bits, args.schemes)
    model = ConvRegressor(n_features, window, plan)

    # Plain PyTorch training: each optimizer.step() ends an APQ mini-batch by itself.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, n_train, (32,), generator=gen)
        loss = nn.functional.mse_loss(model(X[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    with torch.no_grad():
        pred = model(X[n_train:])
    rmse = float(torch.sqrt(torch.mean((pred - y[n_train:]) ** 2)))
    persistence = float(torch.sqrt(torch.mean((X[n_train:, -1, 0] - y[n_train:]) ** 2)))
    print(f"plan {plan.name}, {steps} steps: test RMSE {rmse:.4f} (persistence {persistence:.4f})")
    print("scheme decisions (SQ: zero point 0, AQ: with zero point):")
    for name, scheme in scheme_decisions(model).items():
        print(f"  {name:<28} {scheme}")

    path = export_qonnx_model(model, X[:1], args.out / "byo_model.onnx")
    check = X[n_train : n_train + n_check]
    with torch.no_grad():
        expected = model(check).numpy()
    got = run_qonnx(path, check).reshape(-1)
    max_abs_diff = float(np.abs(got - expected).max())
    print(
        f"QONNX export: {path}; max abs diff vs Brevitas on {len(check)} windows: "
        f"{max_abs_diff:.3g}"
    )
    return {"rmse": rmse, "persistence_rmse": persistence, "max_abs_diff": max_abs_diff}


if __name__ == "__main__":
    main()
