"""Compiling the C++ simulation (cppsim) of the ``*_hls`` nodes of a FINN graph: cached, parallel.

:func:`compile_cppsim` does what finn-plus's ``PrepareCppSim`` + ``CompileCppSim`` do, without
the Xilinx tools (:mod:`finn_flow.hls_toolchain` provides the headers) and without compiling a
kernel twice:

* finn's ``PrepareCppSim`` generates each node's code in ``work_dir/nodes/<node name>``;
  finn's own ``compile_singlenode_code`` writes the node's ``compile.sh`` (not run).
* The kernel's cache key (:mod:`finn_flow.kernel_cache`) is the SHA-256 of the node's generated
  sources, finn's compile command and the toolchain's fingerprint (header contents, g++
  version, finn version). Generated sources name their code-generation folder in absolute
  ``.npy`` paths; the key and the cached binary use ``./`` instead. Compiled kernels live in
  ``cppsim-kernels/<key[:2]>/<key>/node_model``; identical kernels of one graph compile once, and a
  rebuild copies cached binaries instead of compiling.
* The compile commands run in parallel threads (``jobs``), with a progress bar; a failure
  names the node, quotes the compiler's first errors and keeps the full log.
* Each node's ``executable_path`` is a two-line script (``run_cppsim.sh``) that runs the
  binary in its code-generation folder (the kernel reads and writes ``./input_*.npy`` /
  ``./output_*.npy``).

Usage (a specialised HW graph; the call opens its own FINN session in ``work_dir``)::

    cpp_model, report = compile_cppsim(model, toolchain=HlsToolchain.resolve(), jobs=2)
    print(report.n_compiled, report.n_cached)

:mod:`finn_flow.cppsim` runs the compiled graph and compares it with FINN's Python execution.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from finn_flow.errors import FinnFlowError
from finn_flow.graph import is_hls
from finn_flow.hls_toolchain import (
    SHIM_VERSION,
    HlsToolchain,
    PreparedToolchain,
    check_attention_widths,
)
from finn_flow.kernel_cache import atomic_folder, first_errors, sha256_of

__all__ = ["CompileReport", "KernelBuild", "compile_cppsim"]

log = logging.getLogger("finn_flow")

_CODEGEN_TOKEN = "@CODEGEN@"
_RUNNER = "run_cppsim.sh"
#: Files of a code-generation folder that are not inputs of the compiled kernel.
_NOT_SOURCES = re.compile(
    r"^(input_\d+\.npy|output_\d+\.npy|node_model|compile\.sh|compile\.log|"
    r"run_cppsim\.sh|cppsim_kernel\.json)$"
)


@dataclass
class KernelBuild:
    """One ``*_hls`` node's C++ simulation binary."""

    node: str
    op_type: str
    #: Cache key (SHA-256 of sources, command and toolchain).
    key: str
    #: True if no compiler ran for this node: the binary came from the cache, or from an
    #: identical node of the same graph compiled in this call.
    cached: bool
    #: Compile time in seconds (0 when cached).
    seconds: float
    #: The node's ``executable_path`` (a script running the binary in its code-gen folder).
    executable: str
    code_gen_dir: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CompileReport:
    """What :func:`compile_cppsim` did."""

    kernels: list[KernelBuild]
    jobs: int
    seconds: float
    cache_dir: str
    shim: bool

    @property
    def n_compiled(self) -> int:
        return sum(not k.cached for k in self.kernels)

    @property
    def n_cached(self) -> int:
        return sum(k.cached for k in self.kernels)

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(n_compiled=self.n_compiled, n_cached=self.n_cached)
        return out


@dataclass
class _Job:
    node: Any
    code_gen_dir: Path
    command: str  # finn's compile command with the code-gen folder as _CODEGEN_TOKEN
    sources: dict[str, bytes]  # name -> content with the code-gen folder as "."
    key: str = ""


@contextlib.contextmanager
def _capture_compile_commands() -> Iterator[None]:
    """Let finn's CppBuilder write compile.sh without running it."""
    import finn.util.basic as finn_basic

    original = finn_basic.launch_process_helper

    def not_run(args, *_, **__):
        return "", ""

    finn_basic.launch_process_helper = not_run
    try:
        yield
    finally:
        finn_basic.launch_process_helper = original


def _node_job(inst, node) -> _Job:
    """finn's compile command and the sources of a node, with its folder made relative."""
    code_gen_dir = Path(inst.get_nodeattr("code_gen_dir_cppsim"))
    inst.compile_singlenode_code()  # writes compile.sh (the compiler run is captured)
    script = (code_gen_dir / "compile.sh").read_text().splitlines()
    command = "\n".join(line for line in script if not line.startswith("#!")).strip()
    folder = str(code_gen_dir)
    command = command.replace(folder, _CODEGEN_TOKEN)
    sources: dict[str, bytes] = {}
    for path in sorted(code_gen_dir.iterdir()):
        if not path.is_file() or _NOT_SOURCES.match(path.name):
            continue
        data = path.read_bytes()
        if path.suffix in (".cpp", ".h", ".hpp", ".cc", ".c", ".tcl", ".txt", ".dat"):
            data = data.replace((folder + "/").encode(), b"./").replace(folder.encode(), b".")
        sources[path.name] = data
    return _Job(node=node, code_gen_dir=code_gen_dir, command=command, sources=sources)


def _job_key(job: _Job, prep: PreparedToolchain) -> str:
    parts: list[bytes | str] = [SHIM_VERSION, prep.fingerprint, job.command]
    for name in sorted(job.sources):
        parts += [name, job.sources[name]]
    return sha256_of(*parts)


def _run_compiler(command: str, cwd: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess:
    """Run one compile command (a seam for tests counting compiler runs)."""
    return subprocess.run(
        ["bash", "-c", command],
        cwd=str(cwd),
        env=dict(env),
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )


def _compile_job(job: _Job, prep: PreparedToolchain, env: Mapping[str, str]) -> Path:
    """Compile into the kernel cache (unless present); return the cache entry folder."""
    entry = prep.kernel_cache / job.key[:2] / job.key
    if (entry / ".complete").is_file():
        return entry

    def build(tmp: Path) -> None:
        src = tmp / "src"
        src.mkdir()
        for name, data in job.sources.items():
            (src / name).write_bytes(data)
        command = job.command.replace(_CODEGEN_TOKEN, str(src))
        proc = _run_compiler(command, src, env)
        log_text = f"$ {command}\n\n{proc.stdout}\n{proc.stderr}"
        (tmp / "compile.log").write_text(log_text)
        if proc.returncode != 0 or not (src / "node_model").is_file():
            failed = job.code_gen_dir / "compile.log"
            failed.write_text(log_text)
            hint = ""
            if "cannot find -l" in proc.stderr:
                hint = " (install libgmp-dev, libmpfr-dev and zlib1g-dev)"
            raise FinnFlowError(
                f"cppsim compile of node {job.node.name} ({job.node.op_type}) failed{hint}:\n"
                f"{first_errors(proc.stderr)}\nFull log: {failed}"
            )
        (src / "node_model").rename(tmp / "node_model")
        (tmp / "meta.json").write_text(
            json.dumps({"node": job.node.name, "op_type": job.node.op_type, "command": command})
        )
        shutil.rmtree(src)

    atomic_folder(entry, build)
    return entry


def _install(job: _Job, entry: Path) -> Path:
    """Copy the cached binary into the node's folder; return the runner script."""
    binary = job.code_gen_dir / "node_model"
    binary.unlink(missing_ok=True)
    shutil.copy2(entry / "node_model", binary)
    runner = job.code_gen_dir / _RUNNER
    runner.write_text(
        "#!/bin/sh\n"
        "# brevitas-apq cppsim: run the cached kernel in its code-generation folder (the kernel\n"
        "# reads and writes ./input_*.npy / ./output_*.npy)\n"
        'cd "$(dirname "$0")" && exec ./node_model "$@"\n'
    )
    runner.chmod(0o755)
    return runner


def compile_cppsim(
    model,
    *,
    toolchain: HlsToolchain | None = None,
    jobs: int = 2,
    progress: bool = True,
    work_dir: str | Path | None = None,
):
    """Generate, compile (cached) and attach the C++ simulation of every ``*_hls`` node.

    Returns ``(model, report)``: a copy of ``model`` whose ``*_hls`` nodes have
    ``code_gen_dir_cppsim`` (``work_dir/nodes/<node name>``) and ``executable_path`` set and
    ``exec_mode="cppsim"`` on all HW nodes, and a :class:`CompileReport`. ``toolchain``
    defaults to :meth:`HlsToolchain.resolve`; ``jobs`` compiler processes run at once.
    ``work_dir`` (a new temporary folder if None) holds the generated code and the FINN
    session's files; it must outlive the returned model's use.
    """
    from finn_flow.no_vivado import finn_session

    if jobs < 1:
        raise FinnFlowError(f"jobs must be >= 1, got {jobs}")
    tc = toolchain or HlsToolchain.resolve()
    prep = tc.prepare()
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="apq_cppsim_"))
    work = work.absolute()
    start = time.perf_counter()
    with finn_session(work), prep.finn_context():
        import finn.custom_op.fpgadataflow.reshape  # noqa: F401  (registers the HW domain)
        from finn.transformation.fpgadataflow.prepare_cppsim import PrepareCppSim
        from finn.transformation.fpgadataflow.set_exec_mode import SetExecMode
        from qonnx.custom_op.registry import getCustomOp

        model = model.transform(SetExecMode("cppsim"))
        nodes_dir = work / "nodes"
        hls_nodes = [n for n in model.graph.node if is_hls(n)]
        names = [n.name for n in hls_nodes]
        if len(set(names)) != len(names) or "" in names:
            raise FinnFlowError("cppsim needs unique node names (apply GiveUniqueNodeNames).")
        for node in hls_nodes:
            folder = nodes_dir / node.name
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            getCustomOp(node).set_nodeattr("code_gen_dir_cppsim", str(folder))
        model = model.transform(PrepareCppSim(num_workers=1))
        job_list = []
        with _capture_compile_commands():
            for node in model.graph.node:
                if not is_hls(node):
                    continue
                if prep.shim and node.op_type.startswith("ScaledDotProductAttention"):
                    check_attention_widths(model, node)
                job_list.append(_node_job(getCustomOp(node), node))
        for job in job_list:
            job.key = _job_key(job, prep)
        builds = _compile_all(job_list, prep, jobs, progress)
        for job in job_list:
            getCustomOp(job.node).set_nodeattr("executable_path", builds[job.node.name].executable)
    report = CompileReport(
        kernels=[builds[j.node.name] for j in job_list],
        jobs=jobs,
        seconds=time.perf_counter() - start,
        cache_dir=str(prep.kernel_cache),
        shim=prep.shim,
    )
    log.info(
        "cppsim: %d kernel(s), %d compiled, %d from cache (%.1f s)",
        len(report.kernels),
        report.n_compiled,
        report.n_cached,
        report.seconds,
    )
    return model, report


def _compile_all(
    job_list: list[_Job], prep: PreparedToolchain, jobs: int, progress: bool
) -> dict[str, KernelBuild]:
    from tqdm.auto import tqdm

    env = prep.compile_env()
    builds: dict[str, KernelBuild] = {}
    lock = threading.Lock()
    by_key: dict[str, list[_Job]] = {}
    for job in job_list:  # identical kernels (same key) compile once
        by_key.setdefault(job.key, []).append(job)

    def finish(job: _Job, entry: Path, cached: bool, seconds: float) -> None:
        runner = _install(job, entry)
        (job.code_gen_dir / "cppsim_kernel.json").write_text(
            json.dumps({"key": job.key, "cache_entry": str(entry), "cached": cached})
        )
        with lock:
            builds[job.node.name] = KernelBuild(
                node=job.node.name,
                op_type=job.node.op_type,
                key=job.key,
                cached=cached,
                seconds=round(seconds, 3),
                executable=str(runner),
                code_gen_dir=str(job.code_gen_dir),
            )

    todo = []
    for _key, group in by_key.items():
        entry = prep.kernel_cache / group[0].key[:2] / group[0].key
        if (entry / ".complete").is_file():
            for job in group:
                finish(job, entry, True, 0.0)
        else:
            todo.append(group)

    def work(group: list[_Job]) -> tuple[list[_Job], Path, float]:
        t0 = time.perf_counter()
        entry = _compile_job(group[0], prep, env)
        return group, entry, time.perf_counter() - t0

    errors: list[FinnFlowError] = []
    if todo:
        bar = tqdm(total=len(todo), desc="cppsim compile", unit="kernel", disable=not progress)
        with ThreadPoolExecutor(max_workers=min(jobs, len(todo))) as pool:
            futures = [pool.submit(work, group) for group in todo]
            for future in as_completed(futures):
                try:
                    group, entry, seconds = future.result()
                except FinnFlowError as exc:
                    errors.append(exc)
                    bar.update(1)
                    continue
                for i, job in enumerate(group):
                    finish(job, entry, i > 0, seconds if i == 0 else 0.0)
                bar.set_postfix_str(group[0].node.name)
                bar.update(1)
        bar.close()
    if errors:
        if len(errors) > 1:
            raise FinnFlowError(
                f"{len(errors)} cppsim compiles failed; the first:\n{errors[0]}"
            ) from errors[0]
        raise errors[0]
    return builds
