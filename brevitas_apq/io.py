"""Atomic file writes and checked reads of the files the project writes.

Writes go to a temporary file beside the target, then a rename: an interrupted run never
leaves a half-written checkpoint, table or plot behind; readers see either the previous
complete file or the new complete file. The temporary file is removed when the write fails or
is interrupted (any exception, Ctrl-C included); one left by a killed process (SIGKILL) carries
:data:`TEMP_MARK` in its name, is never read as a result, and :func:`remove_stale_temps`
clears it when a command takes over the folder again.

Reads (:func:`read_json`, :func:`torch_load`) turn a missing, truncated or corrupt file into a
:class:`~brevitas_apq.errors.FileError` naming the file, the problem and the fix.

Example::

    from brevitas_apq import io

    io.write_json("runs/x/settings.json", {"seed": 0})
    io.read_json("runs/x/settings.json", fix="delete it and run the command again")
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from brevitas_apq.errors import FileError

#: In the name of every temporary file of an atomic write, e.g. ``.metrics.json.x1y2.apq-tmp.json``.
TEMP_MARK = ".apq-tmp"


def make_dir(path: str | Path) -> Path:
    """Create the folder ``path`` (and its parents); FileError if a file is in the way."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise FileError(
            f"cannot create the folder {path}: {blocker} is a file; choose another output path "
            "or move the file away"
        ) from None
    except PermissionError as err:
        raise FileError(
            f"cannot create the folder {path}: {err.strerror}; choose a writable output path"
        ) from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; rename it to ``path`` if the block succeeds.

    On any exception (KeyboardInterrupt included) the temporary file is removed and the
    exception propagates; ``path`` keeps its previous content.
    """
    path = Path(path)
    make_dir(path.parent)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_MARK + (suffix or path.suffix)
    )
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; results get the permissions of any new file (0666 & ~umask)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temporary files of atomic writes a killed process left in ``folder``.

    Call it only while no other process writes into ``folder`` (a command taking over its
    run or grid directory). Returns the removed paths.
    """
    removed = []
    for stale in sorted(Path(folder).glob(f".*{TEMP_MARK}*")):
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def read_json(
    path: str | Path, fix: str = "delete it and run the command that wrote it again"
) -> Any:
    """The JSON content of ``path``; FileError (naming the file and ``fix``) if it is missing,
    unreadable, truncated or not JSON."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileError(f"{path} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise FileError(f"{path} cannot be read ({reason}); {fix}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        what = "empty" if not text.strip() else "truncated or corrupt"
        raise FileError(
            f"{path} is {what} (invalid JSON at line {err.lineno}, column {err.colno}); {fix}"
        ) from None


def torch_load(
    path: str | Path, fix: str = "delete it and run the command that wrote it again"
) -> Any:
    """``torch.load(path, weights_only=True)``; FileError (naming the file and ``fix``) if the
    file is missing, unreadable, truncated, corrupt or holds anything but tensors and plain
    Python values (which are never unpickled)."""
    import torch

    path = Path(path)
    try:
        return torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise FileError(f"{path} does not exist; {fix}") from None
    except OSError as err:
        raise FileError(f"{path} cannot be read ({err.strerror}); {fix}") from None
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):
            reason = (
                "it holds Python objects other than tensors and plain values, which are never "
                "loaded (weights_only=True): it was not written by brevitas-apq"
            )
        else:
            reason = "truncated or corrupt"
        raise FileError(f"{path} is not a usable PyTorch file ({reason}); {fix}") from None
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError, TypeError) as err:
        # what torch's zip and pickle readers raise on truncated or foreign bytes
        raise FileError(
            f"{path} is not a usable PyTorch file (truncated or corrupt: {type(err).__name__}); "
            f"{fix}"
        ) from None


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_plain) + "\n")


def jsonable(value: Any) -> Any:
    """``value`` as :func:`read_json` reads it back from :func:`write_json`'s file: tuples
    become lists, numpy and torch scalars numbers, paths strings. Compare a value
    with a saved one through it (``jsonable(plan.to_dict()) == saved["plan_spec"]``)."""
    return json.loads(json.dumps(value, default=_plain))


def write_csv(path: str | Path, frame) -> Path:
    """Write a pandas DataFrame as CSV without the index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def torch_save(path: str | Path, obj: Any) -> Path:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip("."))
    plt.close(fig)
    return Path(path)


def _plain(value: Any) -> Any:
    """What JSON holds of a value ``json`` cannot write itself (its ``default`` hook)."""
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
