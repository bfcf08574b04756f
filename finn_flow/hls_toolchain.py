"""Where cppsim takes its C++ headers and libraries from: the HLS toolchain, without Vitis HLS.

finn-plus 1.6.1 compiles an HLS node's C++ simulation with g++ against Vitis HLS's headers,
finn-hlslib and attention-hlslib. :class:`HlsToolchain` finds these, and
:meth:`HlsToolchain.prepare` makes a :class:`PreparedToolchain`: the paths finn's compile
command is pointed at, and the fingerprint every compiled kernel's cache key includes.

* **HLS libraries**: a folder holding ``finn-hlslib/`` and ``attention-hlslib/``
  (:data:`finn_flow.hls_sources.HLS_LIBRARIES`; argument ``hls_dir`` / ``--hls-dir``, else the
  environment variable ``APQ_HLS_DIR``, else finn-plus's own ``finn deps update`` folder
  (``get_settings().finn_deps``) if it has both; ``apq hls-fetch`` clones them).
* **Vitis HLS headers**: with real Vitis HLS (``XILINX_HLS`` set and
  ``$XILINX_HLS/include/ap_int.h`` present) its headers and libraries are used unchanged.
  Otherwise a *shim* stands in for ``XILINX_HLS``: Xilinx's open-source ``ap_int``/``ap_fixed``
  headers (``HLS_arbitrary_Precision_Types/include`` in the HLS folder, or the ``hls4ml``
  wheel's copy) plus the small headers in ``finn_flow/hls_shim/`` (``hls_stream.h``,
  ``hls_vector.h``, ``hls_math.h``, ``ap_axi_sdata.h``, ``hls_half.h``), and empty stand-ins
  for the two Vitis libraries on finn's link line.
* **Patched attention-hlslib**: the open-source ``ap_int`` is not a literal type, so
  attention-hlslib's ``limits.hpp`` is replaced by the same limits as 64-bit integer constants
  in a copy of the library; :func:`check_attention_widths` checks a node's widths (<= 63 bits)
  before compiling.
* **Cache** (:mod:`finn_flow.kernel_cache`): ``hls-shim-<hash>/`` (the fake ``XILINX_HLS``) and
  ``hls-deps-<hash>/`` (finn-hlslib + patched attention-hlslib, finn's ``finn_deps`` while
  compiling), each created once per content hash.

Usage::

    prep = HlsToolchain.resolve("../shared/hls").prepare()
    with prep.finn_context():  # XILINX_HLS, FINN_CUSTOM_HLS and finn_deps point at prep
        ...
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from finn_flow.errors import FinnFlowError
from finn_flow.hls_sources import HLS_LIBRARIES
from finn_flow.kernel_cache import atomic_folder, default_cache_dir, sha256_of, tree_hash

__all__ = [
    "HLS_DIR_ENV",
    "MAX_LIMITS_WIDTH",
    "SHIM_VERSION",
    "HlsToolchain",
    "PreparedToolchain",
    "check_attention_widths",
]

log = logging.getLogger("finn_flow")

#: Environment variable naming the folder with ``finn-hlslib/`` and ``attention-hlslib/``.
HLS_DIR_ENV = "APQ_HLS_DIR"
#: Bump when the shim, the patches or the cache layout change (part of every hash).
SHIM_VERSION = "1"
#: Widest ap_int/ap_uint the patched attention-hlslib limits.hpp supports.
MAX_LIMITS_WIDTH = 63


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
    return all((folder / name).is_dir() for name in HLS_LIBRARIES)


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
                    f"cppsim needs the HLS C++ libraries {' and '.join(HLS_LIBRARIES)}, and no "
                    f"folder with them is configured.{where} {_HLS_DIR_HELP}"
                )
            hls_dir, source = deps, "finn-plus deps folder (get_settings().finn_deps)"
        folder = Path(hls_dir).expanduser().resolve()
        if not folder.is_dir():
            raise FinnFlowError(
                f"HLS folder {folder} (from {source}) does not exist. {_HLS_DIR_HELP}"
            )
        missing = [name for name in HLS_LIBRARIES if not (folder / name).is_dir()]
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

    def environ(self) -> dict[str, str]:
        """The environment variables finn's code generation and compile command read."""
        return {
            "XILINX_HLS": str(self.xilinx_hls),
            "FINN_CUSTOM_HLS": str(self.custom_hls),
            "FINN_DEPS": str(self.finn_deps),
        }

    def compile_env(self) -> dict[str, str]:
        """The process environment with :meth:`environ` applied (for the compiler runs)."""
        return {**os.environ, **self.environ()}

    @contextlib.contextmanager
    def finn_context(self) -> Iterator[None]:
        """Point finn at the toolchain: XILINX_HLS, FINN_CUSTOM_HLS and the finn_deps setting."""
        from finn.util.settings import get_settings

        from finn_flow.no_vivado import patched_environ

        settings = get_settings()
        saved_deps = settings._finn_deps
        with patched_environ(self.environ()):
            settings.finn_deps = self.finn_deps
            try:
                yield
            finally:
                settings._finn_deps = saved_deps


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
    for name in HLS_LIBRARIES:
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
        tree_hash(finn_dir / "templates" / "npy2stream"),
        tree_hash(finn_dir / "custom_hls"),
    )
    libs = sha256_of(SHIM_VERSION, *(tree_hash(tc.hls_dir / name) for name in HLS_LIBRARIES))
    if tc.uses_shim:
        shim = sha256_of(
            SHIM_VERSION, compiler, tree_hash(tc.ap_types), tree_hash(_shim_source_dir())
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


def check_attention_widths(model, node) -> None:
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
