"""Sliding windows, a leak-free chronological split, and min-max scaling.

Conventions (all documented here once, relied on by training and evaluation):

* A window ending at time step ``t`` has inputs ``X = rows t-window+1 .. t`` (every feature
  column, the target's own past included when it is a feature) and label
  ``y = target at t+horizon``. ``horizon=0`` labels the window's last step, as the paper
  authors' code does; with the target among the features that label is also the last input
  value (a nowcast, persistence is exact), so drop the target from the features for that task.
* A window is kept only if all ``window`` input steps and the label step exist on the regular
  grid and none of those input values nor the label is NaN. Missing hours (gaps in the index or
  NaN rows) therefore never appear inside a window; nothing is interpolated.
* Splits are chronological by label time. The valid windows are cut by count
  (``split`` fractions) and every row of the series then belongs to exactly one period (train,
  val, test). A window is kept only if *all* its rows (inputs and label) are in its period;
  windows straddling a cut are dropped (``WindowedDataset.n_dropped``), so no val/test value is
  ever a train input or label and val/test inputs never reuse train rows.
* The scaler is fitted on the train windows' rows only (input rows for each feature, plus the
  label rows for the target), so train values span exactly [0, 1]; val/test may fall outside.
* What the model outputs (``predict``): ``"level"``, the scaled target itself, or ``"change"``,
  the scaled change of the target from the window's last input step to the label
  (``y - X[:, -1, target]``). With ``"change"`` the forecast is that last observed value plus
  the model's output (:meth:`WindowedDataset.forecast`), the differencing of classical
  forecasting and the last-value normalisation of NLinear (Zeng et al., AAAI 2023). ``y_*``
  always hold the level; :meth:`WindowedDataset.model_target` gives what the model is trained
  on. Why it matters for quantisation: at one hour ahead most of the forecast is the last
  value (persistence is within a few per cent of the best models), and with ``"level"`` that
  value has to travel through every quantised activation of the network, whose ranges it
  shares with everything else; at 4 bits it is carried with a step of tens of µg/m³. With
  ``"change"`` the last value goes around the quantised datapath (the host adds it, as it
  undoes the min-max scaling) and the network only has to produce the correction.

Example::

    >>> from brevitas_apq.data import load_beijing, prepare_dataset
    >>> ds = prepare_dataset(load_beijing(), window=24, horizon=1)
    >>> ds.X_train.shape[1:], ds.features[0]
    ((24, 11), 'pm2.5')
    >>> import numpy as np
    >>> y, naive = ds.inverse_target(ds.y_test), ds.inverse_target(ds.persistence("test"))
    >>> rmse = float(np.sqrt(np.mean((naive - y) ** 2)))  # persistence RMSE in µg/m³
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from .checks import costly_features
from .series import DataError, TimeSeries, _listing

__all__ = [
    "PREDICT_MODES",
    "SPLITS",
    "MinMaxScaler",
    "WindowedDataset",
    "Windows",
    "make_windows",
    "prepare_dataset",
]

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
PREDICT_MODES = ("level", "change")


# --------------------------------------------------------------------------------------------
# Scaler
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class MinMaxScaler:
    """Per-column min-max scaling to [0, 1] (numpy only; the fitted range is kept, not refit).

    A constant column (max == min) gets scale 1, i.e. it maps to 0 instead of dividing by 0.

    Example::

        >>> s = MinMaxScaler.fit([[0.0, 10.0], [4.0, 20.0]], columns=("a", "b"))
        >>> s.transform([[2.0, 15.0]]).tolist()
        [[0.5, 0.5]]
        >>> s.inverse_column([0.5], "b").tolist()
        [15.0]
    """

    columns: tuple[str, ...]
    data_min: np.ndarray
    data_max: np.ndarray

    def __post_init__(self) -> None:
        lo = np.asarray(self.data_min, dtype=np.float64).reshape(-1)
        hi = np.asarray(self.data_max, dtype=np.float64).reshape(-1)
        if not (len(lo) == len(hi) == len(self.columns)):
            raise DataError("MinMaxScaler: columns, data_min and data_max differ in length.")
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(hi >= lo)):
            raise DataError("MinMaxScaler: data_min/data_max must be finite with max >= min.")
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "data_min", lo)
        object.__setattr__(self, "data_max", hi)

    @classmethod
    def fit(cls, values: np.typing.ArrayLike, columns: Sequence[str]) -> MinMaxScaler:
        """Fit on ``values`` of shape (rows, len(columns)); NaN is ignored."""
        arr = np.asarray(values, dtype=np.float64).reshape(-1, len(columns))
        empty = [c for c, ok in zip(columns, np.isfinite(arr).any(axis=0), strict=True) if not ok]
        if empty:
            raise DataError(f"MinMaxScaler.fit: no values to fit column(s) {_listing(empty)}.")
        return cls(tuple(columns), np.nanmin(arr, axis=0), np.nanmax(arr, axis=0))

    @property
    def scale(self) -> np.ndarray:
        """``max - min`` per column, 1 where the column was constant."""
        span = self.data_max - self.data_min
        return np.where(span > 0, span, 1.0)

    def _index(self, column: str) -> int:
        try:
            return self.columns.index(column)
        except ValueError:
            raise DataError(
                f"MinMaxScaler: unknown column {column!r}; fitted columns: "
                f"{_listing(self.columns)}."
            ) from None

    def transform(self, values: np.typing.ArrayLike) -> np.ndarray:
        """Scale an array whose last axis holds all fitted columns, in order."""
        return (np.asarray(values, dtype=np.float64) - self.data_min) / self.scale

    def inverse_transform(self, values: np.typing.ArrayLike) -> np.ndarray:
        """Undo :meth:`transform`."""
        return np.asarray(values, dtype=np.float64) * self.scale + self.data_min

    def transform_column(self, values: np.typing.ArrayLike, column: str) -> np.ndarray:
        """Scale values of one column (any shape)."""
        i = self._index(column)
        return (np.asarray(values, dtype=np.float64) - self.data_min[i]) / self.scale[i]

    def inverse_column(self, values: np.typing.ArrayLike, column: str) -> np.ndarray:
        """Values of one column (any shape) back in data units."""
        i = self._index(column)
        return np.asarray(values, dtype=np.float64) * self.scale[i] + self.data_min[i]

    def to_dict(self) -> dict[str, list]:
        """JSON-friendly parameters (for saving next to a trained model)."""
        return {
            "columns": list(self.columns),
            "data_min": self.data_min.tolist(),
            "data_max": self.data_max.tolist(),
        }

    @classmethod
    def from_dict(cls, params: dict) -> MinMaxScaler:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(params["columns"]), params["data_min"], params["data_max"])


# --------------------------------------------------------------------------------------------
# Windowing
# --------------------------------------------------------------------------------------------


def _check_window_args(window: object, horizon: object) -> tuple[int, int]:
    if isinstance(window, bool) or not isinstance(window, int | np.integer) or window < 1:
        raise DataError(f"window={window!r}: must be an integer >= 1 (input time steps).")
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 0:
        raise DataError(
            f"horizon={horizon!r}: must be an integer >= 0 (steps ahead of the window's last "
            "step; 0 = the last step itself)."
        )
    return int(window), int(horizon)


def _regular_frame(series: TimeSeries) -> pd.DataFrame:
    """The series' columns on a complete grid: absent time steps become NaN rows."""
    frame = series.frame[list(series.columns)]
    if frame.empty:
        return frame
    try:
        grid = pd.date_range(frame.index[0], frame.index[-1], freq=series.freq)
    except ValueError as exc:
        raise DataError(f"{series.name}: invalid freq={series.freq!r} ({exc}).") from None
    off_grid = frame.index.difference(grid)
    if len(off_grid):
        raise DataError(
            f"{series.name}: {len(off_grid)} timestamp(s) are not on the {series.freq!r} grid "
            f"starting at {frame.index[0]} (e.g. {off_grid[0]}); resample the data first "
            "(load_csv(..., resample='h'))."
        )
    return frame.reindex(grid)


@dataclass(frozen=True)
class _Layout:
    """Valid windows of a series, by position on its regular grid."""

    index: pd.DatetimeIndex  # the regular grid
    values: np.ndarray  # (T, F) feature values, float64
    target: np.ndarray  # (T,) target values, float64
    ends: np.ndarray  # (N,) grid position of each window's last input step
    data_warnings: tuple[str, ...]  # the series' warnings and the costly-feature ones


def _too_short(
    series: TimeSeries,
    frame: pd.DataFrame,
    window: int,
    horizon: int,
    found: int,
    needed: int,
    why: str,
) -> DataError:
    missing = frame.isna().mean().sort_values(ascending=False)
    worst = ", ".join(f"{c} {p:.0%}" for c, p in missing.head(3).items() if p > 0) or "none"
    return DataError(
        f"{series.name}: series too short for {why}: {found} valid window(s), need at least "
        f"{needed}. A window needs window+horizon = {window + horizon} consecutive "
        f"{series.freq!r} steps with no missing input or label; the grid has {len(frame)} "
        f"steps, {int(frame.isna().any(axis=1).sum())} of them with a missing value (most "
        f"missing: {worst}). Use a smaller window, drop mostly-missing features "
        "(features=...) or provide more data."
    )


def _layout(series: TimeSeries, window: int, horizon: int, needed: int, why: str) -> _Layout:
    frame = _regular_frame(series)
    if frame.empty:
        raise _too_short(series, frame, window, horizon, 0, needed, why)
    if frame[series.target].notna().sum() == 0:
        raise DataError(
            f"{series.name}: the target {series.target!r} is entirely missing; choose another "
            "target or check how missing values were marked (na_values=)."
        )
    values = frame[list(series.features)].to_numpy(dtype=np.float64)
    target = frame[series.target].to_numpy(dtype=np.float64)
    n = len(frame)
    ends = np.arange(window - 1, n - horizon)
    notes = list(series.data_warnings)
    if len(ends):
        # bad_before[k] = number of rows with a NaN input among rows 0..k-1, so a window
        # [e-window+1, e] is clean iff the difference over that range is 0 (O(T), no loops).
        bad_before = np.concatenate(([0], np.cumsum(np.isnan(values).any(axis=1))))
        clean = bad_before[ends + 1] - bad_before[ends + 1 - window] == 0
        label_ok = ~np.isnan(target[ends + horizon])
        ends = ends[clean & label_ok]
        if len(ends) >= needed:  # otherwise the error below names the most-missing columns
            notes += costly_features(
                np.isnan(values), label_ok, series.features, series.target, window, series.name
            )
    if len(ends) < needed:
        raise _too_short(series, frame, window, horizon, len(ends), needed, why)
    return _Layout(frame.index, values, target, ends, tuple(notes))


def _gather(values: np.ndarray, ends: np.ndarray, window: int) -> np.ndarray:
    """(N, window, F) copies of rows ``end-window+1 .. end`` for each end."""
    if len(ends) == 0:
        return np.empty((0, window, values.shape[1]), dtype=values.dtype)
    view = sliding_window_view(values, window, axis=0)  # (T-window+1, F, window), no copy
    return np.ascontiguousarray(view[ends - window + 1].transpose(0, 2, 1))


@dataclass(frozen=True, eq=False)
class Windows:
    """Unscaled windows in data units (see :func:`make_windows`)."""

    X: np.ndarray  # (N, window, F) float64
    y: np.ndarray  # (N,) float64, target at t+horizon
    timestamps: pd.DatetimeIndex  # (N,) time of each label
    features: tuple[str, ...]
    target: str
    window: int
    horizon: int

    def __len__(self) -> int:
        return len(self.y)


def make_windows(series: TimeSeries, window: int = 24, horizon: int = 1) -> Windows:
    """All valid (inputs, label) windows of ``series``, in time order, unscaled.

    ``X[i]`` holds rows ``t-window+1 .. t`` of every feature, ``y[i]`` the target at
    ``t+horizon`` and ``timestamps[i]`` that label's time. Windows containing a missing time
    step or any NaN input or label are skipped (see the module docstring).

    Example::

        >>> from brevitas_apq.data import load_beijing
        >>> w = make_windows(load_beijing(), window=24, horizon=1)
        >>> w.X.shape, str(w.timestamps[0])
        ((37596, 24, 11), '2010-01-03 00:00:00')
    """
    window, horizon = _check_window_args(window, horizon)
    lay = _layout(series, window, horizon, needed=1, why="one window")
    return Windows(
        X=_gather(lay.values, lay.ends, window),
        y=lay.target[lay.ends + horizon].copy(),
        timestamps=lay.index[lay.ends + horizon],
        features=series.features,
        target=series.target,
        window=window,
        horizon=horizon,
    )


# --------------------------------------------------------------------------------------------
# Split + scale
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class WindowedDataset:
    """Scaled float32 train/val/test windows plus everything needed to undo the scaling.

    ``X_*`` are (N, window, F) float32, ``y_*`` (N,) float32 (scaled with the target's own
    train min/max, i.e. the same units as its input column), ``t_*`` the label timestamps.
    ``split_times = (val_start, test_start)``: train windows use only rows before
    ``val_start``, val windows only rows in ``[val_start, test_start)``, test windows only rows
    from ``test_start``. ``predict`` is what the model outputs (``"level"`` or ``"change"``,
    see the module docstring): train on :meth:`model_target`, turn outputs into forecasts with
    :meth:`forecast`. ``data_warnings``: the :class:`~brevitas_apq.data.series.DataWarning`
    messages of loading and windowing (a training run writes them to ``metrics.json``).
    """

    X_train: np.ndarray
    y_train: np.ndarray
    t_train: pd.DatetimeIndex
    X_val: np.ndarray
    y_val: np.ndarray
    t_val: pd.DatetimeIndex
    X_test: np.ndarray
    y_test: np.ndarray
    t_test: pd.DatetimeIndex
    features: tuple[str, ...]
    target: str
    window: int
    horizon: int
    scaler: MinMaxScaler
    name: str
    split_times: tuple[pd.Timestamp, pd.Timestamp]
    n_dropped: int  # valid windows dropped because they straddle a split boundary
    predict: str = "level"
    data_warnings: tuple[str, ...] = ()  # DataWarning messages of loading and windowing
    n_train: int = field(init=False)
    n_val: int = field(init=False)
    n_test: int = field(init=False)

    def __post_init__(self) -> None:
        _check_predict(self.predict, self.features, self.target)
        for split in SPLITS:
            object.__setattr__(self, f"n_{split}", len(getattr(self, f"y_{split}")))

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def target_index(self) -> int | None:
        """Position of the target among the features, or None if it is not an input."""
        return self.features.index(self.target) if self.target in self.features else None

    def arrays(self, split: Split) -> tuple[np.ndarray, np.ndarray, pd.DatetimeIndex]:
        """``(X, y, timestamps)`` of ``"train"``, ``"val"`` or ``"test"``."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}.")
        return (
            getattr(self, f"X_{split}"),
            getattr(self, f"y_{split}"),
            getattr(self, f"t_{split}"),
        )

    def inverse_target(self, y_scaled: np.typing.ArrayLike) -> np.ndarray:
        """Scaled target values (labels or predictions, any shape) back in target units."""
        return self.scaler.inverse_column(y_scaled, self.target)

    def _last_target(self, X: np.ndarray) -> np.ndarray:
        if self.predict == "level":
            return np.zeros(len(X), np.float32)
        return np.asarray(X)[:, -1, self.target_index]

    def model_target(self, split: Split) -> np.ndarray:
        """What the model is trained to output for ``split`` (scaled): the label itself
        (``"level"``) or its change from the window's last input step (``"change"``)."""
        X, y, _ = self.arrays(split)
        return (y - self._last_target(X)).astype(np.float32)

    def forecast(self, output: np.typing.ArrayLike, X: np.ndarray) -> np.ndarray:
        """Scaled forecasts from model ``output`` for windows ``X``: the output itself
        (``"level"``) or the window's last target value plus the output (``"change"``).
        ``inverse_target`` of the result is in target units."""
        output = np.asarray(output, np.float32).reshape(-1)
        return output + self._last_target(X)

    def persistence(self, split: Split) -> np.ndarray:
        """Naive forecast in scaled units: the target's value at each window's last step.

        RMSE in target units: ``inverse_target(persistence(s))`` vs ``inverse_target(y)``.
        """
        X, _, _ = self.arrays(split)
        if self.target_index is None:
            raise DataError(
                f"persistence needs the target {self.target!r} among the input features; "
                f"features are {_listing(self.features)}."
            )
        return X[:, -1, self.target_index].copy()


def _check_predict(predict: object, features: Sequence[str], target: str) -> str:
    if predict not in PREDICT_MODES:
        raise DataError(f"predict={predict!r} is invalid; valid: {', '.join(PREDICT_MODES)}.")
    if predict == "change" and target not in features:
        raise DataError(
            f"predict='change' adds the model's output to the last observed {target!r}, but "
            f"{target!r} is not an input feature (features: {_listing(features)}); add it to "
            "the features or use predict='level'."
        )
    return predict  # type: ignore[return-value]


def _check_split(split: Sequence[float]) -> tuple[float, float, float]:
    try:
        fractions = tuple(float(f) for f in split)
    except (TypeError, ValueError):
        raise DataError(f"split={split!r}: expected three numbers (train, val, test).") from None
    if len(fractions) != 3:
        raise DataError(
            f"split={split!r}: expected three fractions (train, val, test), e.g. (0.7, 0.15, 0.15)."
        )
    if not all(math.isfinite(f) and f > 0 for f in fractions):
        raise DataError(
            f"split={split!r}: every fraction must be > 0 (validation and test are separate "
            "and both needed), e.g. (0.7, 0.15, 0.15)."
        )
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise DataError(
            f"split={split!r}: fractions sum to {sum(fractions):g}, must sum to 1, e.g. "
            "(0.7, 0.15, 0.15)."
        )
    return fractions  # type: ignore[return-value]


def prepare_dataset(
    series: TimeSeries,
    window: int = 24,
    horizon: int = 1,
    split: Sequence[float] = (0.7, 0.15, 0.15),
    predict: str = "level",
) -> WindowedDataset:
    """Window, split chronologically (train / val / test) and min-max scale a series.

    ``predict`` is what the model will output, ``"level"`` or ``"change"`` (from the last
    input step; needs the target among the features). See the module docstring for the exact
    rules. In short: valid windows are cut by count
    into ``split`` fractions in label-time order; windows straddling a cut are dropped so the
    three periods share no row; the scaler is fitted on the train rows only.

    Example::

        >>> from brevitas_apq.data import load_beijing
        >>> ds = prepare_dataset(load_beijing(), window=24, horizon=1)
        >>> ds.n_train, ds.n_val, ds.n_test, ds.n_dropped
        (26317, 5616, 5615, 48)
    """
    window, horizon = _check_window_args(window, horizon)
    fractions = _check_split(split)
    _check_predict(predict, series.features, series.target)
    lay = _layout(series, window, horizon, needed=3, why="a train/val/test split")
    ends, n_rows = lay.ends, len(lay.index)
    starts, labels = ends - window + 1, ends + horizon
    n = len(ends)

    # Cut by count of valid windows; each cut row is the first row after the last label of
    # the windows before it, so train keeps exactly its share and later periods lose the
    # windows that would reach back across the cut.
    k1 = min(max(round(fractions[0] * n), 1), n - 2)
    k2 = min(max(round((fractions[0] + fractions[1]) * n), k1 + 1), n - 1)
    cut1, cut2 = labels[k1 - 1] + 1, labels[k2 - 1] + 1
    period_start = np.where(starts < cut1, 0, np.where(starts < cut2, 1, 2))
    period_end = np.where(labels < cut1, 0, np.where(labels < cut2, 1, 2))
    keep = period_start == period_end
    masks = [keep & (period_start == p) for p in range(3)]
    for name, mask in zip(SPLITS, masks, strict=True):
        if not mask.any():
            raise DataError(
                f"{series.name}: series too short for split={fractions}: the {name} split has "
                f"0 windows ({n} valid windows of window={window}, horizon={horizon} before "
                f"dropping {int((~keep).sum())} that straddle a split boundary; each boundary "
                f"costs up to window+horizon-1 = {window + horizon - 1}). Provide more data, "
                "use a smaller window or larger val/test fractions."
            )

    # Fit on train rows only: each feature on the train input rows, the target also on the
    # train label rows (labels are what the model is trained to output).
    tr_starts, tr_ends, tr_labels = starts[masks[0]], ends[masks[0]], labels[masks[0]]
    cover = np.zeros(n_rows + 1, dtype=np.int64)
    np.add.at(cover, tr_starts, 1)
    np.add.at(cover, tr_ends + 1, -1)
    input_rows = np.cumsum(cover[:-1]) > 0
    columns = series.columns
    lo = np.empty(len(columns))
    hi = np.empty(len(columns))
    for j, col in enumerate(columns):
        if col in series.features:
            vals = lay.values[input_rows, series.features.index(col)]
            if col == series.target:
                vals = np.concatenate([vals, lay.target[tr_labels]])
        else:  # target not an input: only its labels exist in train
            vals = lay.target[tr_labels]
        lo[j], hi[j] = vals.min(), vals.max()
    scaler = MinMaxScaler(columns, lo, hi)

    feat_idx = [columns.index(f) for f in series.features]
    scaled = ((lay.values - lo[feat_idx]) / scaler.scale[feat_idx]).astype(np.float32)
    target_scaled = scaler.transform_column(lay.target, series.target).astype(np.float32)
    parts: dict[str, object] = {}
    for name, mask in zip(SPLITS, masks, strict=True):
        parts[f"X_{name}"] = _gather(scaled, ends[mask], window)
        parts[f"y_{name}"] = target_scaled[labels[mask]]
        parts[f"t_{name}"] = lay.index[labels[mask]]
    return WindowedDataset(
        **parts,  # type: ignore[arg-type]
        features=series.features,
        target=series.target,
        window=window,
        horizon=horizon,
        scaler=scaler,
        name=series.name,
        split_times=(lay.index[cut1], lay.index[cut2]),
        n_dropped=int((~keep).sum()),
        predict=predict,
        data_warnings=lay.data_warnings,
    )
