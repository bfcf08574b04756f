"""What each hardware node of a build was checked against, and how deep (``verification``).

Levels, deepest last: ``none`` (not run on data), ``python`` (FINN's Python execution of the
hardware graph, compared as a whole with the QONNX model), ``cppsim`` (the node's HLS C++
kernel, compiled with g++, fed the Python execution's inputs and compared with its outputs:
:mod:`finn_flow.cppsim`), ``rtl-verilator`` (the node's RTL simulated with Verilator).

Each entry: ``{node, op_type, level, max_abs_diff, compared_with}``; ``compared_with`` says
whether the difference is the node's own (``python, node isolated``) or the whole graph's
(``qonnx, whole graph``). Float nodes read by thresholds (LayerNorm) also carry
``decisions_changed`` and ``threshold_margin`` (see :class:`finn_flow.cppsim.NodeSimResult`).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["LEVELS", "verification_table"]

LEVELS = ("none", "python", "cppsim", "rtl-verilator")


def _hw_nodes(out_dir: Path) -> list[tuple[str, str]]:
    """(name, op type) of the specialised hardware graph's nodes, if the build saved it."""
    from finn_flow.errors import FinnFlowError
    from finn_flow.graph import find_hw_model, is_hw

    try:
        path = find_hw_model(out_dir)
    except FinnFlowError:
        return []
    import onnx

    graph = onnx.load(str(path)).graph
    return [(n.name, n.op_type) for n in graph.node if is_hw(n)]


def verification_table(out_dir: str | Path, emulation: dict | None, cppsim=None) -> list[dict]:
    """One entry per hardware node: the deepest level it was checked at, and the difference.

    ``emulation`` is the summary's emulation dict (None: not emulated); ``cppsim`` a
    :class:`finn_flow.cppsim.CppSimResult` (None: not simulated).
    """
    emulated = emulation is not None
    whole_graph = {
        "level": "python" if emulated else "none",
        "max_abs_diff": emulation["max_abs_diff"] if emulated else None,
        "compared_with": "qonnx, whole graph" if emulated else None,
        "windows": emulation["n_inputs"] if emulated else 0,
    }
    if cppsim is not None:
        out = []
        for n in cppsim.nodes:
            entry = {"node": n.name, "op_type": n.op_type}
            if n.level == "python":  # an *_rtl node: cppsim runs FINN's Python for it
                entry.update(whole_graph)
                out.append(entry)
                continue
            entry.update(
                level=n.level,
                max_abs_diff=n.max_abs_diff,
                compared_with="python, node isolated",
                windows=cppsim.n_inputs,
            )
            if n.decisions_changed is not None:
                entry["decisions_changed"] = n.decisions_changed
                entry["threshold_margin"] = n.threshold_margin
            out.append(entry)
        return out
    return [{"node": name, "op_type": op, **whole_graph} for name, op in _hw_nodes(Path(out_dir))]
