"""Training benchmarks on the embedded data: epoch times and the peak memory of `apq train`.

Prints, side by side in one run: the time of one float epoch and one QAT epoch (mixed-4-8 /
sq-apq, batch 64, the full training split), their ratio, and the peak resident memory of a whole
`apq train` process (float + QAT + export of artefacts). Targets: a QAT epoch under 15 s on
2 cores, peak memory under 2 GiB. Run: ``.venv/bin/python benchmarks/bench_training.py``.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from brevitas_apq.data import DataSpec
from brevitas_apq.models import ModelConfig, TimeSeriesTransformer
from brevitas_apq.plans import BitPlan


def epoch_seconds(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    model.train()
    start = time.perf_counter()
    for idx in order.split(batch):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(X[idx]), y[idx]).backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-epochs", type=int, default=2, help="epochs per phase of apq train")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = DataSpec().load()
    X, y = torch.from_numpy(data.X_train), torch.from_numpy(data.model_target("train"))
    cfg = ModelConfig(n_features=data.n_features)
    torch.manual_seed(0)
    float_s = epoch_seconds(TimeSeriesTransformer(cfg), X, y, args.batch)
    plan = BitPlan.from_presets("mixed-4-8", "sq-apq")
    qat_s = epoch_seconds(TimeSeriesTransformer(cfg, plan), X, y, args.batch)
    print(f"one epoch, {len(X)} windows, batch {args.batch}, {args.threads} thread(s):")
    print(f"  float            {float_s:7.2f} s")
    print(f"  QAT mixed-4-8    {qat_s:7.2f} s   (target < 15 s)")
    print(f"  QAT / float      {qat_s / float_s:7.2f}")

    with tempfile.TemporaryDirectory() as tmp:
        apq = Path(sys.executable).with_name("apq")
        cmd = [
            str(apq), "train", "--out", tmp, "--no-progress",
            "--epochs", str(args.train_epochs), "--qat-epochs", str(args.train_epochs),
        ]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"apq train ({args.train_epochs} float + {args.train_epochs} QAT epochs): {wall:.1f} s,")
    print(f"  peak memory      {peak_mib:7.0f} MiB  (target < 2048 MiB)")


if __name__ == "__main__":
    main()
