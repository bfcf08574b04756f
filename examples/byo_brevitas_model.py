"""Bring your own model: quantise a float PyTorch model by its module names with a bit plan.

The model here is NOT the project's Transformer but a user's float model written with plain
``torch.nn`` (two 1D convolutions and an MLP head). ``brevitas_apq.quantize(model, plan)`` turns
it into a Brevitas model with this project's SQ / AQ / APQ quantisers, following a
**module-name plan**: module names or glob patterns (``conv*``, ``head.*``) with the quantisers
of each (weight, bias, input, output for convolutions and linear layers; ``act`` for ReLUs and
``nn.Identity`` placeholders), written in YAML (``PLAN_YAML`` below) or Python
(``brevitas_apq.module_plans.ModulePlan``). The exact name wins over a glob; after a ReLU the
activation grid is unsigned (zero point 0).

It then trains briefly on synthetic data (every optimizer step ends an APQ mini-batch, at which
each APQ quantiser measures its range's symmetry and picks SQ or AQ), prints the decisions
(``scheme_decisions``) and the cost model's count (``operation_counts``: integer and zero-point
operations, derived from the model itself), exports to QONNX (``export_qonnx_model``) and checks
the exported graph against the Brevitas model with qonnx's executor (``run_qonnx``, max abs
diff; 0 means exact).

Run::

    python examples/byo_brevitas_model.py --quick            # ~10 s
    python examples/byo_brevitas_model.py --plan my_plan.yaml --steps 400
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

import brevitas_apq
from brevitas_apq.analysis import model_size_bits, operation_counts
from brevitas_apq.export import export_qonnx_model, run_qonnx
from brevitas_apq.module_plans import ModulePlan
from brevitas_apq.quant import scheme_decisions

# Brevitas's optional CUDA kernel, irrelevant here; it warns when the exporter is imported.
warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")

#: The example's plan: 4-bit convolution weights, APQ activations, 8 bits elsewhere.
PLAN_YAML = """
name: byo-conv-mlp
defaults: {scheme: sq, threshold: 0.1}
modules:
  inp: {act: {bits: 8, scheme: apq}}               # the raw window
  "conv*": {weight: 4, bias: 8, output: {bits: 8, scheme: apq}}
  "relu*": {act: 8}                                # after a ReLU: unsigned, zero point 0
  flat: {act: {bits: 8, scheme: apq}}              # the head's input
  "head.*": {weight: 8, bias: 8, act: 8}           # the MLP head: linear layers and its ReLU
  head.2: {weight: 8, bias: 8, output: {bits: 8, scheme: apq}}   # exact name: the output layer
"""
PLAN = ModulePlan.from_dict(yaml.safe_load(PLAN_YAML))


class ConvRegressor(nn.Module):
    """A user's float model: two 1D convolutions and an MLP head on their flattened output.

    Input ``(batch, window, features)``, output ``(batch,)``: a one-step-ahead forecast. The
    ``nn.Identity`` modules mark where activation quantisers go (the raw input, the head's
    input); a float model computes nothing there.
    """

    def __init__(self, n_features: int, window: int, channels: int = 8, hidden: int = 16) -> None:
        super().__init__()
        self.inp = nn.Identity()
        self.conv1 = nn.Conv1d(n_features, channels, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.flat = nn.Identity()
        self.head = nn.Sequential(
            nn.Linear(channels * window, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x).transpose(1, 2)  # (B, F, T) for Conv1d
        x = self.relu1(self.conv1(x))
        x = self.relu2(self.conv2(x))
        x = self.flat(x.flatten(1))  # (B, C*T): keeps where in the window a feature is
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
    parser.add_argument("--plan", type=Path, help="a module-name plan file (default: PLAN_YAML)")
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
    plan = ModulePlan.from_yaml(args.plan) if args.plan else PLAN
    float_model = ConvRegressor(n_features, window)
    model = brevitas_apq.quantize(float_model, plan)  # a Brevitas model; float_model stays float

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
    ops = operation_counts(model, X[:1])
    size = model_size_bits(model)
    print(
        f"cost model (analytical, one window): {ops['int_ops']:,} integer ops, of which "
        f"{ops['zero_point_ops']:,} for zero points; model size {size:,} bits"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    plan.to_yaml(args.out / "plan.yaml")
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
    return {
        "rmse": rmse,
        "persistence_rmse": persistence,
        "max_abs_diff": max_abs_diff,
        "int_ops": ops["int_ops"],
        "zero_point_ops": ops["zero_point_ops"],
        "model_size_bits": size,
    }


if __name__ == "__main__":
    main()
