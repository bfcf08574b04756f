"""The tables the ``apq`` commands print (rich), and the one number formatter they share.

One function per command's output, each taking the command's result as it is returned by the
library (``train_run`` metrics, ``operation_counts``, ``run_sensitivity``, ``search``,
``experiments.reproduce``, a FINN build summary). Nothing here computes a result or decides an
exit code: a degenerate model makes :func:`print_metrics` return its reasons, and the command
line turns that into exit code 1.

Example::

    from brevitas_apq import report
    from brevitas_apq.rundir import check_finished

    reasons = report.print_metrics(check_finished("runs/train"), "runs/train")  # `apq show`
    report.console.print(report.summary_table(summary))  # a FINN build summary
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

#: Where the tables go (standard output) and where warnings and errors go (standard error).
console = Console()
err_console = Console(stderr=True)


def fmt(value: Any, spec: str = ".3f", missing: str = "–") -> str:
    """``value`` formatted with ``spec``, or ``missing`` where there is none (None, NaN).

    Example::

        fmt(37070.0, ",.0f")  # '37,070'
        fmt(None, ",.0f", missing="-")  # '-'
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


# --- apq train / show / quickstart -------------------------------------------------------------


def print_metrics(metrics: dict, title: str) -> list[str]:
    """Print a run's summary table and its data warnings; return why the model is degenerate
    (``brevitas_apq.health``: constant or non-finite output, a collapsed quantiser), empty for
    a sound model. A degenerate model is marked in the table and its reasons are printed."""
    from brevitas_apq.health import degenerate_reasons

    degenerate = degenerate_reasons(metrics)
    flag = " [bold red]DEGENERATE[/]" if degenerate else ""
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("plan", metrics["plan"]),
        ("data set / target", f"{metrics['dataset']} / {metrics['target']}"),
        ("model predicts", metrics.get("predict", "level")),
        (
            "windows train / val / test",
            f"{metrics['n_train']} / {metrics['n_val']} / {metrics['n_test']}",
        ),
        ("model check", "[bold red]DEGENERATE: see below[/]" if degenerate else "ok"),
        ("QAT test RMSE", f"{metrics['rmse']:.3f}"),
        ("QAT test MAE", f"{metrics['mae']:.3f}"),
        ("QAT test RMSE (normalised)", f"{metrics['rmse_normalised']:.5f}"),
        ("float test RMSE", f"{metrics['float_rmse']:.3f}"),
        ("persistence test RMSE", f"{metrics['persistence_rmse']:.3f}"),
        ("QAT RMSE vs float", f"{100 * metrics['rmse_vs_float']:+.2f} %{flag}"),
        ("model size (bits)", f"{metrics['model_size_bits']:,}"),
        ("float model size (bits)", f"{metrics['float_model_size_bits']:,}"),
        (
            "quantisers using AQ",
            f"{sum(v == 'AQ' for v in metrics['schemes'].values())} of {len(metrics['schemes'])}",
        ),
        ("epochs (float + QAT)", f"{metrics['float_epochs_run']} + {metrics['qat_epochs_run']}"),
        ("training time (s)", f"{metrics['train_seconds']:.1f}"),
    ]
    for key in ("int_ops", "zero_point_ops"):
        if key in metrics:
            rows.append((key.replace("_", " "), f"{metrics[key]:,}"))
    export = metrics.get("export")
    if export:
        rows.append(("QONNX vs Brevitas max |diff|", f"{export['max_abs_diff']:.2e}"))
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    for warning in metrics.get("data_warnings", []):
        err_console.print(f"[bold yellow]data warning:[/] {escape(warning)}", emoji=False)
    if degenerate:
        err_console.print(
            "[bold red]error:[/] degenerate model: its RMSE is not that of a forecast "
            "(metrics.json 'degenerate'); retrain, e.g. with a lower --qat-lr or more epochs:"
        )
        for reason in degenerate:
            err_console.print(f"  {escape(reason)}", emoji=False)
    return degenerate


# --- apq analyze -------------------------------------------------------------------------------


def operation_rows(ops: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-layer rows of ``operation_counts`` and their total (the last row): what
    ``apq analyze`` prints and writes to ``analysis.csv``."""
    rows = ops["per_layer"]
    total = {
        "layer": "total",
        **{k: "" for k in ("kind", "shape", "a", "b", "mac_bits")},
        **{k: sum(r[k] for r in rows) for k in ("macs", "adds", "zero_point_ops", "int_ops")},
    }
    return [*rows, total]


def print_analysis(
    run_dir: Path, ops: dict[str, Any], size: dict[str, int], float_bits: int
) -> None:
    """The operations per inference by layer (``operation_rows``), the MACs by operand bits and
    the zero-point overhead, then the model size by part (``size_summary``) against float32."""
    rows = operation_rows(ops)
    table = Table(title=f"apq analyze: {run_dir} (one inference, window {ops['window']})")
    for col, justify in [
        ("layer", "left"),
        ("shape", "left"),
        ("a", "left"),
        ("b", "left"),
        ("MACs", "right"),
        ("adds", "right"),
        ("zp ops", "right"),
        ("int ops", "right"),
    ]:
        table.add_column(col, justify=justify)
    for r in rows:
        table.add_row(
            r["layer"],
            r["shape"],
            r["a"],
            r["b"],
            f"{r['macs']:,}",
            f"{r['adds']:,}",
            f"{r['zero_point_ops']:,}",
            f"{r['int_ops']:,}",
            end_section=r is rows[-2],
        )
    console.print(table)
    console.print(
        "MACs by operand bits: "
        + ", ".join(f"{k}: {v:,}" for k, v in ops["macs_by_bits"].items())
        + f"; zero-point overhead {100 * ops['zero_point_ops'] / ops['int_ops']:.2f} % of int ops"
    )
    sizes = Table(title="model size")
    sizes.add_column("part")
    sizes.add_column("bits", justify="right")
    for key in ("weight_bits", "bias_bits", "scale_bits", "zero_point_bits", "total_bits"):
        sizes.add_row(key.removesuffix("_bits").replace("_", " "), f"{size[key]:,}")
    sizes.add_row("float32 model", f"{float_bits:,}")
    sizes.add_row("compression", f"{float_bits / size['total_bits']:.1f}x")
    console.print(sizes)


# --- apq reproduce -----------------------------------------------------------------------------


def print_grid(result: Any, out: Path) -> None:
    """The grid aggregated over seeds (``experiments.reproduce``), what was written, and the
    runs that failed with the last line of their error."""
    if len(result.table):
        table = Table(title=f"apq reproduce: {out} ({result.seconds:.0f} s)")
        for column in ("configuration", "seeds", "RMSE", "± std", "vs float", "size (bits)"):
            table.add_column(column, justify="left" if column == "configuration" else "right")
        for _, r in result.table.iterrows():
            table.add_row(
                str(r["config"]),
                str(int(r["seeds"])),
                f"{r['rmse_mean']:.3f}",
                fmt(r["rmse_std"], ".3f", missing=""),
                f"{100 * r['rmse_vs_float_mean']:+.2f} %",
                f"{r['model_size_bits']:,.0f}",
            )
        console.print(table)
    console.print(f"wrote {out / 'results.md'}, results.csv, stability.csv and plots")
    if result.failed:
        err_console.print(f"[bold red]{len(result.failed)} run(s) failed:[/]")
        for path, error in result.failed.items():
            err_console.print(f"  {path}: {error.strip().splitlines()[-1]}")


# --- apq sensitivity ---------------------------------------------------------------------------


def print_sensitivity(run_dir: Path, result: dict[str, Any], low: int, high: int) -> None:
    """The layers ranked by sensitivity (``run_sensitivity``), the proposed plan and how many
    configurations were computed or reused."""
    base = result["baselines"]
    table = Table(
        title=f"apq sensitivity: {run_dir} (validation RMSE: all-{high} "
        f"{base['base-high']['val_rmse']:.3f}, all-{low} {base['base-low']['val_rmse']:.3f})"
    )
    for col in (
        "rank",
        "layer",
        f"RMSE {low}b (rest {high}b)",
        "increase",
        f"RMSE {high}b (rest {low}b)",
        "decrease",
        "score",
    ):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for r in result["table"].itertuples():
        table.add_row(
            str(r.rank),
            r.layer,
            f"{r.rmse_layer_low:.3f}",
            f"{r.delta_low:+.3f}",
            f"{r.rmse_layer_high:.3f}",
            f"{r.delta_high:+.3f}",
            f"{r.score:+.3f}",
        )
    console.print(table)
    proposal = result["proposal"]
    console.print(
        f"proposed plan {result['plan'].name} (chosen on validation): validation RMSE "
        f"{proposal['val_rmse']:.3f}, test RMSE {proposal['test_rmse']:.3f}, "
        f"size {proposal['model_size_bits']:,} bits -> {result['plan_path']}"
    )
    console.print(
        f"{len(result['computed'])} configurations computed, {len(result['skipped'])} reused "
        f"from {result['out'] / 'configs'}"
    )


# --- apq search --------------------------------------------------------------------------------


def print_pareto(result: dict[str, Any], study_name: str, out: Path) -> None:
    """The Pareto front of a study (``search.search``) and where it is stored."""
    table = Table(title=f"Pareto front of {study_name} ({len(result['trials'])} finished trials)")
    for column in (
        "trial",
        "val RMSE",
        "test RMSE",
        "size (bits)",
        "zero-point ops",
        "bits L1-L8",
        "act",
        "schemes",
    ):
        table.add_column(column, justify="right")
    for r in result["pareto"].itertuples():
        layer_bits = ",".join(str(getattr(r, f"bits_L{i}")) for i in range(1, 9))
        table.add_row(
            str(r.trial),
            f"{r.val_rmse:.3f}",
            f"{r.test_rmse:.3f}",
            f"{r.model_size_bits:,.0f}",
            f"{r.zero_point_ops:,.0f}",
            layer_bits,
            str(r.bits_act),
            f"{r.weight_scheme}/{r.act_scheme}",
        )
    console.print(table)
    console.print(f"study {study_name} in {result['storage']}; wrote {out / 'pareto.csv'}")


# --- apq build / quickstart: FINN summaries ----------------------------------------------------


def print_finn_warnings(caught: Sequence[Any]) -> None:
    """Print the warnings of class ``FinnFlowWarning`` among those recorded during a build."""
    for w in caught:
        if w.category.__name__ == "FinnFlowWarning":
            err_console.print(f"[bold yellow]warning:[/] {w.message}")


def summary_table(summary: dict[str, Any], title: str | None = None) -> Group:
    """A rich renderable of a FINN summary (``brevitas_apq.finn_bridge``): resources beside the
    board's capacity, speed, emulation, then the nodes outside the partition / not estimated /
    with a float datapath, and the verification table."""
    caps = summary.get("capacities", {})
    name = summary.get("board") or summary.get("part")
    table = Table(title=title or f"FINN estimate: {name} ({summary.get('part')})")
    table.add_column("")
    table.add_column("estimate (FINN + model)", justify="right")
    table.add_column(f"{name}", justify="right")
    table.add_column("use", justify="right")
    for key in ("LUT", "BRAM_18K", "URAM", "DSP"):
        cap = caps.get(key)
        used = summary.get(key, 0.0)
        share = f"{100 * used / cap:.1f} %" if cap else "-"
        table.add_row(key, fmt(used, ",.0f", "-"), fmt(cap, ",.0f", "-"), share)
    fps = summary.get("estimated_throughput_fps")
    lat = summary.get("estimated_latency_ns")
    clock = summary.get("clock_ns") or 10.0
    table.add_row("inferences/s", fmt(fps, ",.0f", "-"), f"{1e3 / clock:.0f} MHz", "")
    table.add_row("latency (µs)", fmt(lat / 1e3 if lat else None, ",.1f", "-"), "", "")
    emu = summary.get("emulation")
    if emu:
        status = "[green]ok[/]" if emu["passed"] else "[bold red]FAILED[/]"
        table.add_row(
            f"emulation |diff| QONNX ({emu['n_inputs']})",
            f"{emu['max_abs_diff']:.1e}",
            f"tol {emu['tolerance']:g}",
            status,
        )
        if "max_abs_diff_vs_brevitas" in emu:
            table.add_row("emulation |diff| Brevitas", f"{emu['max_abs_diff_vs_brevitas']:.1e}")
            table.add_row(
                "RMSE emulated / Brevitas",
                f"{emu['rmse_target_units']:.3f}",
                f"{emu['brevitas_rmse_target_units']:.3f}",
                "target units",
            )
    else:
        table.add_row("emulation", "skipped")
    sim = summary.get("cppsim")
    if sim:
        status = "[green]ok[/]" if sim["passed"] else "[bold red]FAILED[/]"
        table.add_row(
            f"C++ sim |diff| Python ({sim['windows']})",
            f"{sim['max_abs_diff_vs_python']:.1e}",
            f"tol {sim['tolerance']:g}",
            status,
        )
        table.add_row("C++ sim |diff| QONNX", f"{sim['max_abs_diff_vs_qonnx']:.1e}")
        table.add_row(
            "C++ compile / run (s)",
            f"{sim['seconds']['compile']:.1f} / {sim['seconds']['run']:.1f}",
            f"{sim['compiled']} built, {sim['cached']} cached",
            "",
        )
    table.add_row("flow time (s)", f"{summary.get('flow_time_s', 0):.1f}", "", "")
    lines = [f"flow: {summary.get('flow')}", _folding_line(summary)]
    outside = summary.get("nodes_outside_dataflow_partition") or []
    lines.append(
        "outside the dataflow partition: "
        + (", ".join(f"{n['op']} {n['name']}" for n in outside) or "none")
    )
    for node in summary.get("nodes_not_estimated_by_finn") or []:
        est = node.get("analytical_estimate")
        if est:
            lines.append(
                f"{node['node']}: FINN reports 0; {est.get('model', 'attention (fitted)')}: "
                f"{fmt(est['LUT'], ',.0f', '-')} LUT, "
                f"{est['BRAM_18K']} BRAM_18K, {est['DSP']} DSP (included above)"
            )
    unest = [
        n["node"]
        for n in summary.get("nodes_not_estimated_by_finn") or []
        if not n.get("analytical_estimate")
    ]
    if unest:
        lines.append("no FINN resource model (0, not included): " + ", ".join(unest))
    floats = summary.get("float_datapath_nodes") or []
    lines.append(
        "float datapath in hardware: "
        + (", ".join(n["name"] for n in floats) or "none (integer only)")
    )
    parts = [table, Text("\n".join(lines))]
    if summary.get("verification"):
        parts.append(verification_table(summary["verification"]))
    return Group(*parts)


def _folding_line(summary: dict[str, Any]) -> str:
    """How the folding was chosen (finn_flow.fit), in one line."""
    fit = summary.get("fit")
    if fit is None:
        if summary.get("target_fps"):
            return f"folding: FINN's auto-folding for --target-fps {summary['target_fps']:,}"
        return "folding: as given (--folding) or fully folded"
    chosen = fit["chosen"]
    if not fit["fits"]:
        return (
            f"folding: NO folding fits {fit['budget_source']} (estimates); built the smallest "
            f"({chosen['LUT']:,.0f} LUT, {chosen['DSP']:,.0f} DSP, {chosen['BRAM_18K']:,.0f} "
            f"BRAM_18K); binding resource: {fit['binding_resource']}"
        )
    return (
        f"folding: the fastest of {fit['candidates_evaluated']} candidate foldings within "
        f"{fit['budget_source']} (FINN + analytical estimates): {chosen['fps']:,.0f} "
        f"inferences/s, bottleneck {chosen['bottleneck']}"
    )


def verification_table(entries: list[dict]) -> Table:
    """Hardware nodes by type: the deepest level they were checked at, the largest difference
    (``summary["verification"]`` has one entry per node)."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for e in entries:
        groups.setdefault((e["op_type"], e["level"], e.get("compared_with") or "-"), []).append(e)
    table = Table(title="verification: deepest level per hardware node")
    for column in ("node type", "nodes", "level", "max |diff|", "vs", "thresholds after"):
        table.add_column(column, justify="right" if column in ("nodes", "max |diff|") else "left")
    short = {"qonnx, whole graph": "QONNX (graph)", "python, node isolated": "Python (node)"}
    for (op, level, against), group in groups.items():
        diffs = [e["max_abs_diff"] for e in group if e["max_abs_diff"] is not None]
        decisions = [e["decisions_changed"] for e in group if "decisions_changed" in e]
        note = f"{sum(decisions)} decisions changed" if decisions else ""
        table.add_row(
            op,
            str(len(group)),
            level,
            f"{max(diffs):.1e}" if diffs else "-",
            short.get(against, against),
            note,
        )
    return table
