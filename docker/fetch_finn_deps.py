"""Fetch finn-plus's external C++ dependencies into FINN_DEPS at image build time.

finn-plus records the URL and commit of every dependency it compiles against in
``finn/interface/external_dependencies.yaml`` (finn-hlslib, attention-hlslib, AuroraFlow, board
files, the nlohmann/json sources of its RTL simulation backend). Its ``finn`` command line clones
them on first use (``finn deps update``), but that command starts by checking for Vivado and XSI,
and this project drives finn-plus through its Python API, which never fetches anything. So the
Docker image calls finn-plus's own ``DependencyUpdater`` here, with the same definitions and the
same target layout (``$FINN_DEPS/finn-hlslib``, ``$FINN_DEPS/board_files``, ...) the CLI uses.

``--expect NAME=COMMIT`` checks the commits the Dockerfile pins (and may already have cloned)
against finn-plus's own, so a finn-plus upgrade cannot leave stale sources in the image.

Usage (in the image's environment)::

    python fetch_finn_deps.py --deps /opt/finn_deps --expect finn-hlslib=8d979e2...
    python fetch_finn_deps.py --list          # print finn-plus's pins, fetch nothing
    python fetch_finn_deps.py --check --expect finn-hlslib=8d979e2...   # compare only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml


def definitions_file() -> Path:
    """finn-plus's dependency definitions (the file ``finn deps update`` reads)."""
    import finn.interface

    return Path(finn.interface.__file__).parent / "external_dependencies.yaml"


def git_pins(path: Path) -> dict[str, tuple[str, str]]:
    """``{name: (url, commit)}`` of the git dependencies in ``path``."""
    data = yaml.safe_load(path.read_text()) or {}
    return {name: (d["url"], d["commit"]) for name, d in (data.get("git_deps") or {}).items()}


def check_expectations(pins: dict[str, tuple[str, str]], expect: list[str]) -> list[str]:
    """Mismatches between ``NAME=COMMIT`` expectations and finn-plus's pins, as messages."""
    problems = []
    for item in expect:
        name, sep, commit = item.partition("=")
        if not sep or not commit:
            problems.append(f"--expect {item!r}: expected NAME=COMMIT")
        elif name not in pins:
            problems.append(f"{name}: finn-plus pins no such dependency ({', '.join(pins)})")
        elif pins[name][1] != commit:
            problems.append(
                f"{name}: finn-plus pins {pins[name][1]}, the Dockerfile {commit}; "
                "update the Dockerfile's ARG"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deps", type=Path, help="target directory (FINN_DEPS)")
    parser.add_argument("--expect", action="append", default=[], metavar="NAME=COMMIT")
    parser.add_argument("--list", action="store_true", help="print the git pins and exit")
    parser.add_argument("--check", action="store_true", help="only check --expect, fetch nothing")
    parser.add_argument("--git-timeout", type=int, default=900, help="seconds per git command")
    args = parser.parse_args(argv)

    path = definitions_file()
    pins = git_pins(path)
    if args.list:
        for name, (url, commit) in pins.items():
            print(f"{name}\t{url}\t{commit}")
        return 0
    problems = check_expectations(pins, args.expect)
    if problems:
        for problem in problems:
            print(f"fetch_finn_deps: {problem}", file=sys.stderr)
        return 1
    if args.check:
        print(f"fetch_finn_deps: pins agree with {path}")
        return 0
    if args.deps is None:
        parser.error("--deps is required unless --list or --check is given")

    from finn.interface.manage_deps import DependencyUpdater

    deps = args.deps.absolute()
    updater = DependencyUpdater(
        dependency_location=deps,
        dependency_definition_file=path,
        git_timeout_s=args.git_timeout,
        non_interactive=True,
    )
    updater.update()  # exits non-zero by itself if an install fails
    outdated = updater.get_outdated_dependencies()
    if outdated:
        print(f"fetch_finn_deps: still missing or outdated: {', '.join(outdated)}", file=sys.stderr)
        return 1
    for name in pins:
        print(f"fetch_finn_deps: {name} at {deps / name}")
    print(f"fetch_finn_deps: all finn-plus dependencies in {deps} (definitions: {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
