"""C++ simulation (cppsim) of a FINN dataflow graph's ``*_hls`` nodes with g++, without Vitis HLS.

finn-plus 1.6.1 simulates an HLS node in C++ by generating a test bench (``PrepareCppSim``),
compiling it with g++ against Vitis HLS's headers, finn-hlslib and attention-hlslib
(``CompileCppSim``) and running it on ``.npy`` files. This module does the same without the
Xilinx tools, and fast enough to run on every build:

* **Toolchain** (:class:`HlsToolchain`): the HLS C++ libraries come from a folder holding
  ``finn-hlslib/`` and ``attention-hlslib/`` (argument ``hls_dir`` / ``--hls-dir``, else the
  environment variable ``APQ_HLS_DIR``, else finn-plus's own ``finn deps update`` folder
  (``get_settings().finn_deps``) if it has both). With real Vitis HLS (``XILINX_HLS`` set and
  ``$XILINX_HLS/include/ap_int.h`` present) its headers and libraries are used unchanged.
  Otherwise a *shim* stands in for ``XILINX_HLS``: Xilinx's open-source ``ap_int``/``ap_fixed``
  headers (``HLS_arbitrary_Precision_Types/include`` in the HLS folder, or the ``hls4ml``
  wheel's copy) plus the small headers in ``finn_flow/hls_shim/`` (``hls_stream.h``,
  ``hls_vector.h``, ``hls_math.h``, ``ap_axi_sdata.h``, ``hls_half.h``), and empty stand-ins
  for the two Vitis libraries on finn's link line. The open-source ``ap_int`` is not a literal
  type, so attention-hlslib's ``limits.hpp`` is replaced by the same limits as 64-bit integer
  constants (widths <= 63, checked before compiling) in a copy of the library.
* **Cache** (one folder, ``$APQ_CACHE_DIR`` or ``$XDG_CACHE_HOME/brevitas-apq`` or
  ``~/.cache/brevitas-apq``): ``hls-shim-<hash>/`` (the fake ``XILINX_HLS``),
  ``hls-deps-<hash>/`` (finn-hlslib + patched attention-hlslib, finn's ``finn_deps`` while
  compiling) and ``cppsim-kernels/<key>/node_model``: compiled kernels keyed by the SHA-256 of
  the node's generated sources, finn's compile command and the toolchain's fingerprint
  (header contents, g++ version, finn version). Generated sources name their code-generation
  folder in absolute ``.npy`` paths; the key and the cached binary use ``./`` instead, and the
  node's ``executable_path`` is a two-line script that runs the binary in that folder. A
  rebuild copies cached binaries instead of compiling. Hashed paths make concurrent use safe
  (folders are completed under a temporary name and renamed).
* **Compile** (:func:`compile_cppsim`): finn's ``PrepareCppSim`` generates the code; finn's own
  ``compile_singlenode_code`` writes each node's ``compile.sh`` (not run); the commands run in
  parallel threads (``jobs``), with a progress bar.
* **Simulate** (:func:`simulate_cppsim` for a build's saved models, :func:`simulate_graph` for
  any HW graph): the whole graph in cppsim (``*_rtl`` nodes fall back to FINN's Python
  execution, as FINN does in cppsim mode) against FINN's Python execution, and every HW node
  in isolation: fed the Python execution's inputs, its cppsim output is compared with the
  Python output, so a difference is attributed to the node that makes it. Specialised
  ``*_hls``/``*_rtl`` nodes of finn-plus 1.6.1 accept only cppsim/rtlsim (attention also
  python), so the Python reference runs the graph with every node swapped for its generic
  HW op (:func:`python_model`), as :mod:`finn_flow.emulation` does before specialisation.

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
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from finn_flow.errors import FinnFlowError

__all__ = [
    "CACHE_DIR_ENV",
    "HLS_DIR_ENV",
    "CompileReport",
    "CppSimResult",
    "HlsToolchain",
    "KernelBuild",
    "NodeSimResult",
    "PreparedToolchain",
    "compile_cppsim",
    "default_cache_dir",
    "find_hw_model",
    "python_model",
    "simulate_cppsim",
    "simulate_graph",
]

log = logging.getLogger("finn_flow")

#: Environment variable naming the folder with ``finn-hlslib/`` and ``attention-hlslib/``.
HLS_DIR_ENV = "APQ_HLS_DIR"
#: Environment variable naming the cache folder (shim, patched libraries, compiled kernels).
CACHE_DIR_ENV = "APQ_CACHE_DIR"
HLSLIBS = ("finn-hlslib", "attention-hlslib")
#: The HW graph models a build saves, most specific first (see finn_flow.steps).
HW_MODEL_CANDIDATES = (
    "step_minimize_bit_width.onnx",
    "step_hw_codegen.onnx",
    "step_generate_estimate_reports.onnx",
    "step_attention_resource_estimate.onnx",
    "step_set_folding.onnx",
    "step_specialize_layers.onnx",
)
#: Bump when the shim, the patches or the cache layout change (part of every hash).
SHIM_VERSION = "1"
#: Widest ap_int/ap_uint the patched attention-hlslib limits.hpp supports.
MAX_LIMITS_WIDTH = 63

_HW_DOMAIN = "finn.custom_op.fpgadataflow"
_CODEGEN_TOKEN = "@CODEGEN@"
_RUNNER = "run_cppsim.sh"
#: Files of a code-generation folder that are not inputs of the compiled kernel.
_NOT_SOURCES = re.compile(
    r"^(input_\d+\.npy|output_\d+\.npy|node_model|compile\.sh|compile\.log|"
    r"run_cppsim\.sh|cppsim_kernel\.json)$"
)


def _is_hls(node) -> bool:
    return node.domain == f"{_HW_DOMAIN}.hls" or node.op_type.endswith("_hls")


def _is_rtl(node) -> bool:
    return node.domain == f"{_HW_DOMAIN}.rtl" or node.op_type.endswith("_rtl")


def _is_hw(node) -> bool:
    return node.domain.startswith(_HW_DOMAIN)


# ------------------------------------------------------------------------------- hashing
def sha256_of(*parts: bytes | str) -> str:
    """SHA-256 of length-prefixed parts (so that part boundaries matter): cache keys."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _tree_files(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*") if p.is_file() and ".git" not in p.relative_to(root).parts
    )


def _tree_hash(root: Path) -> str:
    """Content hash of a folder tree (relative paths and bytes; ``.git`` ignored)."""
    parts: list[bytes | str] = []
    for path in _tree_files(root):
        parts += [path.relative_to(root).as_posix(), path.read_bytes()]
    return sha256_of(*parts)


@functools.cache
def _compiler_version(compiler: str = "g++") -> str:
    exe = shutil.which(compiler)
    if exe is None:
        raise FinnFlowError(
            f"cppsim needs the C++ compiler {compiler!r}, which is not on PATH: install g++ "
            "(>= 12) and libgmp-dev, libmpfr-dev, zlib1g-dev (Debian/Ubuntu package names)."
        )
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else exe


def _finn_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("finn-plus")
    except PackageNotFoundError:
        return "unknown"


def _finn_package_dir() -> Path:
    spec = importlib.util.find_spec("finn")
    if spec is None or not spec.submodule_search_locations:
        raise FinnFlowError("cppsim needs finn-plus (pip install --no-deps finn-plus==1.6.1).")
    return Path(next(iter(spec.submodule_search_locations)))


# ----------------------------------------------------------------------------- toolchain
def default_cache_dir() -> Path:
    """``$APQ_CACHE_DIR``, else ``$XDG_CACHE_HOME/brevitas-apq``, else ``~/.cache/brevitas-apq``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "brevitas-apq"


def _finn_deps_dir() -> Path | None:
    """finn-plus's dependency folder (``finn deps update``), without creating settings files."""
    try:
        import finn.util.settings as finn_settings
    except ImportError:
        return None
    if finn_settings._SETTINGS is not None:
        return Path(finn_settings._SETTINGS.finn_deps)
    if os.environ.get("FINN_DEPS"):
        return Path(os.environ["FINN_DEPS"])
    from finn.interface.settings import FINN_ROOT

    return Path(FINN_ROOT) / "finn_deps"


def _has_hlslibs(folder: Path) -> bool:
    return all((folder / name).is_dir() for name in HLSLIBS)


def _real_vitis_hls() -> Path | None:
    root = os.environ.get("XILINX_HLS")
    if root and (Path(root) / "include" / "ap_int.h").is_file():
        return Path(root)
    return None


def _find_ap_types(hls_dir: Path) -> Path | None:
    """Folder with the open-source ``ap_int.h``: the HLS folder's copy, else hls4ml's."""
    local = hls_dir / "HLS_arbitrary_Precision_Types" / "include"
    if (local / "ap_int.h").is_file():
        return local
    spec = importlib.util.find_spec("hls4ml")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidate = Path(loc) / "templates" / "vivado" / "ap_types"
            if (candidate / "ap_int.h").is_file():
                return candidate
    return None


_HLS_DIR_HELP = (
    f"Set {HLS_DIR_ENV} (or pass --hls-dir / hls_dir=) to a folder holding finn-hlslib/ and "
    "attention-hlslib/ (and HLS_arbitrary_Precision_Types/ for ap_int.h without Vitis HLS), "
    "e.g. the project's ../shared/hls; with network access `finn deps update` fetches the "
    "libraries into finn-plus's own deps folder instead."
)


@dataclass(frozen=True)
class HlsToolchain:
    """Where cppsim takes its C++ headers and libraries from (see the module docstring).

    Build one with :meth:`resolve`; :meth:`prepare` creates the shim and the patched library
    copy in the cache (once per content hash) and returns the paths the compiler uses.
    """

    #: Folder holding ``finn-hlslib/`` and ``attention-hlslib/``.
    hls_dir: Path
    #: Open-source ``ap_int.h`` folder for the shim; None with real Vitis HLS.
    ap_types: Path | None
    #: Real Vitis HLS installation (``XILINX_HLS``), or None to use the shim.
    xilinx_hls: Path | None
    #: Cache root (shim, patched libraries, compiled kernels).
    cache_dir: Path
    #: Where ``hls_dir`` came from (for messages): argument, APQ_HLS_DIR or finn deps.
    source: str = "argument"

    @property
    def uses_shim(self) -> bool:
        return self.xilinx_hls is None

    @classmethod
    def resolve(
        cls, hls_dir: str | Path | None = None, cache_dir: str | Path | None = None
    ) -> HlsToolchain:
        """Find the HLS sources: ``hls_dir``, else ``$APQ_HLS_DIR``, else finn's deps folder.

        Raises FinnFlowError (naming ``APQ_HLS_DIR`` / ``--hls-dir``) when the folder is
        missing or incomplete, or when no ``ap_int.h`` is available.
        """
        source = "argument hls_dir (--hls-dir)"
        if hls_dir is None and os.environ.get(HLS_DIR_ENV):
            hls_dir, source = os.environ[HLS_DIR_ENV], f"environment variable {HLS_DIR_ENV}"
        if hls_dir is None:
            deps = _finn_deps_dir()
            if deps is None or not _has_hlslibs(deps):
                where = f" finn-plus's deps folder {deps} does not hold both." if deps else ""
                raise FinnFlowError(
                    f"cppsim needs the HLS C++ libraries {' and '.join(HLSLIBS)}, and no folder "
                    f"with them is configured.{where} {_HLS_DIR_HELP}"
                )
            hls_dir, source = deps, "finn-plus deps folder (get_settings().finn_deps)"
        folder = Path(hls_dir).expanduser().resolve()
        if not folder.is_dir():
            raise FinnFlowError(
                f"HLS folder {folder} (from {source}) does not exist. {_HLS_DIR_HELP}"
            )
        missing = [name for name in HLSLIBS if not (folder / name).is_dir()]
        if missing:
            raise FinnFlowError(
                f"HLS folder {folder} (from {source}) lacks {', '.join(f'{m}/' for m in missing)}. "
                f"{_HLS_DIR_HELP}"
            )
        xilinx = _real_vitis_hls()
        ap_types = None
        if xilinx is None:
            ap_types = _find_ap_types(folder)
            if ap_types is None:
                raise FinnFlowError(
                    f"No ap_int.h for cppsim without Vitis HLS: {folder} has no "
                    "HLS_arbitrary_Precision_Types/include/ap_int.h (Xilinx's open-source "
                    "ap_int/ap_fixed headers) and the hls4ml package is not installed. Put the "
                    f"headers there, or set XILINX_HLS to a Vitis HLS installation. {_HLS_DIR_HELP}"
                )
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        return cls(folder, ap_types, xilinx, cache.resolve(), source)

    def prepare(self) -> PreparedToolchain:
        """Create (once, cached by content) the shim and library copies; return their paths."""
        return _prepare(self)


@dataclass(frozen=True)
class PreparedToolchain:
    """The paths finn's compile command is pointed at, and the toolchain's fingerprint."""

    #: ``XILINX_HLS`` for the compile: the real installation or the shim folder.
    xilinx_hls: Path
    #: finn's ``finn_deps`` setting for the compile (holds finn-hlslib, attention-hlslib).
    finn_deps: Path
    #: ``FINN_CUSTOM_HLS`` (finn-plus's ``custom_hls`` folder).
    custom_hls: Path
    #: Hash of everything a compiled kernel depends on besides its own sources and command.
    fingerprint: str
    shim: bool
    #: Kernel cache folder.
    kernel_cache: Path


def atomic_folder(dest: Path, build) -> bool:
    """Create ``dest`` by ``build(tmp)`` in a temporary sibling folder and a rename (safe
    against concurrent and interrupted builds). False if ``dest`` was already complete."""
    if (dest / ".complete").is_file():
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        build(tmp)
        (tmp / ".complete").write_text("")
        if dest.exists() and not (dest / ".complete").is_file():
            shutil.rmtree(dest, ignore_errors=True)  # an interrupted earlier attempt
        try:
            tmp.rename(dest)
        except OSError:
            if not (dest / ".complete").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return True


def _shim_source_dir() -> Path:
    return Path(__file__).parent / "hls_shim"


_HALF_ANCHOR = "#define _AP_ENABLE_HALF_ 0"


def _build_shim(tc: HlsToolchain, dest: Path) -> None:
    include = dest / "include"
    shutil.copytree(tc.ap_types, include)
    common = include / "ap_common.h"
    text = common.read_text()
    if _HALF_ANCHOR not in text:
        raise FinnFlowError(
            f"{tc.ap_types / 'ap_common.h'} is not the open-source ap_int version this shim "
            f"supports (no {_HALF_ANCHOR!r} line)."
        )
    common.write_text(
        text.replace(
            _HALF_ANCHOR,
            _HALF_ANCHOR + "\n// brevitas-apq hls shim: Vitis HLS's `half` type (_Float16)\n"
            "#include <hls_half.h>",
            1,
        )
    )
    for header in sorted(_shim_source_dir().glob("*.h")):
        shutil.copy2(header, include / header.name)
    empty = dest / "empty.cpp"
    empty.write_text("// empty stand-in for a Vitis HLS simulation library (brevitas-apq)\n")
    for lib in (
        "lnx64/lib/csim/libhlsmc++-GCC46.so",
        "lnx64/tools/fpo_v7_1/libIp_floating_point_v7_1_bitacc_cmodel.so",
    ):
        out = dest / lib
        out.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["g++", "-shared", "-fPIC", "-o", str(out), str(empty)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise FinnFlowError(f"Could not build the stand-in library {out}: {proc.stderr[:500]}")
    empty.unlink()


_LIMITS_ORIGINAL = re.compile(
    r"constexpr auto max<ap_uint<Width>> = \(ap_uint<Width \+ 1>\{1\} << Width\) - 1;"
)

_LIMITS_PATCHED = """\
// brevitas-apq: attention-hlslib's limits.hpp with the ap_int/ap_uint limits as 64-bit integer
// constants. The original declares constexpr variables of ap_int/ap_uint type, which Xilinx's
// open-source ap_int headers (not a literal type) cannot compile. Same values, for widths up
// to 63 bits (static_assert here; finn_flow.cppsim checks the node's types before compiling).
#ifndef ATTENTION_HLSLIB_LIMITS_HPP
#define ATTENTION_HLSLIB_LIMITS_HPP

// Numeric limits of standard types
#include <limits>
// HLS arbitrary precision types: ap_uint class template
#include <ap_int.h>

// Minimum value of a generic datatype
template<class Type>
    constexpr Type min = std::numeric_limits<Type>::min();

// Maximum value of a generic datatype
template<class Type>
    constexpr Type max = std::numeric_limits<Type>::max();

namespace apq_limits {
// 2^Width - 1 as a 64-bit integer
template<int Width>
    constexpr long long umax() {
        static_assert(Width >= 0 && Width <= 63,
            "brevitas-apq patched limits.hpp supports ap_uint/ap_int widths <= 63");
        return static_cast<long long>((1ULL << Width) - 1ULL);
    }
// -2^(Width-1) as a 64-bit integer
template<int Width>
    constexpr long long smin() {
        static_assert(Width >= 1 && Width <= 63,
            "brevitas-apq patched limits.hpp supports ap_uint/ap_int widths <= 63");
        return -umax<Width - 1>() - 1;
    }
}

// Minimum value of HLS unsigned arbitrary precision types
template<int Width>
    constexpr auto min<ap_uint<Width>> = 0;

// Maximum value of HLS unsigned arbitrary precision types
template<int Width>
    constexpr auto max<ap_uint<Width>> = apq_limits::umax<Width>();

// Minimum value of HLS signed arbitrary precision types
template<int Width>
    constexpr auto min<ap_int<Width>> = apq_limits::smin<Width>();

// Maximum value of HLS signed arbitrary precision types
template<int Width>
    constexpr auto max<ap_int<Width>> = apq_limits::umax<Width - 1>();

#endif //ATTENTION_HLSLIB_LIMITS_HPP
"""


def _build_deps(tc: HlsToolchain, dest: Path) -> None:
    ignore = shutil.ignore_patterns(".git")
    for name in HLSLIBS:
        shutil.copytree(tc.hls_dir / name, dest / name, ignore=ignore)
    limits = dest / "attention-hlslib" / "limits.hpp"
    if limits.is_file():
        if _LIMITS_ORIGINAL.search(limits.read_text()):
            limits.write_text(_LIMITS_PATCHED)
        else:
            log.warning(
                "%s is not the version the cppsim patch was written for; left unchanged", limits
            )


@functools.cache
def _hashes(tc: HlsToolchain) -> dict[str, str]:
    """Content hashes of the toolchain's inputs (read once per process)."""
    finn_dir = _finn_package_dir()
    compiler = _compiler_version()
    common = sha256_of(
        SHIM_VERSION,
        compiler,
        _finn_version(),
        _tree_hash(finn_dir / "templates" / "npy2stream"),
        _tree_hash(finn_dir / "custom_hls"),
    )
    libs = sha256_of(SHIM_VERSION, *(_tree_hash(tc.hls_dir / name) for name in HLSLIBS))
    if tc.uses_shim:
        shim = sha256_of(
            SHIM_VERSION, compiler, _tree_hash(tc.ap_types), _tree_hash(_shim_source_dir())
        )
        deps = sha256_of(libs, _LIMITS_PATCHED)
        return {"shim": shim, "deps": deps, "fingerprint": sha256_of(common, "shim", shim, deps)}
    version = next(iter(sorted(tc.xilinx_hls.glob("*.version"))), None)
    vitis = sha256_of(str(tc.xilinx_hls), version.read_text() if version else "")
    return {"fingerprint": sha256_of(common, "vitis", vitis, libs)}


def _prepare(tc: HlsToolchain) -> PreparedToolchain:
    hashes = _hashes(tc)
    if tc.uses_shim:
        xilinx = tc.cache_dir / f"hls-shim-{hashes['shim'][:16]}"
        atomic_folder(xilinx, lambda d: _build_shim(tc, d))
        deps = tc.cache_dir / f"hls-deps-{hashes['deps'][:16]}"
        atomic_folder(deps, lambda d: _build_deps(tc, d))
    else:
        xilinx, deps = tc.xilinx_hls, tc.hls_dir
    return PreparedToolchain(
        xilinx_hls=xilinx,
        finn_deps=deps,
        custom_hls=_finn_package_dir() / "custom_hls",
        fingerprint=hashes["fingerprint"],
        shim=tc.uses_shim,
        kernel_cache=tc.cache_dir / "cppsim-kernels",
    )


@contextlib.contextmanager
def _finn_toolchain(prep: PreparedToolchain) -> Iterator[None]:
    """Point finn at the toolchain: XILINX_HLS, FINN_CUSTOM_HLS and the finn_deps setting."""
    from finn.util.settings import get_settings

    from finn_flow.no_vivado import patched_environ

    env = {
        "XILINX_HLS": str(prep.xilinx_hls),
        "FINN_CUSTOM_HLS": str(prep.custom_hls),
        "FINN_DEPS": str(prep.finn_deps),
    }
    settings = get_settings()
    saved_deps = settings._finn_deps
    with patched_environ(env):
        settings.finn_deps = prep.finn_deps
        try:
            yield
        finally:
            settings._finn_deps = saved_deps


def _compile_env(prep: PreparedToolchain) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        XILINX_HLS=str(prep.xilinx_hls),
        FINN_CUSTOM_HLS=str(prep.custom_hls),
        FINN_DEPS=str(prep.finn_deps),
    )
    return env


# ------------------------------------------------------------------------------- compile
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


def _check_attention_widths(model, node) -> None:
    """The patched limits.hpp holds ap_int limits as 64-bit integers: widths must be <= 63."""
    from qonnx.core.datatype import DataType

    too_wide = []
    for attr in node.attribute:
        if not attr.s:
            continue
        try:
            dt = DataType[attr.s.decode()]
        except (KeyError, UnicodeDecodeError):
            continue
        if dt.is_integer() and dt.bitwidth() > MAX_LIMITS_WIDTH:
            too_wide.append(f"{attr.name}={dt.name}")
    for tensor in node.input:
        dt = model.get_tensor_datatype(tensor)
        if dt is not None and dt.is_integer() and dt.bitwidth() > MAX_LIMITS_WIDTH:
            too_wide.append(f"{tensor}={dt.name}")
    if too_wide:
        raise FinnFlowError(
            f"cppsim without Vitis HLS: node {node.name} ({node.op_type}) uses integer types "
            f"wider than {MAX_LIMITS_WIDTH} bits ({', '.join(too_wide)}), which the patched "
            "attention-hlslib limits.hpp cannot represent. Use narrower accumulators/thresholds "
            "or real Vitis HLS headers (XILINX_HLS)."
        )


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


def _first_errors(text: str, n: int = 8) -> str:
    lines = [ln for ln in text.splitlines() if "error" in ln.lower()]
    return "\n".join((lines or text.splitlines())[:n])


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
                f"{_first_errors(proc.stderr)}\nFull log: {failed}"
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
    with finn_session(work), _finn_toolchain(prep):
        import finn.custom_op.fpgadataflow.reshape  # noqa: F401  (registers the HW domain)
        from finn.transformation.fpgadataflow.prepare_cppsim import PrepareCppSim
        from finn.transformation.fpgadataflow.set_exec_mode import SetExecMode
        from qonnx.custom_op.registry import getCustomOp

        model = model.transform(SetExecMode("cppsim"))
        nodes_dir = work / "nodes"
        hls_nodes = [n for n in model.graph.node if _is_hls(n)]
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
                if not _is_hls(node):
                    continue
                if prep.shim and node.op_type.startswith("ScaledDotProductAttention"):
                    _check_attention_widths(model, node)
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

    env = _compile_env(prep)
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


# ---------------------------------------------------------------------------- simulation
def python_model(model):
    """A copy of ``model`` with every ``*_hls``/``*_rtl`` node replaced by its generic HW op.

    finn-plus 1.6.1's specialised nodes execute only in cppsim/rtlsim (attention also in
    python); the generic ops (MVAU, Thresholding, ElementwiseAdd, ...) execute in Python.
    """
    import copy

    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    out = ModelWrapper(copy.deepcopy(model.model))
    for node in out.graph.node:
        if not _is_hw(node) or not (_is_hls(node) or _is_rtl(node)):
            continue
        generic = re.sub(r"_(hls|rtl)$", "", node.op_type)
        node.op_type, node.domain = generic, _HW_DOMAIN
        try:
            getCustomOp(node)
        except Exception as exc:
            raise FinnFlowError(
                f"No generic FINN op {generic!r} to execute node {node.name} in Python."
            ) from exc
        for attr in list(node.attribute):
            if attr.name in ("exec_mode", "code_gen_dir_cppsim", "executable_path"):
                node.attribute.remove(attr)
    return out


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
        if not _is_hw(node):
            continue
        if node.name not in stats:
            stats[node.name] = _NodeStats(node, "cppsim" if _is_hls(node) else "python")
        with _kernel_warnings() as lines:
            outs = _run_node_isolated(cpp_model, node, py_ctx)
        stats[node.name].add_warnings(lines)
        for name, value in outs.items():
            stats[node.name].add(value, py_ctx[name])
        if _is_hls(node):
            _check_decisions(cpp_model, node, outs, py_ctx, stats[node.name])
        elif _is_rtl(node) and len(node.input) and len(node.output) == 1:
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

    dynamic = [i.name for i in model.graph.input if model.get_initializer(i.name) is None]
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


def find_hw_model(out_dir: str | Path) -> Path:
    """The specialised HW graph a build saved (``intermediate_models/``, see finn_flow.steps)."""
    models = Path(out_dir) / "intermediate_models"
    for name in HW_MODEL_CANDIDATES:
        if (models / name).is_file():
            return models / name
    raise FinnFlowError(
        f"No specialised HW graph in {models} (looked for {', '.join(HW_MODEL_CANDIDATES)}): "
        "build with save_intermediate_models=True (emulation does) first."
    )


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
        child_inputs = [i.name for i in model.graph.input if model.get_initializer(i.name) is None]
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
