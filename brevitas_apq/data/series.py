"""The common container every loader returns, and the package's error type.

Example::

    >>> import pandas as pd
    >>> idx = pd.date_range("2024-01-01", periods=3, freq="h")
    >>> frame = pd.DataFrame({"pm": [1.0, 2.0, 3.0], "temp": [5.0, 6.0, 7.0]}, index=idx)
    >>> ts = TimeSeries(frame, target="pm", features=("pm", "temp"), name="demo")
    >>> ts.features
    ('pm', 'temp')
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from brevitas_apq.errors import APQError

__all__ = ["DataError", "DataWarning", "TimeSeries"]

#: Largest magnitude a value may have: the model and the scaled windows are float32.
FLOAT32_MAX = float(np.finfo(np.float32).max)


class DataError(APQError):
    """Bad or unusable input data; the message names the problem and how to fix it."""


class DataWarning(UserWarning):
    """Suspicious but usable input data (duplicate timestamps, a likely missing-value marker,
    a mostly-missing feature); the message gives the counts and what to pass to change it.

    Emitted with :func:`warnings.warn` and also kept on the data (``TimeSeries.data_warnings``,
    ``WindowedDataset.data_warnings``), so a training run records them in ``metrics.json``.
    Turn them into errors with ``warnings.simplefilter("error", DataWarning)``.
    """


def warn(message: str, sink: list[str]) -> None:
    """Emit ``message`` as a :class:`DataWarning` and append it to ``sink``."""
    warnings.warn(message, DataWarning, stacklevel=3)
    sink.append(message)


def _listing(names: Sequence[object], limit: int = 30) -> str:
    """Comma-separated, quoted names for error messages (long lists are shortened)."""
    shown = ", ".join(repr(str(n)) for n in list(names)[:limit])
    more = len(names) - limit
    return shown + (f", ... ({more} more)" if more > 0 else "")


@dataclass(frozen=True, eq=False)
class TimeSeries:
    """A multivariate time series ready for windowing.

    Attributes:
        frame: one row per time step on a regular grid (``freq``) with a tz-naive (UTC)
            ``DatetimeIndex``; a missing time step is a row of NaN, a missing value is NaN.
        target: the column to forecast.
        features: the model's input columns, in order. By convention the loaders put the
            target first, so the model sees the target's own past values (the persistence
            baseline is then "the last input value of the target column"). Drop it with
            :meth:`with_features` for a pure "estimate the target from the other sensors"
            task.
        name: a short human-readable name (used in logs and reports).
        freq: the pandas frequency alias of the grid (``"h"`` for every built-in loader).
        data_warnings: the :class:`DataWarning` messages the loader emitted for this data.

    Every used value must be finite and within float32's range (NaN marks a missing value);
    an infinite or absurdly large value is a DataError naming the column and the count.

    ``eq=False`` because comparing DataFrames with ``==`` is element-wise, not a bool.
    """

    frame: pd.DataFrame
    target: str
    features: tuple[str, ...]
    name: str
    freq: str = "h"
    data_warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A tuple even when a list was passed, so the frozen object stays immutable/hashable.
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "data_warnings", tuple(self.data_warnings))
        frame = self.frame
        if not isinstance(frame.index, pd.DatetimeIndex):
            raise DataError(
                f"{self.name}: the frame needs a DatetimeIndex, got {type(frame.index).__name__}; "
                "set the timestamp column as the index (frame.set_index(...))."
            )
        if frame.index.tz is not None:
            raise DataError(
                f"{self.name}: the index must be tz-naive UTC; use "
                "frame.tz_convert('UTC').tz_localize(None)."
            )
        if not frame.index.is_monotonic_increasing or frame.index.has_duplicates:
            raise DataError(
                f"{self.name}: the timestamps must be strictly increasing (sorted, no "
                "duplicates); sort the frame and average duplicates, e.g. "
                "frame.groupby(level=0).mean().sort_index()."
            )
        if not self.features:
            raise DataError(f"{self.name}: no input features were given.")
        if len(set(self.features)) != len(self.features):
            raise DataError(f"{self.name}: duplicate feature names in {self.features}.")
        missing = [c for c in (self.target, *self.features) if c not in frame.columns]
        if missing:
            raise DataError(
                f"{self.name}: column(s) {_listing(missing)} not in the frame; "
                f"available columns: {_listing(list(frame.columns))}."
            )
        non_numeric = [
            c
            for c in dict.fromkeys((self.target, *self.features))
            if not pd.api.types.is_numeric_dtype(frame[c])
        ]
        if non_numeric:
            raise DataError(
                f"{self.name}: column(s) {_listing(non_numeric)} are not numeric; convert "
                "them (pd.to_numeric) or one-hot encode categories first."
            )
        self._check_magnitudes()

    def _check_magnitudes(self) -> None:
        """Refuse infinite values and values beyond float32's range in the used columns."""
        for col in self.columns:
            values = self.frame[col]
            bad = values.notna() & ~(values.abs() <= FLOAT32_MAX)
            if bad.any():
                first = values[bad].index[0]
                raise DataError(
                    f"{self.name}: column {col!r} has {int(bad.sum())} value(s) that are "
                    f"infinite or beyond float32's range (|x| > {FLOAT32_MAX:.3g}), e.g. "
                    f"{values[first]:.6g} at {first}; the model computes in float32, so scaling "
                    "and RMSE would overflow. Correct or delete those values, mark them missing "
                    "(na_values=... / --na-values), or leave the column out (features=)."
                )

    @property
    def columns(self) -> tuple[str, ...]:
        """All columns used: the features, then the target if it is not a feature."""
        return tuple(dict.fromkeys((*self.features, self.target)))

    def with_features(self, features: Sequence[str]) -> TimeSeries:
        """A copy using other input columns (all must be in ``frame``).

        Example: ``ts.with_features([c for c in ts.features if c != ts.target])``.
        """
        return dataclasses.replace(self, features=tuple(features))
