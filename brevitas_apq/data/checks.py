"""Warnings about suspicious but usable data: each names the column, gives the counts and says
what to pass if the data is not what was meant.

* :func:`suspicious_values`: a likely missing-value marker used as data (a classic sentinel
  such as ``-200`` or ``-9999`` repeated, or one negative value repeated in an otherwise
  non-negative column), and values absurdly far from the rest of their column (they would
  squeeze every other value into a sliver of the min-max scaled range).
* :func:`duplicate_timestamps`: rows sharing a timestamp; the policy is to average them, as all
  rows of one resampling bin are averaged, and to say so.
* :func:`costly_features`: a feature whose missing values remove a large share of the windows
  (a window needs every input value), with the fraction missing and the windows lost.

Errors (infinite or float32-overflowing values) are :class:`~brevitas_apq.data.series.DataError`
raised by :class:`~brevitas_apq.data.series.TimeSeries` itself. Every function here emits
:class:`~brevitas_apq.data.series.DataWarning` and returns the messages, which the loaders keep
on the data so a run records them in ``metrics.json``.

Example::

    >>> import pandas as pd
    >>> frame = pd.DataFrame({"co": [1.2, -200.0, 0.8, -200.0, 1.1, -200.0]})
    >>> suspicious_values(frame, ["co"], "demo")  # also emitted as DataWarning
    ["demo: column 'co' has 3 values equal to -200 (50% of its values), which looks like a ..."]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .series import FLOAT32_MAX, warn

__all__ = ["costly_features", "duplicate_timestamps", "suspicious_values"]

#: Values that data loggers and public data sets use for "no reading".
SENTINELS = (-99.0, -200.0, -999.0, -9999.0, -99999.0)
#: A value this many interquartile ranges from its column's median is reported as absurd.
OUTLIER_IQRS = 1000.0
#: A feature is reported when it alone removes at least this share of the windows that the
#: other columns leave.
COSTLY_SHARE = 0.2


def _number(value: float) -> str:
    return f"{value:g}"


def suspicious_values(
    frame: pd.DataFrame,
    columns: Sequence[str],
    source: str,
    hint: str = " If it marks missing values, pass it to na_values= (--na-values {value}).",
) -> list[str]:
    """Warn about likely missing-value markers and absurd outliers in ``columns`` of the raw
    (not yet resampled) rows; returns the messages. ``hint`` may use ``{value}``."""
    messages: list[str] = []
    for col in dict.fromkeys(columns):
        values = frame[col].dropna()
        values = values[values.abs() <= FLOAT32_MAX]  # larger ones are a DataError later
        if values.empty:
            continue
        negative = values[values < 0]
        counts = negative.value_counts()
        markers = [v for v in SENTINELS if counts.get(v, 0) >= 3]
        if not markers and len(counts) == 1 and counts.iloc[0] >= max(3, 0.01 * len(values)):
            markers = [float(counts.index[0])]  # the only negative value, repeated
        for marker in markers:
            n, shown = int(counts[marker]), _number(marker)
            warn(
                f"{source}: column {col!r} has {n} values equal to {shown} "
                f"({n / len(values):.0%} of its values), which looks like a missing-value "
                f"marker; as it is, they are trained on as data.{hint.format(value=shown)}",
                messages,
            )
        q1, median, q3 = values.quantile([0.25, 0.5, 0.75])
        spread = q3 - q1
        if spread > 0:
            far = values[(values - median).abs() > OUTLIER_IQRS * spread]
            far = far[~far.isin(markers)]
            if len(far):
                worst = far.loc[(far - median).abs().idxmax()]
                warn(
                    f"{source}: column {col!r} has {len(far)} value(s) more than "
                    f"{OUTLIER_IQRS:,.0f} interquartile ranges from its median {_number(median)} "
                    f"(e.g. {_number(worst)}); min-max scaling squeezes every other value into a "
                    "sliver of [0, 1]. Check for a typing or unit error, or mark such values "
                    "missing (na_values=).",
                    messages,
                )
    return messages


def duplicate_timestamps(index: pd.DatetimeIndex, source: str, freq: str) -> list[str]:
    """Warn when timestamps repeat: their rows are averaged (the documented policy)."""
    repeated = index.duplicated(keep=False)
    if not repeated.any():
        return []
    stamps = index[repeated].unique()
    messages: list[str] = []
    warn(
        f"{source}: {len(stamps)} timestamp(s) occur more than once ({int(repeated.sum())} rows, "
        f"e.g. {stamps[0]}); rows with the same timestamp are averaged, like all rows of one "
        f"{freq!r} bin. Remove the duplicates first if they are not repeated measurements.",
        messages,
    )
    return messages


def _window_count(bad_rows: np.ndarray, label_ok: np.ndarray, window: int) -> int:
    """Windows whose ``window`` input rows are all good, among the candidate ends whose label
    is present (``label_ok`` is indexed like the candidate ends ``window-1 .. window-1+n``)."""
    bad_before = np.concatenate(([0], np.cumsum(bad_rows)))
    ends = np.arange(window - 1, window - 1 + len(label_ok))
    clean = bad_before[ends + 1] - bad_before[ends + 1 - window] == 0
    return int((clean & label_ok).sum())


def costly_features(
    missing: np.ndarray,
    label_ok: np.ndarray,
    features: Sequence[str],
    target: str,
    window: int,
    source: str,
) -> list[str]:
    """Warn about each feature (not the target) that alone removes at least
    :data:`COSTLY_SHARE` of the windows the other columns leave.

    ``missing`` is the (rows, features) NaN mask on the regular grid, ``label_ok`` whether each
    candidate window end ``window-1, window, ...`` has its label.
    """
    messages: list[str] = []
    if missing.size == 0 or not missing.any():
        return messages
    kept = _window_count(missing.any(axis=1), label_ok, window)
    for j, col in enumerate(features):
        if col == target or not missing[:, j].any():
            continue
        without = _window_count(np.delete(missing, j, axis=1).any(axis=1), label_ok, window)
        lost = without - kept
        if without == 0 or lost < COSTLY_SHARE * without:
            continue
        others = ",".join(f for f in features if f != col)
        warn(
            f"{source}: feature {col!r} is missing in {int(missing[:, j].sum()):,} of "
            f"{len(missing):,} rows ({missing[:, j].mean():.0%}) and alone removes {lost:,} of "
            f"{without:,} windows ({lost / without:.0%}; a window needs every input value). "
            f"Leave it out with --features {others} (features=...) if it is not essential.",
            messages,
        )
    return messages
