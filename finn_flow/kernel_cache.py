"""The content-addressed cache of everything finn_flow compiles (cppsim kernels, Verilator models).

One folder, :func:`default_cache_dir` (``$APQ_CACHE_DIR``, else ``$XDG_CACHE_HOME/brevitas-apq``,
else ``~/.cache/brevitas-apq``), holds every compiled artefact, each in a folder named after the
SHA-256 of everything it was built from, so a rebuild of unchanged sources runs no compiler:

* :func:`sha256_of` - a cache key: SHA-256 of length-prefixed parts (``bytes`` or ``str``);
  :func:`tree_hash` - the content hash of a folder tree (header and library folders).
* :func:`atomic_folder` - create an entry by building it in a temporary sibling folder, marking
  it ``.complete`` and renaming it into place: concurrent builds are safe, and an interrupted
  one leaves nothing a later run would trust.
* :func:`first_errors` - the error lines of a failed compile's log, for its error message.

Users: :mod:`finn_flow.hls_toolchain` (``hls-shim-<hash>/``, ``hls-deps-<hash>/``),
:mod:`finn_flow.cppsim_compile` (``cppsim-kernels/<key[:2]>/<key>/``) and :mod:`finn_flow.verilator`
(``verilator/<key>/``).

Usage::

    entry = default_cache_dir() / "example" / sha256_of("compiler flags", b"source bytes")
    atomic_folder(entry, lambda tmp: (tmp / "out.txt").write_text("built"))  # False if present
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "CACHE_DIR_ENV",
    "atomic_folder",
    "default_cache_dir",
    "first_errors",
    "sha256_of",
    "tree_hash",
]

#: Environment variable naming the cache folder (shim, patched libraries, compiled kernels).
CACHE_DIR_ENV = "APQ_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$APQ_CACHE_DIR``, else ``$XDG_CACHE_HOME/brevitas-apq``, else ``~/.cache/brevitas-apq``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "brevitas-apq"


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


def tree_hash(root: Path) -> str:
    """Content hash of a folder tree (relative paths and bytes; ``.git`` ignored)."""
    parts: list[bytes | str] = []
    for path in _tree_files(root):
        parts += [path.relative_to(root).as_posix(), path.read_bytes()]
    return sha256_of(*parts)


def atomic_folder(dest: Path, build: Callable[[Path], object]) -> bool:
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


def first_errors(text: str, n: int = 8) -> str:
    """The first ``n`` lines of a compiler log that mention an error (else its first lines)."""
    lines = [ln for ln in text.splitlines() if "error" in ln.lower()]
    return "\n".join((lines or text.splitlines())[:n])
