"""Run finn-plus 1.6.1 from Python, with or without the Xilinx tools.

finn-plus is meant to be started through its ``finn`` command line, which refuses to run
without Vivado. Through the Python API (``build_dataflow_cfg``) it works without Xilinx
tools up to HLS/RTL code generation, given four workarounds, all collected here:

1. ``import finn.builder.build_dataflow_steps`` does ``from finn.xsi import SimEngine``
   (used only as a type hint). ``finn.xsi`` resolves that name lazily and raises
   ``OSError`` when ``XILINX_VIVADO`` is not set. :func:`import_finn_builder` binds a
   placeholder ``finn.xsi.SimEngine`` for the duration of that import only, and only when
   ``XILINX_VIVADO`` is absent.
2. Every build ends in ``exit_buildflow()``, which writes ``report/metadata_builder.json``
   with ``get_vivado_root()``: without ``XILINX_VIVADO`` it raises *after* all steps ran
   and hides the build's exit code. :func:`finn_session` makes ``get_vivado_root`` (as seen
   by ``finn.builder.build_dataflow`` only) return a marker string while the session lasts,
   again only when ``XILINX_VIVADO`` is absent.
3. FINN needs an existing absolute ``FINN_BUILD_DIR`` and reads/writes a settings file
   (``FINN_SETTINGS``, else ``~/.finn/settings.yaml``, created if missing). The session
   points both at private paths below its work directory (unless the caller already set
   them) and restores the environment and FINN's cached settings afterwards.
4. ``build_dataflow_cfg`` redirects ``sys.stdout``/``sys.stderr`` into its logger, replaces
   the root logger's handlers (``logging.basicConfig(force=True)``) and turns on
   ``logging.captureWarnings``, and leaves all of that in place after it returns. The
   session restores them on exit.

Item 3 and 4 are needed with Vivado too when FINN is driven from Python; items 1 and 2
are applied only when ``XILINX_VIVADO`` is not set.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: What ``report/metadata_builder.json`` records as tool version without Vivado.
NO_VIVADO_MARKER = "no-vivado (XILINX_VIVADO not set)"


def vivado_available() -> bool:
    """True if the Xilinx tools are configured (``XILINX_VIVADO`` set and non-empty)."""
    return bool(os.environ.get("XILINX_VIVADO"))


class _SimEnginePlaceholder:
    """Stands in for ``finn_xsi.sim_engine.SimEngine`` (a type hint) without Vivado."""


def import_finn_builder():
    """Import and return ``finn.builder.build_dataflow`` (which imports the step library).

    Without ``XILINX_VIVADO`` a placeholder ``finn.xsi.SimEngine`` is bound only around the
    import and removed again, so any real use of XSI later still fails with FINN's own
    error message.
    """
    if "finn.builder.build_dataflow" in sys.modules:
        return sys.modules["finn.builder.build_dataflow"]
    if vivado_available():
        return importlib.import_module("finn.builder.build_dataflow")
    import finn.xsi

    had_attr = "SimEngine" in vars(finn.xsi)
    if not had_attr:
        finn.xsi.SimEngine = _SimEnginePlaceholder
    try:
        return importlib.import_module("finn.builder.build_dataflow")
    finally:
        if not had_attr and vars(finn.xsi).get("SimEngine") is _SimEnginePlaceholder:
            del finn.xsi.SimEngine


def _marker_vivado_root() -> str:
    """Replacement for ``get_vivado_root`` in ``finn.builder.build_dataflow``."""
    return NO_VIVADO_MARKER


@contextlib.contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block; restore (or remove) them afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _private_finn_dirs(work_dir: Path) -> Iterator[Path]:
    """Point FINN_BUILD_DIR / FINN_SETTINGS at private paths; restore env and settings."""
    import finn.util.settings as finn_settings

    saved_settings = finn_settings._SETTINGS
    build_dir = Path(os.environ.get("FINN_BUILD_DIR") or work_dir / "finn_tmp").absolute()
    build_dir.mkdir(parents=True, exist_ok=True)
    # A settings file that does not exist: FINN then uses its defaults and writes nothing.
    settings_file = os.environ.get("FINN_SETTINGS") or str(
        Path(work_dir, "finn_settings.yaml").absolute()
    )
    env = {"FINN_BUILD_DIR": str(build_dir), "FINN_SETTINGS": settings_file}
    with patched_environ(env):
        finn_settings._SETTINGS = None  # rebuilt lazily from the environment above
        try:
            yield build_dir
        finally:
            finn_settings._SETTINGS = saved_settings


@contextlib.contextmanager
def _restore_streams_and_logging() -> Iterator[None]:
    """Undo the stdout/stderr redirection and root-logger changes of build_dataflow_cfg."""
    stdout, stderr = sys.stdout, sys.stderr
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    capture = getattr(logging, "_warnings_showwarning", None) is not None
    try:
        yield
    finally:
        sys.stdout, sys.stderr = stdout, stderr
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                with contextlib.suppress(Exception):
                    handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
        logging.captureWarnings(capture)


@contextlib.contextmanager
def _patched_vivado_root() -> Iterator[None]:
    """Make exit_buildflow's metadata report work without XILINX_VIVADO."""
    build_dataflow = import_finn_builder()
    original = build_dataflow.get_vivado_root
    build_dataflow.get_vivado_root = _marker_vivado_root
    try:
        yield
    finally:
        build_dataflow.get_vivado_root = original


@contextlib.contextmanager
def finn_session(work_dir: Path | str | None = None) -> Iterator[Path]:
    """Context in which finn-plus can be used from Python (with or without Vivado).

    Yields the FINN build directory in use. ``work_dir`` holds the private FINN build
    directory and settings path (a temporary directory if None, removed afterwards).
    """
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="finn_flow_"))
        work_dir = Path(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        stack.enter_context(_restore_streams_and_logging())
        build_dir = stack.enter_context(_private_finn_dirs(work_dir))
        import_finn_builder()
        from finn_flow import finn_fixes

        finn_fixes.apply()  # HLS code generation fixes, with or without Vivado
        if not vivado_available():
            stack.enter_context(_patched_vivado_root())
        yield build_dir
