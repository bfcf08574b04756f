"""The ``apq`` command line (typer): the commands, their options and the checks of options
that are each valid but not together. The work is done in the library (``training``,
``experiments``, ``sensitivity``, ``search``, ``finn_bridge``, ...); the tables the commands
print are in ``brevitas_apq.report``.

    common.py   the app, error handling (one line, exit code 2), shared options, ``main``
    run.py      train, export, quickstart, show (one run directory)
    study.py    reproduce, analyze, sensitivity, search (many runs)
    build.py    build, hls-fetch (FINN)
"""

# importing the command modules registers their commands, in this order (apq --help)
from brevitas_apq.cli import run, study, build  # noqa: F401, I001
from brevitas_apq.cli.common import app, main

__all__ = ["app", "main"]
