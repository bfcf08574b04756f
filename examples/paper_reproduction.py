"""The paper's experiment grid as one script (what ``apq reproduce`` runs).

The float baseline, then every bit preset (``all-8``, ``all-4``, ``mixed-4-8``) with every scheme
preset (``all-aq``, ``all-sq``, ``sq-aq``, ``sq-apq``, ``all-apq``) over several seeds, on the
embedded Beijing PM2.5 data; optionally the APQ threshold sweep. Writes ``results.csv``,
``results.md``, ``stability.csv`` and plots to ``--out``; rerunning continues an interrupted
grid.

Run::

    python examples/paper_reproduction.py --out runs/paper --jobs 2          # full budget
    python examples/paper_reproduction.py --out runs/paper-quick --quick     # minutes
"""

from __future__ import annotations

import argparse
from pathlib import Path

from brevitas_apq.experiments import reproduce
from brevitas_apq.grid_report import markdown_table
from brevitas_apq.training import TrainConfig


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/paper"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--thresholds", default="", help="e.g. 0,0.05,0.1,0.2,0.5,1")
    parser.add_argument("--quick", action="store_true", help="tiny budget, one seed, 2 configs")
    args = parser.parse_args(argv)

    if args.quick:
        train = TrainConfig(float_epochs=2, qat_epochs=1, max_batches=20)
        grid = {"bits": ("mixed-4-8",), "schemes": ("all-sq", "sq-apq"), "seeds": 1}
    else:
        train = TrainConfig(float_epochs=30, qat_epochs=20)
        grid = {"seeds": args.seeds}
    thresholds = tuple(float(t) for t in args.thresholds.split(",") if t.strip())
    result = reproduce(args.out, train=train, jobs=args.jobs, thresholds=thresholds, **grid)
    print(markdown_table(result.table))
    return result


if __name__ == "__main__":
    main()
