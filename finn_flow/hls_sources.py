"""The HLS C++ sources of C++ simulation, fetched at pinned commits (``apq hls-fetch``).

:mod:`finn_flow.hls_toolchain` needs a folder with ``finn-hlslib/`` and ``attention-hlslib/`` (and,
without Vitis HLS, ``HLS_arbitrary_Precision_Types/`` for ``ap_int.h``). finn-plus records the
commits it compiles against in ``finn/interface/external_dependencies.yaml``; its ``finn deps
update`` command refuses to start without Vivado. :func:`fetch` clones exactly those commits
(plus Xilinx's open-source ``ap_int`` headers at :data:`AP_TYPES`) with git into one folder,
the folder ``APQ_HLS_DIR`` / ``--hls-dir`` then names. The Docker image fetches the same pins.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from finn_flow.errors import FinnFlowError

__all__ = ["AP_TYPES", "HLS_LIBRARIES", "fetch", "pinned_sources"]

#: The finn-plus dependencies cppsim compiles against.
HLS_LIBRARIES = ("finn-hlslib", "attention-hlslib")
#: Xilinx's open-source ap_int/ap_fixed headers (Apache-2.0), master as of 2019.
AP_TYPES = (
    "HLS_arbitrary_Precision_Types",
    "https://github.com/Xilinx/HLS_arbitrary_Precision_Types.git",
    "200a9aecaadf471592558540dc5a88256cbf880f",
)


def pinned_sources() -> dict[str, tuple[str, str]]:
    """``{folder: (git url, commit)}``: finn-plus's pins of :data:`HLS_LIBRARIES`, and ap_types."""
    import finn.interface
    import yaml

    path = Path(finn.interface.__file__).parent / "external_dependencies.yaml"
    deps = (yaml.safe_load(path.read_text()) or {}).get("git_deps") or {}
    missing = [name for name in HLS_LIBRARIES if name not in deps]
    if missing:
        raise FinnFlowError(f"{path} pins no {', '.join(missing)}: finn-plus changed its deps")
    pins = {name: (deps[name]["url"], deps[name]["commit"]) for name in HLS_LIBRARIES}
    pins[AP_TYPES[0]] = AP_TYPES[1:]
    return pins


def _git(args: list[str], cwd: Path, timeout: int) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=True
        )
    except FileNotFoundError as exc:
        raise FinnFlowError("git is not installed (apt-get install git).") from exc
    except subprocess.TimeoutExpired as exc:
        raise FinnFlowError(f"git {' '.join(args)} timed out after {timeout} s in {cwd}") from exc
    except subprocess.CalledProcessError as exc:
        raise FinnFlowError(
            f"git {' '.join(args)} failed in {cwd}: {(exc.stderr or '').strip()[:400]}"
        ) from exc
    return done.stdout.strip()


def fetch(
    dest: str | Path, pins: dict[str, tuple[str, str]] | None = None, timeout: int = 900
) -> dict[str, Path]:
    """Clone every pinned source into ``dest/<folder>`` at its commit; ``{folder: path}``.

    A folder already at its pinned commit is kept; one at another commit (or not a git
    checkout) raises FinnFlowError naming it, never overwritten. Each clone is made in a
    temporary sibling and renamed, so an interrupted fetch leaves no half checkout.
    """
    dest = Path(dest).absolute()
    dest.mkdir(parents=True, exist_ok=True)
    pins = pinned_sources() if pins is None else pins
    out = {}
    for name, (url, commit) in pins.items():
        target = dest / name
        if target.exists():
            head = (
                _git(["rev-parse", "HEAD"], target, timeout) if (target / ".git").exists() else ""
            )
            if head != commit:
                raise FinnFlowError(
                    f"{target} exists but is not {name} at {commit} (HEAD {head or 'none'}): "
                    "remove it or fetch into another folder"
                )
            out[name] = target
            continue
        tmp = dest / f".{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            _git(["init", "-q"], tmp, timeout)
            _git(["remote", "add", "origin", url], tmp, timeout)
            _git(["fetch", "-q", "--depth", "1", "origin", commit], tmp, timeout)
            _git(["checkout", "-q", "FETCH_HEAD"], tmp, timeout)
            head = _git(["rev-parse", "HEAD"], tmp, timeout)
            if head != commit:
                raise FinnFlowError(f"{url}: fetched {head}, expected {commit}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        tmp.rename(target)
        out[name] = target
    return out
