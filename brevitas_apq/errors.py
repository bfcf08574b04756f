"""The project's error types, under one base class.

Every error brevitas-apq raises about its input (an option, a data file, a plan, a run
directory, a file on disk) is an :class:`APQError`, with a message that names the problem and
the fix. The command line turns exactly these (and ``finn_flow``'s ``FinnFlowError``) into one
line and exit code 2; any other exception is a bug and keeps its traceback. ``APQError`` is a
``ValueError``, so code that catches ``ValueError`` keeps working.

Example::

    from brevitas_apq.errors import APQError
    from brevitas_apq.rundir import load_run

    try:
        load_run("runs/train")
    except APQError as err:  # not a finished run, a truncated model.pt, ...
        print(f"error: {err}")

The subclasses live beside the code that raises them: ``RunError`` here (training and every
reader of run directories), ``DataError`` (brevitas_apq.data), ``PlanError``
(brevitas_apq.plans), ``GridError`` (brevitas_apq.experiments), ``SearchError``
(brevitas_apq.search).
"""

from __future__ import annotations

__all__ = ["APQError", "ConfigError", "FileError", "RunError"]


class APQError(ValueError):
    """Base class: input the project cannot use as given; the message says what to do."""


class ConfigError(APQError):
    """A setting outside its allowed range (training, model, quantiser or study settings)."""


class FileError(APQError):
    """A file that cannot be read (missing, truncated, corrupt) or a path that cannot be
    written (a file where a folder is needed)."""


class RunError(APQError):
    """A run directory or run option that cannot be used as given."""
