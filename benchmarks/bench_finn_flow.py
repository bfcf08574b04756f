"""Benchmark of the FINN estimate flow (no Xilinx tools) on the project's Transformer.

Trains and exports tiny runs (or loads given run directories), then runs the estimate-only
FINN flow (``brevitas_apq.finn_bridge.build_run(..., windows=0)``) for Pynq-Z1 in a fresh
subprocess per configuration, and prints per configuration: flow time (wall, and CPU time of
the child), peak memory (the child's own peak RSS, ``VmHWM`` of ``/proc/self/status``),
estimated LUT / BRAM_18K / DSP and throughput. Targets: flow < 60 s, peak memory < 4 GiB.

Usage::

    .venv/bin/python benchmarks/bench_finn_flow.py   # mixed-4-8/sq-apq vs all-4/all-aq
    .venv/bin/python benchmarks/bench_finn_flow.py --norms layer,batch --configs \\
        mixed-4-8/sq-apq,all-4/all-aq,all-8/all-sq
    .venv/bin/python benchmarks/bench_finn_flow.py --run runs/quickstart   # a trained run
    .venv/bin/python benchmarks/bench_finn_flow.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOW_TARGET_S = 60.0
MEMORY_TARGET_GIB = 4.0

_CHILD = r"""
import json, resource, sys, time
t0 = time.time(); c0 = time.process_time()
from brevitas_apq.finn_bridge import build_run
s = build_run(sys.argv[1], board=sys.argv[2], out=sys.argv[3], windows=0)
res = {k: s[k] for k in ("LUT", "BRAM_18K", "URAM", "DSP", "estimated_throughput_fps",
                         "estimated_latency_ns", "flow_time_s")}
res["outside"] = [n["op"] for n in s["nodes_outside_dataflow_partition"]]
res["float_hw"] = [n["name"] for n in s["float_datapath_nodes"]]
res["wall_s"] = time.time() - t0
res["cpu_s"] = time.process_time() - c0
# VmHWM: this process's own peak RSS (ru_maxrss of an exec'd child starts from the parent's
# high-water mark at fork time on Linux, so it over-reports after training in the parent)
try:
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
    res["peak_rss_mib"] = int(hwm.split()[1]) / 1024
except (OSError, IndexError):
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(res))
"""


def _train(run_dir: Path, plan: str, norm: str) -> None:
    from brevitas_apq.plans import BitPlan
    from brevitas_apq.training import TrainConfig, train_run

    bits, schemes = plan.split("/")
    train_run(
        run_dir,
        plan=BitPlan.from_presets(bits, schemes),
        train=TrainConfig(float_epochs=1, qat_epochs=1, max_batches=3, batch_size=32),
        model_options={"norm": norm},
        progress=False,
        overwrite=True,
    )
    from brevitas_apq.export import export_run

    export_run(run_dir, n_windows=32)  # outside the timed flow


def _flow(run_dir: Path, board: str, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(run_dir), board, str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"flow failed for {run_dir}:\n{proc.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="mixed-4-8/sq-apq,all-4/all-aq")
    parser.add_argument("--norms", default="layer,batch")
    parser.add_argument("--board", default="Pynq-Z1")
    parser.add_argument("--run", action="append", default=[], help="trained run dir(s)")
    parser.add_argument("--out", type=Path, default=None, help="work directory")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args(argv)

    work = args.out or Path(tempfile.mkdtemp(prefix="bench_finn_flow_"))
    work.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, Path]] = [(f"run {r}", Path(r)) for r in args.run]
    if not args.run:
        for plan in args.configs.split(","):
            for norm in args.norms.split(","):
                run_dir = work / f"{plan.replace('/', '_')}_{norm}"
                t = time.time()
                _train(run_dir, plan, norm)
                print(f"trained + exported {plan} norm={norm} in {time.time() - t:.1f} s")
                jobs.append((f"{plan} {norm}", run_dir))
    results = {}
    for name, run_dir in jobs:
        res = _flow(run_dir, args.board, work / "finn" / run_dir.name)
        results[name] = res
        print(f"{name}: {json.dumps(res)}", flush=True)

    head = (
        f"{'configuration':<26}{'flow s':>8}{'cpu s':>8}{'RSS MiB':>9}{'LUT':>8}{'BRAM18':>8}"
        f"{'DSP':>6}{'inf/s':>8}  outside partition / float HW nodes"
    )
    print(f"\nFINN estimate flow on {args.board} (no Xilinx tools)\n{head}\n{'-' * len(head)}")
    ok = True
    for name, r in results.items():
        print(
            f"{name:<26}{r['wall_s']:>8.1f}{r['cpu_s']:>8.1f}{r['peak_rss_mib']:>9.0f}"
            f"{r['LUT']:>8.0f}{r['BRAM_18K']:>8.0f}{r['DSP']:>6.0f}"
            f"{r['estimated_throughput_fps']:>8.0f}  {','.join(r['outside'])} / "
            f"{','.join(r['float_hw']) or 'none'}"
        )
        ok &= r["wall_s"] < FLOW_TARGET_S and r["peak_rss_mib"] < MEMORY_TARGET_GIB * 1024
    print(
        f"targets: flow < {FLOW_TARGET_S:.0f} s, peak RSS < {MEMORY_TARGET_GIB:.0f} GiB: "
        + ("met" if ok else "NOT met")
        + " (wall time depends on machine load; cpu s is the child's own CPU time)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
