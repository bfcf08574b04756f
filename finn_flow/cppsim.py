"""C++ simulation (cppsim) of a FINN dataflow graph's ``*_hls`` nodes with g++, without Vitis HLS.

finn-plus 1.6.1 simulates an HLS node in C++ by generating a test bench (``PrepareCppSim``),
compiling it with g++ against Vitis HLS's headers, finn-hlslib and attention-hlslib
(``CompileCppSim``) and running it on ``.npy`` files. finn_flow does the same without the
Xilinx tools, and fast enough to run on every build, in four modules:

* :mod:`finn_flow.hls_toolchain` - where the headers and libraries come from
  (:class:`HlsToolchain`: ``--hls-dir`` / ``APQ_HLS_DIR`` / finn's deps folder; Vitis HLS or
  the open-source header shim; the patched attention-hlslib).
* :mod:`finn_flow.kernel_cache` - the content-addressed cache of compiled kernels.
* :mod:`finn_flow.cppsim_compile` - :func:`compile_cppsim`: code generation by finn, cached
  parallel compiles with a progress bar.
* this module - simulating and comparing: :func:`simulate_cppsim` for a build's saved
  models, :func:`simulate_graph` for any HW graph. The whole graph runs in cppsim (``*_rtl``
  nodes fall back to FINN's Python execution, as FINN does in cppsim mode) against FINN's
  Python execution, and every HW node in isolation: fed the Python execution's inputs, its
  cppsim output is compared with the Python output (:class:`NodeSimResult`), so a difference
  is attributed to the node that makes it. A float output read by thresholds (LayerNorm)
  also records how many threshold decisions the difference changes
  (``decisions_changed``) and the smallest distance to a threshold (``threshold_margin``).
  ``*_rtl`` nodes Verilator supports are simulated with it (:mod:`finn_flow.verilator`).
  Specialised ``*_hls``/``*_rtl`` nodes of finn-plus 1.6.1 accept only cppsim/rtlsim
  (attention also python), so the Python reference runs the graph with every node swapped
  for its generic HW op (:func:`finn_flow.graph.python_model`), as :mod:`finn_flow.emulation`
  does before specialisation.

Known differences between the C++ kernels (i.e. the hardware) and FINN's Python execution
(finn-plus 1.6.1; measured, pinned by ``tests/finn_flow/test_cppsim.py``):

* ``ScaledDotProductAttention_hls``: finn-plus generates the three threshold activations with
  ``comp::less`` (``threshold < x``), Python counts ``x >= threshold`` (as ``Thresholding_hls``
  and ``MVAU_hls`` do, ``comp::less_equal``): an integer accumulator exactly on a threshold
  gives one level less in C++ (QK and AV stages; up to 2 levels at the output). A numpy model
  with strict comparisons reproduces the C++ output exactly.
* ``LayerNorm_hls``: the generated call ``layernorm<N>(in, out)`` passes no epsilon, so the
  kernel uses finn-hlslib's default ``1e-5`` added to ``N**2 * variance`` (effective epsilon
  ``1e-5 / N**2``) instead of the node's ``epsilon``; plus float32 rounding.
* ``GlobalAccPool_hls``: finn-hlslib's ``AccPool_Batch`` assumes square images (pools
  ``ImgDim`` of ``ImgDim*ImgDim`` pixels; the kernel warns about words left in its input).

Nothing here needs the Xilinx tools; g++ (>= 12 for ``_Float16``), ``libgmp-dev``,
``libmpfr-dev`` and ``zlib1g-dev`` must be installed.

Usage::

    result = simulate_cppsim("build/out", windows, expected=qonnx_outputs, jobs=2)
    print(result.max_abs_diff_vs_python, [n.as_dict() for n in result.nodes])
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from finn_flow.cppsim_compile import CompileReport, KernelBuild, compile_cppsim
from finn_flow.errors import FinnFlowError
from finn_flow.graph import dynamic_inputs, find_hw_model, is_hls, is_hw, is_rtl, python_model
from finn_flow.hls_toolchain import HlsToolchain
from finn_flow.kernel_cache import default_cache_dir

# compile_cppsim, its report and the toolchain are part of this module's API (re-exported)
__all__ = [
    "CompileReport",
    "CppSimResult",
    "HlsToolchain",
    "KernelBuild",
    "NodeSimResult",
    "compile_cppsim",
    "simulate_cppsim",
    "simulate_graph",
]


@dataclass
class NodeSimResult:
    """One HW node fed the Python execution's inputs: its cppsim output vs Python's."""

    name: str
    op_type: str
    #: "cppsim" (compiled C++), "rtl-verilator" (``*_rtl`` nodes Verilator simulates) or
    #: "python" (other ``*_rtl`` nodes: FINN's Python fallback).
    level: str
    max_abs_diff: float
    #: Output values differing from Python (any amount), and all output values compared.
    n_diff: int
    n_values: int
    #: Warnings the C++ kernel printed (unique lines, e.g. hls::stream read while empty or
    #: left with data: the kernel consumed/produced a different number of words).
    warnings: list[str] = field(default_factory=list)
    #: Float outputs read by thresholds (LayerNorm): how many threshold decisions of the
    #: consumer change when it reads the cppsim output instead of Python's (0 proves the
    #: float difference harmless on these inputs), and the smallest distance of a Python
    #: output value to a threshold (the margin the float error must stay below). None when
    #: the output is not a float tensor feeding thresholds.
    decisions_changed: int | None = None
    threshold_margin: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CppSimResult:
    """Outcome of :func:`simulate_cppsim` / :func:`simulate_graph`."""

    n_inputs: int
    #: Whole-graph cppsim outputs, stacked over the samples.
    outputs: np.ndarray
    #: FINN Python execution outputs of the same graph, stacked.
    python_outputs: np.ndarray
    max_abs_diff_vs_python: float
    #: Against the caller's ``expected`` outputs (QONNX), None if not given.
    max_abs_diff_vs_qonnx: float | None
    python_max_abs_diff_vs_qonnx: float | None
    nodes: list[NodeSimResult]
    compile: CompileReport
    #: Seconds: compile (incl. code generation), run (all samples, all executions).
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def node(self, name: str) -> NodeSimResult:
        return next(n for n in self.nodes if n.name == name)

    def as_dict(self) -> dict:
        return {
            "n_inputs": self.n_inputs,
            "outputs": np.asarray(self.outputs).tolist(),
            "max_abs_diff_vs_python": self.max_abs_diff_vs_python,
            "max_abs_diff_vs_qonnx": self.max_abs_diff_vs_qonnx,
            "python_max_abs_diff_vs_qonnx": self.python_max_abs_diff_vs_qonnx,
            "nodes": [n.as_dict() for n in self.nodes],
            "compile": self.compile.as_dict(),
            "seconds": self.seconds,
            "notes": list(self.notes),
        }


def _max_abs(a, b) -> float:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.size != b.size:
        raise FinnFlowError(f"Cannot compare {a.size} with {b.size} output values.")
    return float(np.abs(a - b).max()) if a.size else 0.0


_KERNEL_WARNING = re.compile(r"Hls::stream|hls_shim")
_MAX_WARNINGS = 10


class _KernelWarnings(logging.Filter):
    """Takes the C++ kernels' stream warnings out of finn's log (they are reported per node)."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not _KERNEL_WARNING.search(message):
            return True
        self.lines += [ln.strip() for ln in message.splitlines() if _KERNEL_WARNING.search(ln)]
        return False


@contextlib.contextmanager
def _kernel_warnings() -> Iterator[list[str]]:
    """Collect (and keep off the console) what cppsim kernels print about their streams."""
    logger = logging.getLogger("finn_logger")  # finn.util.logging.log
    collector = _KernelWarnings()
    logger.addFilter(collector)
    try:
        yield collector.lines
    finally:
        logger.removeFilter(collector)


class _NodeStats:
    def __init__(self, node, level: str):
        self.node, self.level = node, level
        self.max_abs, self.n_diff, self.n_values = 0.0, 0, 0
        self.warnings: dict[str, None] = {}
        self.decisions_changed: int | None = None
        self.threshold_margin: float | None = None
        #: an *_rtl node's Python inputs and outputs per sample, for Verilator afterwards
        self.rtl_io: list[tuple[np.ndarray, np.ndarray]] = []

    def add_decisions(self, changed: int, margin: float) -> None:
        self.decisions_changed = (self.decisions_changed or 0) + changed
        if self.threshold_margin is None or margin < self.threshold_margin:
            self.threshold_margin = margin

    def add_warnings(self, lines: list[str]) -> None:
        for line in lines:
            if len(self.warnings) < _MAX_WARNINGS:
                self.warnings.setdefault(line)

    def add(self, actual, expected) -> None:
        a = np.asarray(actual, dtype=np.float64).reshape(-1)
        e = np.asarray(expected, dtype=np.float64).reshape(-1)
        if a.size != e.size:
            raise FinnFlowError(
                f"Node {self.node.name}: cppsim gave {a.size} values, Python {e.size}."
            )
        diff = np.abs(a - e)
        if diff.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
        self.n_diff += int(np.count_nonzero(diff))
        self.n_values += int(diff.size)

    def result(self) -> NodeSimResult:
        return NodeSimResult(
            name=self.node.name,
            op_type=self.node.op_type,
            level=self.level,
            max_abs_diff=self.max_abs,
            n_diff=self.n_diff,
            n_values=self.n_values,
            warnings=list(self.warnings),
            decisions_changed=self.decisions_changed,
            threshold_margin=self.threshold_margin,
        )


def _run_node_isolated(cpp_model, node, py_ctx: dict) -> dict[str, np.ndarray]:
    """Execute one node of the cppsim model on the Python context's tensors."""
    from qonnx.custom_op.registry import getCustomOp

    ctx = {name: py_ctx[name] for name in node.input if name in py_ctx}
    for name in node.input:
        init = cpp_model.get_initializer(name)
        if init is not None:
            ctx[name] = init
    for name in node.output:
        ctx[name] = np.zeros(cpp_model.get_tensor_shape(name), dtype=np.float32)
    try:
        getCustomOp(node).execute_node(ctx, cpp_model.graph)
    except subprocess.CalledProcessError as exc:
        raise FinnFlowError(
            f"cppsim of node {node.name} ({node.op_type}) failed (exit {exc.returncode}): "
            f"{(exc.stderr or '')[:800]}"
        ) from exc
    return {name: ctx[name] for name in node.output}


def _threshold_levels(model, consumer, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Levels ``count(x >= T)`` of a thresholding consumer (channels last), and the smallest
    distance of any ``x`` to one of its thresholds."""
    thresholds = np.asarray(model.get_initializer(consumer.input[1]), dtype=np.float32)
    flat = np.asarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    t = np.broadcast_to(thresholds, (flat.shape[1], thresholds.shape[-1]))
    levels = (flat[:, :, None] >= t[None]).sum(-1)
    margin = float(np.abs(flat[:, :, None].astype(np.float64) - t[None]).min())
    return levels, margin


def _check_decisions(cpp_model, node, outs: dict, py_ctx: dict, stats: _NodeStats) -> None:
    """For float outputs read by thresholds: decisions changed by the cppsim output."""
    from qonnx.core.datatype import DataType

    for name, value in outs.items():
        if cpp_model.get_tensor_datatype(name) != DataType["FLOAT32"]:
            continue
        for consumer in cpp_model.find_consumers(name) or []:
            if not consumer.op_type.startswith(("Thresholding", "MultiThreshold")):
                continue
            if cpp_model.get_initializer(consumer.input[1]) is None:
                continue
            cpp_levels, _ = _threshold_levels(cpp_model, consumer, value)
            py_levels, margin = _threshold_levels(cpp_model, consumer, py_ctx[name])
            stats.add_decisions(int((cpp_levels != py_levels).sum()), margin)


def _compare_nodes(cpp_model, py_ctx: dict, stats: dict[str, _NodeStats]) -> None:
    for node in cpp_model.graph.node:
        if not is_hw(node):
            continue
        if node.name not in stats:
            stats[node.name] = _NodeStats(node, "cppsim" if is_hls(node) else "python")
        with _kernel_warnings() as lines:
            outs = _run_node_isolated(cpp_model, node, py_ctx)
        stats[node.name].add_warnings(lines)
        for name, value in outs.items():
            stats[node.name].add(value, py_ctx[name])
        if is_hls(node):
            _check_decisions(cpp_model, node, outs, py_ctx, stats[node.name])
        elif is_rtl(node) and len(node.input) and len(node.output) == 1:
            stats[node.name].rtl_io.append((py_ctx[node.input[0]], py_ctx[node.output[0]]))


def _simulate_rtl(cpp_model, stats: dict[str, _NodeStats], work: Path, jobs: int) -> list[str]:
    """Verilator for every ``*_rtl`` node it supports (finn_flow.verilator): all samples of a
    node through one simulation, compared with Python; the node's level becomes
    ``rtl-verilator``. Returns notes (what was not simulated, and why)."""
    from finn_flow import verilator

    rtl = [st for st in stats.values() if st.rtl_io]
    if not rtl:
        return []
    if not verilator.verilator_available():
        return [
            f"{len(rtl)} *_rtl node(s) checked in Python only: Verilator is not installed "
            "(apt-get install verilator)"
        ]
    todo = [st for st in rtl if verilator.supported(st.node)]
    unsupported = sorted({st.node.op_type for st in rtl if st not in todo})
    cache = default_cache_dir()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # compile (cached) in parallel
        for future in [
            pool.submit(verilator.build_rtl_node, cpp_model, st.node, work / "rtl", cache)
            for st in todo
        ]:
            future.result()
    for st in todo:
        inputs = [i for i, _ in st.rtl_io]
        expected = np.stack([o for _, o in st.rtl_io])
        actual = verilator.simulate_rtl_node(cpp_model, st.node, inputs, work / "rtl", cache)
        st.level = verilator.LEVEL
        st.max_abs, st.n_diff, st.n_values = 0.0, 0, 0
        st.add(actual, expected)
        st.add_warnings(verilator.known_differences(st.node) if st.n_diff else [])
    notes = []
    if unsupported:
        notes.append(
            f"checked in Python only (Verilator cannot simulate them): {', '.join(unsupported)}"
        )
    return notes


def _graph_samples(model, inputs) -> list[dict[str, np.ndarray]]:
    """Per-sample input dicts for a graph's dynamic inputs (array: the first input only)."""
    from finn_flow.emulation import _as_samples

    dynamic = dynamic_inputs(model)
    if isinstance(inputs, Mapping):
        unknown = set(inputs) - set(dynamic)
        missing = set(dynamic) - set(inputs)
        if unknown or missing:
            raise FinnFlowError(
                f"Inputs {sorted(inputs)} do not match the graph's inputs {dynamic}."
            )
        per_input = {
            name: _as_samples(np.asarray(inputs[name]), model.get_tensor_shape(name))
            for name in dynamic
        }
        counts = {len(v) for v in per_input.values()}
        if len(counts) != 1:
            raise FinnFlowError("All inputs must have the same number of samples.")
        return [{k: v[i] for k, v in per_input.items()} for i in range(counts.pop())]
    if len(dynamic) != 1:
        raise FinnFlowError(f"The graph has inputs {dynamic}: pass a dict of arrays.")
    return [
        {dynamic[0]: x} for x in _as_samples(np.asarray(inputs), model.get_tensor_shape(dynamic[0]))
    ]


def _result(cpp_outs, py_outs, expected, stats, report, t_compile, t_run, notes) -> CppSimResult:
    cpp_arr, py_arr = np.stack(cpp_outs), np.stack(py_outs)
    vs_qonnx = py_vs_qonnx = None
    if expected is not None:
        expected = np.asarray(expected)
        vs_qonnx = _max_abs(cpp_arr, expected)
        py_vs_qonnx = _max_abs(py_arr, expected)
    nodes = [s.result() for s in stats.values()]
    for n in nodes:
        if n.level == "cppsim" and n.max_abs_diff > 0:
            notes.append(
                f"{n.name} ({n.op_type}): cppsim differs from Python on {n.n_diff} of "
                f"{n.n_values} values, max abs {n.max_abs_diff:.3g}"
            )
        if n.warnings:
            notes.append(f"{n.name} ({n.op_type}) C++ kernel warnings: {'; '.join(n.warnings)}")
    return CppSimResult(
        n_inputs=len(cpp_outs),
        outputs=cpp_arr,
        python_outputs=py_arr,
        max_abs_diff_vs_python=_max_abs(cpp_arr, py_arr),
        max_abs_diff_vs_qonnx=vs_qonnx,
        python_max_abs_diff_vs_qonnx=py_vs_qonnx,
        nodes=nodes,
        compile=report,
        seconds={"compile": round(t_compile, 3), "run": round(time.perf_counter() - t_run, 3)},
        notes=notes,
    )


def simulate_graph(
    model,
    inputs,
    *,
    expected=None,
    toolchain: HlsToolchain | None = None,
    jobs: int = 2,
    progress: bool = True,
    work_dir: str | Path | None = None,
    rtl_sim: bool = True,
) -> CppSimResult:
    """cppsim of a HW graph (a ModelWrapper or path) against FINN's Python execution.

    ``inputs``: an array of samples for a single-input graph (``inputs[i]`` has the input's
    shape, with or without its batch dimension), or a dict ``{input name: array}``.
    ``expected`` (optional): reference outputs, stacked, for ``max_abs_diff_vs_qonnx``.
    Outputs are the graph's first output. ``work_dir`` holds the generated code (a temporary
    folder, removed afterwards, if None). ``rtl_sim``: simulate the ``*_rtl`` nodes Verilator
    supports (level ``rtl-verilator``). See :func:`compile_cppsim` for the other arguments.
    """
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="apq_cppsim_"))
        return _simulate_graph(
            model, inputs, expected, toolchain, jobs, progress, Path(work_dir), rtl_sim
        )


def _simulate_graph(
    model, inputs, expected, toolchain, jobs, progress, work, rtl_sim
) -> CppSimResult:
    from qonnx.core.modelwrapper import ModelWrapper

    from finn_flow.no_vivado import finn_session

    with finn_session(work):
        import finn.custom_op.fpgadataflow.reshape  # noqa: F401
        from finn.core.onnx_exec import execute_onnx

        if not isinstance(model, ModelWrapper):
            model = ModelWrapper(str(model))
        t0 = time.perf_counter()
        cpp_model, report = compile_cppsim(
            model, toolchain=toolchain, jobs=jobs, progress=progress, work_dir=work
        )
        t_compile = time.perf_counter() - t0
        py_model = python_model(model)
        oname = model.graph.output[0].name
        t_run = time.perf_counter()
        stats: dict[str, _NodeStats] = {}
        cpp_outs, py_outs = [], []
        for sample in _graph_samples(model, inputs):
            py_ctx = execute_onnx(py_model, dict(sample), return_full_exec_context=True)
            py_outs.append(py_ctx[oname])
            with _kernel_warnings():  # reported per node by the isolated runs below
                cpp_outs.append(execute_onnx(cpp_model, dict(sample))[oname])
            _compare_nodes(cpp_model, py_ctx, stats)
        notes = _simulate_rtl(cpp_model, stats, Path(work), jobs) if rtl_sim else []
    return _result(cpp_outs, py_outs, expected, stats, report, t_compile, t_run, notes)


def simulate_cppsim(
    out_dir: str | Path,
    inputs: np.ndarray,
    *,
    expected: np.ndarray | None = None,
    hw_model: str | Path | None = None,
    toolchain: HlsToolchain | None = None,
    jobs: int = 2,
    progress: bool = True,
    work_dir: str | Path | None = None,
    rtl_sim: bool = True,
) -> CppSimResult:
    """cppsim of a build's accelerator graph against FINN's Python execution, per sample.

    ``out_dir`` is a :func:`finn_flow.build.build` output directory: its
    ``intermediate_models/dataflow_parent.onnx`` (software head/tail) runs with the HW graph
    ``hw_model`` (default :func:`find_hw_model`) as its dataflow partition. ``inputs`` are
    model inputs (``inputs[i]`` one sample); ``expected`` optional QONNX outputs. Generated
    code goes to ``work_dir`` (default ``out_dir/cppsim``), compiled kernels to the cache.
    ``rtl_sim``: also simulate the ``*_rtl`` nodes Verilator supports (finn_flow.verilator).
    """
    from qonnx.core.modelwrapper import ModelWrapper

    from finn_flow.emulation import _as_samples, _first_dynamic_input
    from finn_flow.no_vivado import finn_session

    out_dir = Path(out_dir)
    parent_path = out_dir / "intermediate_models" / "dataflow_parent.onnx"
    if not parent_path.is_file():
        raise FinnFlowError(
            f"{parent_path} missing: build with save_intermediate_models=True (emulation does)."
        )
    hw_path = Path(hw_model) if hw_model is not None else find_hw_model(out_dir)
    work = Path(work_dir) if work_dir is not None else out_dir / "cppsim"
    work = work.absolute()
    with finn_session(work):
        import finn.custom_op.fpgadataflow.reshape  # noqa: F401
        from finn.core.onnx_exec import execute_onnx
        from finn.util.execution import execute_parent

        model = ModelWrapper(str(hw_path))
        t0 = time.perf_counter()
        cpp_model, report = compile_cppsim(
            model, toolchain=toolchain, jobs=jobs, progress=progress, work_dir=work
        )
        t_compile = time.perf_counter() - t0
        py_model = python_model(model)
        cpp_path, py_path = work / "dataflow_cppsim.onnx", work / "dataflow_python.onnx"
        cpp_model.save(str(cpp_path))
        py_model.save(str(py_path))
        parent = ModelWrapper(str(parent_path))
        sdps = parent.get_nodes_by_op_type("StreamingDataflowPartition")
        if len(sdps) != 1:
            raise FinnFlowError(
                f"{parent_path} has {len(sdps)} dataflow partitions; cppsim supports one."
            )
        sdp = sdps[0]
        ishape = parent.get_tensor_shape(_first_dynamic_input(parent))
        oname = parent.graph.output[0].name
        child_inputs = dynamic_inputs(model)
        t_run = time.perf_counter()
        stats: dict[str, _NodeStats] = {}
        cpp_outs, py_outs = [], []
        for x in _as_samples(inputs, ishape):
            ctx = execute_parent(str(parent_path), str(py_path), x, return_full_ctx=True)
            py_outs.append(ctx[oname])
            with _kernel_warnings():  # reported per node by the isolated runs below
                cpp_outs.append(execute_parent(str(parent_path), str(cpp_path), x))
            feed = {name: ctx[sdp.input[i]] for i, name in enumerate(child_inputs)}
            py_ctx = execute_onnx(py_model, feed, return_full_exec_context=True)
            _compare_nodes(cpp_model, py_ctx, stats)
        notes = [f"HW graph: {hw_path.name}; generated code in {work / 'nodes'}"]
        if rtl_sim:
            notes += _simulate_rtl(cpp_model, stats, work, jobs)
    return _result(cpp_outs, py_outs, expected, stats, report, t_compile, t_run, notes)
