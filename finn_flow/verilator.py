"""RTL simulation of single FINN ``*_rtl`` nodes with Verilator (no Xilinx tools).

finn-plus 1.6.1 simulates RTL only through Vivado's XSI; in cppsim mode its ``*_rtl`` nodes
fall back to FINN's Python execution. This module simulates the nodes whose HDL Verilator
can build, so their verification level is :data:`LEVEL` (``"rtl-verilator"``) instead of
``"python"``:

* :func:`verilator_available` - is ``verilator`` on ``PATH`` (Debian/Ubuntu package
  ``verilator``; tested with 5.006)?
* :func:`supported` / :func:`unsupported_reason` - can this module simulate a node, and if
  not, why (:data:`SUPPORTED_OP_TYPES`; e.g. ``MVAU_rtl`` instantiates Xilinx DSP primitives).
* :func:`simulate_rtl_node` - ``(model, node, inputs, work_dir, cache_dir=None) -> outputs``:
  generates the node's HDL with finn's own ``generate_hdl`` (``code_gen_dir_ipgen`` =
  ``work_dir/<node name>``; for ``Thresholding_rtl`` this also writes the threshold memory
  files ``<node>_threshs_<pe>_<stage>.dat`` that the HDL reads with ``$readmemh``), compiles it
  with Verilator and a small C++ harness (cached, see below), streams all input samples back
  to back through ONE simulation run and returns the outputs in the node's normal output
  shape (stacked over the samples when several are given). Inputs are packed and outputs
  unpacked with finn's ``npy_to_rtlsim_input`` / ``rtlsim_output_to_npy``, exactly as the
  rtlsim branch of the node's ``execute_node`` does, so the result is what FINN's rtlsim
  would return.
* :func:`build_rtl_node` - the generation + compile step alone (returns a
  :class:`RtlSimBuild`: cache key, cached or not, compile seconds, binary).
* :func:`known_differences` - the known RTL-vs-Python differences that apply to a node.

The C++ harness (``finn_flow/verilator_harness.cpp``, read into :data:`HARNESS_CPP`) drives
the node's top module as finn's wrappers define it: ``ap_clk``, ``ap_rst_n`` (16 reset
cycles), AXI-stream ``in0_V_*`` and ``out0_V_*`` (any width: Verilator's ``CData``..``QData``
and ``VlWide``); every other input port (AXI-lite, the unused set-selection stream of
thresholding) stays 0. A word moves only on a clock edge with ``TVALID && TREADY``;
``stall`` (a probability) lets the harness withhold ``TVALID`` and ``TREADY`` at random
(reproducibly) to exercise back-pressure. The run fails (``FinnFlowError``) if the node
accepts fewer input words than given, produces fewer output words than its folded output
shape needs, produces surplus words within 64 cycles after the last expected one (except
``FMPadding_rtl``, which starts on the next frame's padding), or fails one of finn-rtllib's
immediate assertions (compiled in with ``--assert``; Verilator aborts the run).

Cache: ``cache_dir`` (default ``$APQ_CACHE_DIR``, else ``$XDG_CACHE_HOME/brevitas-apq``,
else ``~/.cache/brevitas-apq``: :func:`finn_flow.kernel_cache.default_cache_dir`), subfolder
``verilator/<key>/`` holding ``sim`` (the compiled model), ``src/`` (the HDL it was built from),
``verilator.log`` and ``meta.json``. The key is the SHA-256 of the HDL files (name and
content, in finn's file-list order), the node's runtime memory files (threshold ``.dat``
files), the top module name, the harness source, the Verilator command line and
``verilator --version``. An entry is built in a temporary sibling folder and renamed into
place when complete, so concurrent builds are safe and an interrupted one leaves nothing a
later run would trust. A rebuild of an unchanged node runs no compiler.

Supported (pinned by ``tests/finn_flow/test_verilator.py``): ``Thresholding_rtl`` (integer and
FLOAT32 inputs, any PE), ``Reshape_rtl`` (finn-plus builds it from the data width converter
with equal input and output width: a pass-through, the reshape only relabels the stream),
``StreamingDataWidthConverter_rtl`` and ``FMPadding_rtl``. Two finn-rtllib files need a
source-level workaround for Verilator 5.006, applied to the compiled copies only (recorded in
the cache entry's ``meta.json``): ``vpc.sv`` (data width converter; its recursive constant
function ``gcd`` becomes a loop) and ``fmpadding.sv`` (an unpacked struct becomes packed,
Verilator 5.006 emits C++ that does not compile for it). Not supported, with the reason
:func:`unsupported_reason` gives: ``MVAU_rtl`` / ``VVAU_rtl`` (Xilinx DSP primitives
``DSP48E1/E2``/``DSP58`` without open simulation models; Verilator 5.006 also rejects
``mvu.sv``: "syntax error, unexpected iff"), ``StreamingFIFO_rtl`` (Verilator 5.006 cannot
elaborate ``fifo.sv``; finn executes FIFOs in Python even in rtlsim mode), thresholding with
several threshold sets (MLO/``bodies``: needs the set-selection stream) and every other
``*_rtl`` op (not tried).

Known differences between the RTL (hence the hardware) and FINN's Python execution
(finn-plus 1.6.1; :func:`known_differences` lists those that apply to a node):

* ``Thresholding_rtl`` whose output type is wider than ``clog2(numSteps + 1)`` bits (a
  negative ``ActVal`` that needs the extra bit, e.g. 15 thresholds, ``ActVal=-10``, INT5):
  finn's ``make_weight_file`` writes the threshold memory for ``outputDataType.bitwidth()``
  binary-search stages (thresholds zero-padded to ``2**bits - 1``), while the RTL template
  gets ``N = numSteps`` and reads ``clog2(N + 1)`` stages. The hardware then compares against
  the wrong thresholds; FINN's Python execution (and cppsim, which falls back to it) hides
  this. With the memory files written for ``clog2(N + 1)`` stages the RTL matches Python:
  :mod:`finn_flow.finn_fixes` does that whenever finn_flow drives FINN (also here).
* Float inputs: the RTL compares IEEE floats as sign-magnitude bit patterns, so an input
  ``-0.0`` against a threshold ``+0.0`` counts as *below* it, where Python's ``x >= T``
  counts it as reached.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from finn_flow.errors import FinnFlowError
from finn_flow.graph import node_attr
from finn_flow.kernel_cache import atomic_folder, default_cache_dir, first_errors, sha256_of

__all__ = [
    "HARNESS_CPP",
    "LEVEL",
    "SUPPORTED_OP_TYPES",
    "RtlSimBuild",
    "build_rtl_node",
    "known_differences",
    "simulate_rtl_node",
    "supported",
    "unsupported_reason",
    "verilator_available",
    "verilator_version",
]

log = logging.getLogger("finn_flow")

#: Verification level of a node simulated by this module.
LEVEL = "rtl-verilator"
#: ``*_rtl`` op types this module can simulate (subject to :func:`unsupported_reason`).
SUPPORTED_OP_TYPES = (
    "Thresholding_rtl",
    "Reshape_rtl",
    "StreamingDataWidthConverter_rtl",
    "FMPadding_rtl",
)
#: Why the other ``*_rtl`` op types of finn-plus 1.6.1 are not simulated.
_NOT_SUPPORTED = {
    "MVAU_rtl": (
        "its HDL (finn-rtllib mvu/mvu_tiled) instantiates Xilinx DSP primitives (DSP48E1/DSP48E2/"
        "DSP58) whose simulation models are not open source, and Verilator 5.006 rejects mvu.sv "
        "(syntax error, unexpected iff); it stays at Python execution"
    ),
    "VVAU_rtl": (
        "its HDL (finn-rtllib mvu) instantiates Xilinx DSP primitives (DSP48E2/DSP58) whose "
        "simulation models are not open source; it stays at Python execution"
    ),
    "StreamingFIFO_rtl": (
        "Verilator 5.006 cannot elaborate fifo.sv (constant functions returning unpacked "
        "structs, e.g. INIT_ABITS(); assignment patterns it rejects once those are packed), and "
        "fifo_gauge.sv (the FINN_SIMULATION model) does not parse; a FIFO only passes data "
        "through, and finn-plus executes StreamingFIFO_rtl in Python even in rtlsim mode"
    ),
}
#: Bump when the harness, the compile command or the cache layout change (part of the key).
HARNESS_VERSION = "1"
#: finn's generate_hdl wants a part and a clock; none of the supported ops uses them.
_FPGA_PART = "xc7z020clg400-1"
_CLK_NS = 10.0
#: Verilator options besides the file list and the top module.
_VERILATOR_FLAGS = (
    "--cc",
    "--exe",
    "--build",
    "-j",
    "1",
    "--no-timing",
    "--assert",
    "--prefix",
    "Vtop",
    "-Wno-fatal",
    "-Wno-lint",
    "-Wno-style",
    "-Wno-SELRANGE",
)
#: Files of a node's code-generation folder that are ours, not finn's.
_OWN_FILES = {"in.hex", "out.hex", "harness.log", "verilator.log"}


@dataclass(frozen=True)
class _Patch:
    name: str
    pattern: re.Pattern
    replacement: str


#: Source-level workarounds for Verilator 5.006, applied to the copies that are compiled
#: (finn's files are not touched). Each leaves the synthesised logic unchanged.
_PATCHES = {
    # dwc/hdl/vpc.sv (Reshape_rtl, StreamingDataWidthConverter_rtl): the constant function
    # gcd() is recursive, which Verilator 5.006 does not support ("Unsupported: Recursive
    # function or task call"). Same function as a loop.
    "vpc.sv": (
        _Patch(
            "gcd as a loop",
            re.compile(
                r"function int unsigned gcd\(input int unsigned\s+a, input int unsigned\s+b\);"
                r"\s*return \(b == 0\)\? a : gcd\(b, a % b\);\s*endfunction"
            ),
            "function automatic int unsigned gcd(input int unsigned  a, input int unsigned  b);\n"
            "\t\t// brevitas-apq: Euclid's algorithm as a loop (Verilator 5.006 rejects the\n"
            "\t\t// original recursive form); same result.\n"
            "\t\tint unsigned  t;\n"
            "\t\twhile(b != 0) begin\n"
            "\t\t\tt = b;\n"
            "\t\t\tb = a % b;\n"
            "\t\t\ta = t;\n"
            "\t\tend\n"
            "\t\treturn a;\n"
            "\tendfunction",
        ),
    ),
    # fmpadding/hdl/fmpadding.sv (FMPadding_rtl): Verilator 5.006 emits C++ that does not
    # compile for the unpacked struct buf_t initialised with an assignment pattern ("no match
    # for operator="). A packed struct of the same two fields holds the same state.
    "fmpadding.sv": (
        _Patch(
            "buf_t as a packed struct",
            re.compile(
                r"typedef struct \{(\s*logic\s+vld;\s*logic \[STREAM_BITS-1:0\]\s+dat;\s*)\} buf_t;"
            ),
            "typedef struct packed {  // brevitas-apq: packed for Verilator 5.006\n"
            "\t\tlogic  vld;\n\t\tlogic [STREAM_BITS-1:0]  dat;\n\t} buf_t;",
        ),
    ),
}
#: Ops that emit output not derived from input (padding) as soon as they can: after the last
#: sample they start on the next frame, so output words beyond the expected ones are normal.
_EMITS_AHEAD = frozenset({"FMPadding_rtl"})
#: Cycles without any handshake after which the harness gives up (deadlock).
_IDLE_LIMIT = 100_000

#: The C++ harness that drives a node's Verilator model (``verilator_harness.cpp`` beside this
#: module; written to the build folder as ``harness.cpp``, part of the cache key).
HARNESS_CPP = (Path(__file__).parent / "verilator_harness.cpp").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- support
def verilator_available() -> bool:
    """True if a working ``verilator`` is on ``PATH``."""
    return _verilator_exe() is not None and verilator_version() is not None


def _verilator_exe() -> str | None:
    return shutil.which("verilator")


def verilator_version() -> str | None:
    """``verilator --version`` (first line), or None when Verilator is missing or broken."""
    exe = _verilator_exe()
    return _version_of(exe) if exe else None


@functools.cache
def _version_of(exe: str) -> str | None:
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    except OSError:
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0] if out.returncode == 0 and lines else None


def _require_verilator() -> str:
    exe = _verilator_exe()
    if exe is None or verilator_version() is None:
        where = "is not on PATH" if exe is None else f"at {exe} does not run"
        raise FinnFlowError(
            f"RTL simulation with Verilator needs the `verilator` executable, which {where}: "
            "install the Debian/Ubuntu package `verilator` (apt-get install verilator; "
            "tested with 5.006), plus make and g++."
        )
    return exe


def unsupported_reason(node) -> str | None:
    """Why :func:`simulate_rtl_node` cannot simulate ``node`` (an ONNX NodeProto), or None."""
    op = node.op_type
    if op in _NOT_SUPPORTED:
        return f"{op} is not simulated with Verilator: {_NOT_SUPPORTED[op]}."
    if op not in SUPPORTED_OP_TYPES:
        if not op.endswith("_rtl"):
            return f"{op} is not an RTL node (only *_rtl nodes have HDL to simulate)."
        return (
            f"{op} is not supported by finn_flow.verilator (not tried; supported: "
            f"{', '.join(SUPPORTED_OP_TYPES)})."
        )
    if op == "Thresholding_rtl":
        sets = max(
            int(node_attr(node, "mlo_max_iter", 0) or 0), int(node_attr(node, "bodies", 0) or 0)
        )
        if sets > 1:
            return (
                f"{op} with {sets} threshold sets (mlo_max_iter/bodies) needs the set-selection "
                "stream in1_V, which the harness does not drive."
            )
    return None


def supported(node) -> bool:
    """True if :func:`simulate_rtl_node` can simulate ``node`` (see :data:`SUPPORTED_OP_TYPES`)."""
    return unsupported_reason(node) is None


def known_differences(node) -> list[str]:
    """Known ways ``node``'s RTL (hence the hardware) differs from FINN's Python execution.

    Empty when none is known for the node's attributes. Checked for ``Thresholding_rtl``: an
    output type whose width differs from the
    RTL's result width ``O_BITS`` (the stream lanes would not line up; cannot happen when the
    output type is the smallest one for ``[ActVal, numSteps + ActVal]``, as finn infers it)
    and, with FLOAT32/FLOAT16 inputs, the ``-0.0``
    comparison. Each entry is one sentence; the first word names the kind ("output stream",
    "float inputs"). (The threshold memory written for the wrong number of stages is fixed by
    :mod:`finn_flow.finn_fixes`.)
    """
    if node.op_type != "Thresholding_rtl":
        return []
    from qonnx.core.datatype import DataType

    out: list[str] = []
    steps = int(node_attr(node, "numSteps", 1))
    odt = DataType[node_attr(node, "outputDataType", "")]
    bias = int(node_attr(node, "ActVal", 0))
    if bias >= 0:  # the RTL's output lane width (thresholding.sv O_BITS)
        o_bits = max(0, steps + bias).bit_length()
    else:
        o_bits = (
            1 + max(0, (-bias if -bias >= steps + bias + 1 else steps + bias + 1) - 1).bit_length()
        )
    if o_bits != odt.bitwidth():
        out.append(
            f"output stream: the RTL packs {o_bits}-bit results per PE, finn unpacks "
            f"{odt.bitwidth()}-bit {odt.name} lanes"
        )
    idt = node_attr(node, "inputDataType", "")
    if idt in ("FLOAT32", "FLOAT16"):
        out.append(
            "float inputs: the RTL counts an input -0.0 as below a threshold +0.0 (sign-magnitude "
            "comparison), Python as reaching it"
        )
    return out


# ------------------------------------------------------------------------------- cache
def _run_verilator(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run one Verilator build (a seam for tests counting compiler runs)."""
    env = dict(os.environ, MAKEFLAGS="-j1")
    return subprocess.run(
        args, cwd=str(cwd), env=env, capture_output=True, text=True, errors="replace", check=False
    )


# ------------------------------------------------------------------------------- build
@dataclass
class RtlSimBuild:
    """One node's Verilator model, ready to run in its code-generation folder."""

    node: str
    op_type: str
    #: Cache key (SHA-256, see the module docstring).
    key: str
    #: True if no compiler ran (the model came from the cache).
    cached: bool
    #: Seconds for HDL generation, and for the Verilator build (0 when cached).
    generate_seconds: float
    compile_seconds: float
    #: The compiled model (in the cache).
    executable: str
    #: The node's code-generation folder (HDL, memory files; the model runs here).
    code_gen_dir: str
    top_module: str

    def as_dict(self) -> dict:
        return asdict(self)


def _node_proto(model, node):
    if isinstance(node, str):
        found = model.get_node_from_name(node)
        if found is None:
            raise FinnFlowError(f"The model has no node named {node!r}.")
        return found
    return node


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "node"


def _generate(model, node, code_gen_dir: Path):
    """Run finn's generate_hdl for a copy of ``node`` into ``code_gen_dir``; return the op."""
    from qonnx.custom_op.registry import getCustomOp

    if code_gen_dir.exists():
        shutil.rmtree(code_gen_dir)
    code_gen_dir.mkdir(parents=True)
    inst = getCustomOp(copy.deepcopy(node))
    inst.set_nodeattr("code_gen_dir_ipgen", str(code_gen_dir))
    try:
        inst.generate_hdl(model, _FPGA_PART, _CLK_NS)
    except Exception as exc:
        raise FinnFlowError(
            f"finn's HDL generation for node {node.name} ({node.op_type}) failed: {exc}"
        ) from exc
    return inst


def _sources(inst, code_gen_dir: Path) -> tuple[list[tuple[str, bytes]], list[Path], list[str]]:
    """The node's HDL (name, content; finn's list order, patched), its runtime memory files
    and the patches applied (names)."""
    hdl = [Path(p) for p in inst.get_rtl_file_list(abspath=True)]
    missing = [str(p) for p in hdl if not p.is_file()]
    if missing:
        raise FinnFlowError(f"HDL files of node {inst.onnx_node.name} missing: {missing}")
    names = [p.name for p in hdl]
    if len(set(names)) != len(names):
        raise FinnFlowError(f"Node {inst.onnx_node.name} has HDL files of equal names: {names}")
    sources, applied = [], []
    for path in hdl:
        text = path.read_text()
        for patch in _PATCHES.get(path.name, ()):
            text, n = patch.pattern.subn(lambda _m, p=patch: p.replacement, text, count=1)
            if n:
                applied.append(f"{path.name}: {patch.name}")
            else:
                log.warning(
                    "%s is not the version the Verilator patch %r was written for; left unchanged",
                    path,
                    patch.name,
                )
        sources.append((path.name, text.encode()))
    hdl_set = {p.resolve() for p in hdl}
    data = sorted(
        p
        for p in code_gen_dir.iterdir()
        if p.is_file()
        and p.resolve() not in hdl_set
        and p.suffix not in (".v", ".sv")
        and p.name not in _OWN_FILES
    )
    return sources, data, applied


def build_rtl_node(model, node, work_dir, cache_dir=None) -> RtlSimBuild:
    """Generate ``node``'s HDL into ``work_dir/<node name>`` and compile it (cached).

    ``model`` is the FINN ModelWrapper holding ``node`` (a NodeProto or node name); the node
    itself is not modified (finn's generate_hdl runs on a copy). Raises FinnFlowError when
    Verilator is missing, the node is not supported, or the build fails (with the log).
    """
    from finn_flow.no_vivado import finn_session

    work = Path(work_dir).absolute()
    with finn_session(work):
        import finn.custom_op.fpgadataflow.rtl  # noqa: F401  (registers the RTL ops)

        return _build(model, node, work, cache_dir)[0]


def _check(model, node):
    node = _node_proto(model, node)
    reason = unsupported_reason(node)
    if reason is not None:
        raise FinnFlowError(f"Node {node.name}: {reason}")
    _require_verilator()
    return node


def _build(model, node, work: Path, cache_dir) -> tuple[RtlSimBuild, object]:
    node = _check(model, node)
    exe = _require_verilator()
    t0 = time.perf_counter()
    code_gen_dir = work / _safe_name(node.name)
    inst = _generate(model, node, code_gen_dir)
    top = inst.get_nodeattr("gen_top_module") or inst.get_verilog_top_module_name()
    hdl, data, patches = _sources(inst, code_gen_dir)
    t_generate = time.perf_counter() - t0

    flags = [*_VERILATOR_FLAGS, "--top-module", top]
    parts: list[bytes | str] = [
        HARNESS_VERSION,
        HARNESS_CPP,
        verilator_version() or "",
        " ".join(flags),
        top,
    ]
    for name, content in hdl:
        parts += ["hdl", name, content]
    for path in data:
        parts += ["data", path.name, path.read_bytes()]
    key = sha256_of(*parts)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    entry = cache.absolute() / "verilator" / key

    def compile_into(tmp: Path) -> None:
        src = tmp / "src"
        src.mkdir()
        for name, content in hdl:
            (src / name).write_bytes(content)
        (src / "harness.cpp").write_text(HARNESS_CPP)
        args = [
            exe,
            *flags,
            "--Mdir",
            str(tmp / "obj"),
            "-o",
            str(tmp / "sim"),
            *(str(src / name) for name, _ in hdl),
            str(src / "harness.cpp"),
        ]
        proc = _run_verilator(args, tmp)
        log_text = f"$ {' '.join(args)}\n\n{proc.stdout}\n{proc.stderr}"
        (tmp / "verilator.log").write_text(log_text)
        if proc.returncode != 0 or not (tmp / "sim").is_file():
            failed = code_gen_dir / "verilator.log"
            failed.write_text(log_text)
            raise FinnFlowError(
                f"Verilator build of node {node.name} ({node.op_type}) failed:\n"
                f"{first_errors(proc.stdout + proc.stderr)}\nFull log: {failed}"
            )
        shutil.rmtree(tmp / "obj", ignore_errors=True)
        (tmp / "meta.json").write_text(
            json.dumps(
                {
                    "node": node.name,
                    "op_type": node.op_type,
                    "top_module": top,
                    "hdl": [name for name, _ in hdl],
                    "patches": patches,
                    "data": [p.name for p in data],
                    "verilator": verilator_version(),
                    "harness_version": HARNESS_VERSION,
                },
                indent=1,
            )
        )

    t1 = time.perf_counter()
    built = atomic_folder(entry, compile_into)
    t_compile = time.perf_counter() - t1 if built else 0.0
    if built:
        log.info("Verilator: compiled %s (%s) in %.1f s", node.name, node.op_type, t_compile)
    build = RtlSimBuild(
        node=node.name,
        op_type=node.op_type,
        key=key,
        cached=not built,
        generate_seconds=round(t_generate, 3),
        compile_seconds=round(t_compile, 3),
        executable=str(entry / "sim"),
        code_gen_dir=str(code_gen_dir),
        top_module=top,
    )
    return build, inst


# ---------------------------------------------------------------------------- simulate
def _samples(inst, model, node, inputs) -> tuple[list[np.ndarray], bool]:
    """Per-sample float32 arrays (any shape of the right size) and whether to stack."""
    size = int(np.prod(inst.get_normal_input_shape(0)))
    if isinstance(inputs, list | tuple):
        arrays = [np.asarray(x, dtype=np.float32) for x in inputs]
        for i, arr in enumerate(arrays):
            if arr.size != size:
                raise FinnFlowError(
                    f"Input {i} for node {node.name} has shape {arr.shape} ({arr.size} values); "
                    f"the node reads {tuple(inst.get_normal_input_shape(0))} ({size} values)."
                )
        return arrays, True
    arr = np.asarray(inputs, dtype=np.float32)
    shapes = {tuple(inst.get_normal_input_shape(0))}
    tensor_shape = model.get_tensor_shape(node.input[0])
    if tensor_shape is not None:
        shapes.add(tuple(tensor_shape))
    if arr.shape in shapes:
        return [arr], False
    if arr.ndim == 0 or arr.size % size != 0 or arr.size == 0:
        raise FinnFlowError(
            f"Inputs of shape {arr.shape} for node {node.name} do not split into samples of "
            f"{tuple(inst.get_normal_input_shape(0))} ({size} values)."
        )
    return list(arr.reshape(-1, size)), True


def _pack(inst, sample: np.ndarray) -> list[int]:
    """Input words of one sample, as the node's rtlsim execute_node packs them."""
    from finn.util.data_packing import npy_to_rtlsim_input
    from qonnx.core.datatype import DataType

    x = sample.reshape(inst.get_folded_input_shape(0))
    idt = inst.get_input_datatype(0)
    if inst.onnx_node.op_type == "Thresholding_rtl" and idt == DataType["BIPOLAR"]:
        x, idt = (x + 1) / 2, DataType["BINARY"]  # as Thresholding_rtl.execute_node
    return list(npy_to_rtlsim_input(x.copy(), idt, inst.get_instream_width(0)))


def _unpack(inst, words: list[int]) -> np.ndarray:
    from finn.util.data_packing import rtlsim_output_to_npy

    odt = inst.get_output_datatype(0)
    out = rtlsim_output_to_npy(
        words,
        None,
        odt,
        inst.get_folded_output_shape(0),
        inst.get_outstream_width(0),
        odt.bitwidth(),
    )
    return np.asarray(out, dtype=np.float32).reshape(inst.get_normal_output_shape(0))


def simulate_rtl_node(
    model,
    node,
    inputs: list[np.ndarray] | np.ndarray,
    work_dir,
    cache_dir=None,
    *,
    stall: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Simulate one ``*_rtl`` node of a FINN HW graph with Verilator; return its outputs.

    ``model``: the specialised ModelWrapper holding ``node`` (NodeProto or node name; not
    modified). ``inputs``: what FINN's Python execution feeds the node's data input - an
    array of the node's normal input shape (or its tensor shape in ``model``) for one
    sample, or a list of such arrays / a stacked array (first axis = samples) for several.
    Returns float32 outputs of the node's normal output shape, stacked over the samples
    unless a single unstacked sample was given. All samples stream back to back through one
    simulation run. ``work_dir`` holds the generated HDL and the run's files
    (``work_dir/<node name>/``); ``cache_dir`` the compiled models (see the module
    docstring). ``stall`` in [0, 1): probability per cycle that the harness withholds
    ``TVALID`` / ``TREADY`` (back-pressure test; ``seed`` makes it reproducible).
    """
    from finn_flow.no_vivado import finn_session

    if not 0.0 <= stall < 1.0:
        raise FinnFlowError(f"stall must be in [0, 1), got {stall}")
    node = _check(model, node)
    work = Path(work_dir).absolute()
    with finn_session(work):
        import finn.custom_op.fpgadataflow.rtl  # noqa: F401  (registers the RTL ops)

        build, inst = _build(model, node, work, cache_dir)
        samples, stacked = _samples(inst, model, node, inputs)
        words: list[int] = []
        for sample in samples:
            words += _pack(inst, sample)
        per_sample = int(np.prod(inst.get_folded_output_shape(0)[:-1]))
        n_out = per_sample * len(samples)
        out_words = _run(build, words, n_out, stall, seed)
        outs = [
            _unpack(inst, out_words[i * per_sample : (i + 1) * per_sample])
            for i in range(len(samples))
        ]
    return np.stack(outs) if stacked else outs[0]


def _run(build: RtlSimBuild, words: list[int], n_out: int, stall: float, seed: int) -> list[int]:
    folder = Path(build.code_gen_dir)
    (folder / "in.hex").write_text("".join(f"{w:x}\n" for w in words))
    args = [
        build.executable,
        "in.hex",
        "out.hex",
        str(n_out),
        repr(float(stall)),
        str(int(seed)),
        str(_IDLE_LIMIT),
        "0" if build.op_type in _EMITS_AHEAD else "1",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(
        args, cwd=str(folder), capture_output=True, text=True, errors="replace", check=False
    )
    (folder / "harness.log").write_text(f"$ {' '.join(args)}\n{proc.stdout}\n{proc.stderr}")
    summary = next(
        (ln for ln in proc.stderr.splitlines() if ln.startswith("apq-harness:")), proc.stderr
    )
    if proc.returncode != 0:
        what = {
            3: "stopped before consuming all input words / producing all output words",
            4: "produced more output words than its folded output shape",
        }.get(proc.returncode, f"failed (exit {proc.returncode})")
        raise FinnFlowError(
            f"Verilator simulation of node {build.node} ({build.op_type}) {what}: "
            f"{summary.strip()[:800]} (log: {folder / 'harness.log'})"
        )
    log.debug("Verilator %s: %s (%.2f s)", build.node, summary, time.perf_counter() - t0)
    out = [int(line, 16) for line in (folder / "out.hex").read_text().split()]
    if len(out) != n_out:
        raise FinnFlowError(
            f"Verilator simulation of node {build.node}: {len(out)} output words, expected {n_out}."
        )
    return out
