"""Loaders: the embedded Beijing PM2.5 data, the AirU formats, and generic CSV files.

Every loader returns a :class:`~brevitas_apq.data.series.TimeSeries` on a regular hourly grid
(a missing hour is a row of NaN, timestamps tz-naive UTC) whose ``features`` start with the
target, so the model always sees the target's own past. Bad input raises
:class:`~brevitas_apq.data.series.DataError` with a message that says what to change.

Example::

    >>> from brevitas_apq.data import load_dataset
    >>> ts = load_dataset("beijing")
    >>> ts.target, ts.features[:3], len(ts.frame)
    ('pm2.5', ('pm2.5', 'DEWP', 'TEMP'), 43824)
    >>> # UCI "Air Quality" file: ';' separated, ',' decimals, -200 = missing
    >>> ts = load_dataset("csv:AirQualityUCI.csv", target="CO(GT)", timestamp=("Date", "Time"),
    ...                   timestamp_format="%d/%m/%Y %H.%M.%S", delimiter=";", decimal=",",
    ...                   na_values=(-200,))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format
from pandas.tseries.frequencies import to_offset

from .checks import duplicate_timestamps, suspicious_values
from .series import DataError, TimeSeries, _listing

__all__ = [
    "BEIJING_FILE",
    "BEIJING_SHA256",
    "DATASET_SPECS",
    "load_airu",
    "load_beijing",
    "load_csv",
    "load_dataset",
]

BEIJING_FILE = "PRSA_data_2010.1.1-2014.12.31.csv.gz"
# SHA-256 of the shipped .gz (not of the CSV inside): checking the exact bytes we parse.
BEIJING_SHA256 = "7f942332746ea16abad083b53f8f481f98fabc0d9ec60f21cdf6a4705d9e3ee1"
BEIJING_TARGET = "pm2.5"
_BEIJING_NUMERIC = ("pm2.5", "DEWP", "TEMP", "PRES", "Iws", "Is", "Ir")
_BEIJING_WIND = ("NW", "NE", "SE", "cv")  # fixed order, so feature indices never shift

DATASET_SPECS = ("beijing", "airu:PATH", "csv:PATH")

# AirU: canonical (cloud-export) names in the order they become features.
AIRU_COLUMNS = ("PM1", "PM2_5", "PM10", "Temperature", "Humidity", "RED", "NOX")
# Lower-case name with any "(unit)" suffix removed -> canonical name. The SD-card "OX" channel
# and the cloud "NOX"/"MicsNOX" column are the same MiCS oxidising-gas sensor, so both become
# NOX and a model trained on one export style accepts data from the other.
_AIRU_ALIASES = {
    "timestamp": "Timestamp",
    "time": "Timestamp",  # "Time (GMT)" on the SD card
    "pm1": "PM1",
    "pm1.0": "PM1",
    "pm2.5": "PM2_5",
    "pm2_5": "PM2_5",
    "pm10": "PM10",
    "temperature": "Temperature",
    "humidity": "Humidity",
    "red": "RED",
    "micsred": "RED",
    "nox": "NOX",
    "micsnox": "NOX",
    "ox": "NOX",
}
# Device bookkeeping, constant or meaningless as model inputs.
_AIRU_DROP = {"mac", "uptime", "altitude", "latitude", "longitude", "time source"}
_UNIT_SUFFIX = re.compile(r"\s*\(.*\)\s*$")


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _delimiter_hint(columns: Sequence[str]) -> str:
    """Suggest a delimiter when the whole header landed in one column."""
    if len(columns) == 1:
        for sep in (";", "\t", "|", ","):
            if sep in str(columns[0]):
                return f" The header was read as one column: try delimiter={sep!r}."
    return ""


def _require_columns(columns: Sequence[str], wanted: Sequence[str], source: str, what: str) -> None:
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise DataError(
            f"{source}: {what} column(s) {_listing(missing)} not found. Available columns: "
            f"{_listing(columns)}.{_delimiter_hint(columns)}"
        )


def _read_csv(source: Path | io.BytesIO, name: str, **kwargs: Any) -> pd.DataFrame:
    """``pd.read_csv`` with file-system and parser errors turned into DataError."""
    try:
        return pd.read_csv(source, **kwargs)
    except FileNotFoundError:
        raise DataError(f"{name}: file not found.") from None
    except IsADirectoryError:
        raise DataError(f"{name}: is a directory, expected a CSV file.") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{name}: the file is empty (no header line).") from None
    except pd.errors.ParserError as exc:
        raise DataError(
            f"{name}: could not parse the CSV ({exc}). Check delimiter= and that every row "
            "has the same number of fields."
        ) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: not UTF-8 text ({exc}); re-save the file as UTF-8.") from None


def _parse_timestamps(text: pd.Series, fmt: str | None, source: str) -> pd.DatetimeIndex:
    """Parse strings to a tz-naive UTC DatetimeIndex, or raise listing the bad values.

    Offsets (``+01:00``) are converted to UTC; naive stamps are taken as already UTC. Without
    an explicit ``fmt`` we try ISO 8601, then the format pandas guesses from the first value.
    We never fall back to per-element guessing: it silently swaps day and month.
    """
    if fmt is not None:
        candidates = [fmt]
    else:
        candidates = ["ISO8601"]
        first = text.iloc[0] if len(text) else None
        try:
            guessed = guess_datetime_format(first) if isinstance(first, str) else None
        except (ValueError, TypeError):
            guessed = None
        if guessed:
            candidates.append(guessed)
    best: tuple[int, str, pd.Series] | None = None
    for candidate in candidates:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parsed = pd.to_datetime(text, format=candidate, utc=True, errors="coerce")
        except (ValueError, TypeError) as exc:
            if fmt is not None:
                raise DataError(
                    f"{source}: invalid timestamp_format {fmt!r} ({exc}). Use strftime codes, "
                    "e.g. '%Y-%m-%d %H:%M:%S' or '%d/%m/%Y %H.%M.%S'."
                ) from None
            continue
        n_bad = int(parsed.isna().sum())
        if best is None or n_bad < best[0]:
            best = (n_bad, candidate, parsed)
        if n_bad == 0:
            break
    assert best is not None  # "ISO8601" never raises
    n_bad, used, parsed = best
    if n_bad:
        bad = parsed.isna().to_numpy()
        rows = np.flatnonzero(bad)[:5]
        sample = ", ".join(f"row {r + 1}: {text.iloc[r]!r}" for r in rows)
        tried = " and ".join(repr(c) for c in candidates)
        raise DataError(
            f"{source}: {n_bad} of {len(text)} timestamps could not be parsed with format "
            f"{tried} ({sample}). Pass timestamp_format= with the file's strftime format, e.g. "
            "'%d/%m/%Y %H.%M.%S' for '10/03/2004 18.00.00', and check the timestamp column(s)."
        )
    return pd.DatetimeIndex(parsed).tz_convert(None).rename(None)


def _to_numeric(frame: pd.DataFrame, columns: Sequence[str], source: str, hint: str) -> None:
    """Convert ``columns`` to float in place; raise, with examples, on non-numeric text."""
    for col in columns:
        values = frame[col]
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            converted = pd.to_numeric(values, errors="coerce")
            bad = converted.isna() & values.notna()
            if bad.any():
                sample = ", ".join(repr(v) for v in pd.unique(values[bad])[:5])
                raise DataError(
                    f"{source}: column {col!r} has {int(bad.sum())} non-numeric value(s), e.g. "
                    f"{sample}.{hint}"
                )
            values = converted
        frame[col] = values.astype("float64")


def _to_grid(
    frame: pd.DataFrame, resample: str | None, source: str, notes: list[str]
) -> tuple[pd.DataFrame, str]:
    """Put the rows on a regular grid: hourly means, or the data's own step (``resample=None``).

    Rows sharing a timestamp are averaged with the rest of their bin, with a DataWarning (added
    to ``notes``) that counts them; with ``resample=None`` they are an error.
    """
    if resample is not None:
        try:
            freq = to_offset(resample).freqstr
        except (ValueError, TypeError) as exc:
            raise DataError(
                f"{source}: invalid resample={resample!r} ({exc}); use a pandas alias such as "
                "'h' (hourly), '30min' or None to keep the data's own time step."
            ) from None
        notes += duplicate_timestamps(frame.index, source, freq)
        # Mean per bin, labelled by the bin start (10:00 holds 10:00..10:59); empty bins
        # (missing hours) become NaN rows, which the windowing skips.
        return frame.resample(resample).mean(), freq
    frame = frame.sort_index()
    if frame.index.has_duplicates:
        dups = frame.index[frame.index.duplicated()].unique()[:3]
        raise DataError(
            f"{source}: duplicate timestamps (e.g. {', '.join(map(str, dups))}) with "
            "resample=None; use resample='h' to average them into hourly means."
        )
    if len(frame) < 2:
        raise DataError(
            f"{source}: cannot infer the time step from {len(frame)} row(s); pass resample='h'."
        )
    step = pd.Series(frame.index).diff().mode().iloc[0]
    grid = pd.date_range(frame.index[0], frame.index[-1], freq=step)
    off_grid = frame.index.difference(grid)
    if len(off_grid):
        raise DataError(
            f"{source}: {len(off_grid)} timestamp(s) are not on the {step} grid (e.g. "
            f"{off_grid[0]}) with resample=None; use resample='h' to average onto an hourly grid."
        )
    return frame.reindex(grid), to_offset(step).freqstr


def _check_target(frame: pd.DataFrame, target: str, source: str) -> None:
    if frame[target].notna().sum() == 0:
        raise DataError(
            f"{source}: the target column {target!r} has no values (all {len(frame)} rows are "
            "missing). Choose another target= or check na_values=/decimal=/delimiter=."
        )


def _features_with_target_first(
    target: str, features: Sequence[str] | None, default: Sequence[str]
) -> tuple[str, ...]:
    chosen = list(default if features is None else features)
    if features is None:
        # Default: the target's own past is an input, and comes first (feature index 0).
        chosen = [target, *[c for c in chosen if c != target]]
    return tuple(dict.fromkeys(chosen))


# --------------------------------------------------------------------------------------------
# Beijing PM2.5 (embedded)
# --------------------------------------------------------------------------------------------


def load_beijing(path: str | Path | None = None) -> TimeSeries:
    """The embedded UCI Beijing PM2.5 data set (hourly, 2010-2014), checksum-verified.

    Target ``pm2.5`` (µg/m³). Features, in order: ``pm2.5`` (its own past), ``DEWP``,
    ``TEMP``, ``PRES``, ``Iws``, ``Is``, ``Ir``, then ``cbwd`` one-hot as ``cbwd_NW``,
    ``cbwd_NE``, ``cbwd_SE``, ``cbwd_cv`` (floats). ``year/month/day/hour`` become the
    DatetimeIndex and ``No`` (a row counter) is dropped: neither carries information a model
    should learn from (the calendar year would only let it extrapolate a trend). The 2,067
    ``NA`` targets stay NaN; windows touching them are skipped later.

    ``path`` is only for tests or an external copy: the file must still match
    :data:`BEIJING_SHA256`, otherwise DataError names the file and both hashes.

    Example::

        >>> ts = load_beijing()
        >>> ts.frame.shape, int(ts.frame["pm2.5"].isna().sum())
        ((43824, 11), 2067)
    """
    if path is None:
        resource = resources.files("brevitas_apq.data") / "embedded" / BEIJING_FILE
        name, raw = f"embedded {BEIJING_FILE}", resource.read_bytes()
    else:
        name = str(path)
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise DataError(f"{name}: cannot read the Beijing data file ({exc}).") from None
    # Hash the same bytes we parse, so a check-then-read race cannot slip in another file.
    digest = hashlib.sha256(raw).hexdigest()
    if digest != BEIJING_SHA256:
        raise DataError(
            f"{name}: SHA-256 mismatch (expected {BEIJING_SHA256}, got {digest}); the file is "
            "corrupt or modified. Restore it from the package (reinstall brevitas-apq)."
        )
    df = _read_csv(io.BytesIO(raw), name, compression="gzip")
    _require_columns(list(df.columns), ["year", "month", "day", "hour", "cbwd"], name, "Beijing")

    index = pd.DatetimeIndex(pd.to_datetime(df[["year", "month", "day", "hour"]]), name=None)
    frame = df[list(_BEIJING_NUMERIC)].astype("float64").set_axis(index)
    # Explicit one-hot (not get_dummies) so the column order is fixed and a missing wind
    # direction would stay NaN in all four columns instead of looking like "none of them".
    wind = df["cbwd"].set_axis(index)
    for direction in _BEIJING_WIND:
        frame[f"cbwd_{direction}"] = (wind == direction).astype("float64").where(wind.notna())
    frame = frame.reindex(pd.date_range(index[0], index[-1], freq="h"))  # no-op: no gaps
    return TimeSeries(
        frame=frame,
        target=BEIJING_TARGET,
        features=tuple(frame.columns),
        name="beijing",
        freq="h",
    )


# --------------------------------------------------------------------------------------------
# AirU
# --------------------------------------------------------------------------------------------


def _airu_name(column: str) -> str | None:
    """Canonical AirU name for a raw header, or None for columns that are dropped."""
    base = _UNIT_SUFFIX.sub("", str(column)).strip()
    key = base.lower()
    if key in _AIRU_DROP:
        return None
    return _AIRU_ALIASES.get(key, base)


def _read_airu_file(path: Path) -> pd.DataFrame:
    raw = _read_csv(path, str(path), dtype=str, skipinitialspace=True)
    renamed: dict[str, str] = {}
    for col in raw.columns:
        new = _airu_name(col)
        if new is None:
            continue
        if new in renamed.values():
            other = next(k for k, v in renamed.items() if v == new)
            raise DataError(
                f"{path}: columns {other!r} and {col!r} both map to {new!r}; keep only one."
            )
        renamed[col] = new
    if "Timestamp" not in renamed.values():
        raise DataError(
            f"{path}: no timestamp column; expected 'Timestamp' (cloud export) or "
            f"'Time (GMT)' (SD card). Available columns: {_listing(list(raw.columns))}."
            f"{_delimiter_hint(list(raw.columns))}"
        )
    frame = raw[list(renamed)].rename(columns=renamed)
    return frame.dropna(subset=["Timestamp"]).reset_index(drop=True)  # blank trailing lines


def load_airu(
    path: str | Path,
    *,
    target: str = "PM2_5",
    features: Sequence[str] | None = None,
) -> TimeSeries:
    """AirU sensor data (University of Utah network), either header style, as hourly means.

    ``path`` is either

    * a cloud export: one CSV with ``Timestamp`` (UTC with offset, e.g.
      ``2022-01-01 00:00:00+00:00``) and ``PM1, PM2_5, PM10, Temperature, Humidity, RED, NOX``
      (``MicsRED``/``MicsNOX`` are accepted as RED/NOX), or
    * SD-card logs: a directory of per-day files ``YY-MM-DD.csv`` (all ``*.csv`` in it are read,
      in name order) or one such file, with the long header ``Time (GMT), MAC, Uptime (s), ...,
      PM2.5 (ug/m3), ..., RED (x/4096), OX (x/4096), Time Source ([N]TP/[G]PS)``.

    Unit suffixes are removed and names normalised to the cloud style (``PM2.5`` -> ``PM2_5``,
    ``OX`` -> ``NOX``, the same MiCS oxidising-gas channel); MAC, Uptime, Altitude, Latitude,
    Longitude and Time Source are dropped. Sub-hourly rows are averaged to hourly means
    labelled by the hour's start, on a regular grid (hours without rows are NaN). Timestamps
    are tz-naive UTC.

    Default features: the target first, then the other canonical sensor columns present
    (``PM1, PM2_5, PM10, Temperature, Humidity, RED, NOX``). Other columns are ignored unless
    named in ``features``.

    Example::

        >>> ts = load_airu("airu_export.csv")  # doctest: +SKIP
        >>> ts.features  # doctest: +SKIP
        ('PM2_5', 'PM1', 'PM10', 'Temperature', 'Humidity', 'RED', 'NOX')
    """
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
        if not files:
            raise DataError(
                f"{root}: no .csv files in this directory; expected AirU SD-card day files "
                "named YY-MM-DD.csv or a cloud export CSV."
            )
    elif root.exists():
        files = [root]
    else:
        raise DataError(f"{root}: file or directory not found.")

    raw = pd.concat([_read_airu_file(f) for f in files], ignore_index=True)
    source = str(root)
    columns = [c for c in raw.columns if c != "Timestamp"]
    default = [c for c in AIRU_COLUMNS if c in columns]
    chosen = _features_with_target_first(target, features, default)
    _require_columns(columns, list(dict.fromkeys((target, *chosen))), source, "AirU")
    used = list(dict.fromkeys((target, *chosen)))
    if raw.empty:
        raise DataError(f"{source}: the AirU file(s) contain a header but no data rows.")

    index = _parse_timestamps(raw["Timestamp"].str.strip(), None, source)
    frame = raw[used].set_axis(index)
    _to_numeric(frame, used, source, " Sensor columns must be plain numbers.")
    notes = suspicious_values(
        frame, used, source, " If it marks missing readings, blank those cells in the file."
    )
    frame, freq = _to_grid(frame, "h", source, notes)
    _check_target(frame, target, source)
    return TimeSeries(
        frame=frame,
        target=target,
        features=chosen,
        name=f"airu:{root.name}",
        freq=freq,
        data_warnings=tuple(notes),
    )


# --------------------------------------------------------------------------------------------
# Generic CSV
# --------------------------------------------------------------------------------------------

_TIMESTAMP_NAMES = ("timestamp", "datetime", "date_time", "time", "date")


def _as_tuple(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def load_csv(
    path: str | Path,
    *,
    target: str,
    timestamp: str | Sequence[str] | None = None,
    timestamp_format: str | None = None,
    features: Sequence[str] | None = None,
    delimiter: str = ",",
    decimal: str = ".",
    na_values: Sequence[str | float] | str | float = ("NA", ""),
    resample: str | None = "h",
    name: str | None = None,
) -> TimeSeries:
    """Any CSV time series (also ``.csv.gz``), read with pandas.

    Args:
        path: the CSV file.
        target: the column to forecast.
        timestamp: the timestamp column, or several columns joined with a space before parsing
            (e.g. ``("Date", "Time")``). Default: the first column named timestamp, datetime,
            date_time, time or date (any case); a Date and a Time column are joined.
        timestamp_format: strftime format of the (joined) timestamp, e.g.
            ``"%d/%m/%Y %H.%M.%S"``. Default: ISO 8601, else pandas' guess from the first
            value. Offsets are converted to UTC; naive stamps are kept as they are.
        features: input columns. Default: the target first, then every other numeric column
            except the timestamp column(s) and columns that are entirely empty.
        delimiter, decimal: as in ``pd.read_csv`` (``";"`` and ``","`` for European files).
        na_values: extra missing-value markers, on top of pandas' defaults (``NA``, empty, ...);
            numbers also match numerically, so ``-200`` catches ``-200,0``.
        resample: ``"h"`` (default) averages rows into hourly means on a regular grid; ``None``
            keeps the data's own step (the most common spacing) and only fills gaps with NaN.
        name: a name for logs (default ``csv:<file name>``).

    Rows whose timestamp fields are all empty (e.g. trailing ``;;;;`` lines) are dropped.

    Example (UCI Air Quality, dataset 360)::

        >>> ts = load_csv("AirQualityUCI.csv", target="CO(GT)", timestamp=("Date", "Time"),
        ...               timestamp_format="%d/%m/%Y %H.%M.%S", delimiter=";", decimal=",",
        ...               na_values=(-200,), features=["CO(GT)", "T", "RH"])  # doctest: +SKIP
    """
    path = Path(path)
    source = str(path)
    markers = [na_values] if isinstance(na_values, str | int | float) else list(na_values)
    read = {"sep": delimiter, "decimal": decimal}
    # Header first: missing columns are reported before parsing the whole file, and the
    # timestamp columns can then be read as text (no numeric/date guessing by pandas).
    header = list(_read_csv(path, source, nrows=0, **read).columns)
    if timestamp is None:
        lowered = {str(c).strip().lower(): c for c in header}
        found: str | tuple[str, str] | None
        found = next((lowered[n] for n in _TIMESTAMP_NAMES if n in lowered), None)
        if found in (lowered.get("time"), lowered.get("date")) and {"date", "time"} <= set(lowered):
            found = (lowered["date"], lowered["time"])  # separate Date and Time columns
        if found is None:
            raise DataError(
                f"{source}: no timestamp column found (looked for {_listing(_TIMESTAMP_NAMES)}); "
                f"pass timestamp='column' or timestamp=('Date', 'Time'). Available columns: "
                f"{_listing(header)}.{_delimiter_hint(header)}"
            )
        ts_cols = _as_tuple(found)
    else:
        ts_cols = _as_tuple(timestamp)
        if not ts_cols:
            raise DataError(f"{source}: timestamp= names no column.")
    _require_columns(header, ts_cols, source, "timestamp")
    _require_columns(header, [target], source, "target")
    if features is not None:
        _require_columns(header, list(features), source, "feature")
    if target in ts_cols or (features is not None and set(features) & set(ts_cols)):
        raise DataError(f"{source}: the timestamp column(s) {ts_cols} cannot be target/features.")

    df = _read_csv(
        path,
        source,
        na_values=[str(m) for m in markers],
        dtype=dict.fromkeys(ts_cols, str),
        **read,
    )
    df = df.dropna(subset=list(ts_cols), how="all").reset_index(drop=True)
    if df.empty:
        raise DataError(f"{source}: no data rows (only a header, or all timestamps empty).")

    # Also match missing markers numerically: "-200" must catch -200.0 however it was written.
    numbers = [float(m) for m in markers if _is_number(m)]
    value_cols = [c for c in df.columns if c not in ts_cols]
    if numbers:
        for col in value_cols:
            if pd.api.types.is_numeric_dtype(df[col]):
                df[col] = df[col].mask(df[col].isin(numbers))

    if features is None:
        numeric = [
            c
            for c in value_cols
            if pd.api.types.is_numeric_dtype(df[c])
            and not pd.api.types.is_bool_dtype(df[c])
            and df[c].notna().any()  # trailing-delimiter "Unnamed: 15" columns are all empty
        ]
        chosen = _features_with_target_first(target, None, numeric)
    else:
        chosen = tuple(dict.fromkeys(features))
    used = list(dict.fromkeys((target, *chosen)))

    hint = (
        f" Check decimal= (now {decimal!r}), delimiter= (now {delimiter!r}) and na_values= "
        "(now " + repr(tuple(markers)) + "), or leave the column out of features=."
    )
    text = df[ts_cols[0]].fillna("").str.strip()
    for col in ts_cols[1:]:
        text = text + " " + df[col].fillna("").str.strip()
    index = _parse_timestamps(text.str.strip(), timestamp_format, source)
    frame = df[used].set_axis(index)
    _to_numeric(frame, used, source, hint)
    notes = suspicious_values(frame, used, source)
    _check_target(frame, target, source)
    frame, freq = _to_grid(frame, resample, source, notes)
    return TimeSeries(
        frame=frame,
        target=target,
        features=chosen,
        name=name or f"csv:{path.name}",
        freq=freq,
        data_warnings=tuple(notes),
    )


def _is_number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------------------------
# CLI dataset spec
# --------------------------------------------------------------------------------------------

_CSV_OPTIONS = {
    "target",
    "timestamp",
    "timestamp_format",
    "features",
    "delimiter",
    "decimal",
    "na_values",
    "resample",
    "name",
}
_AIRU_OPTIONS = {"target", "features"}


def load_dataset(spec: str = "beijing", **csv_options: Any) -> TimeSeries:
    """Load a data set from a CLI spec: ``beijing`` (embedded default), ``airu:PATH``,
    ``csv:PATH``.

    ``csv_options`` go to :func:`load_csv` (``csv:``) or, for ``target``/``features`` only, to
    :func:`load_airu`. Options whose value is None are ignored, so a CLI can pass all of its
    flags unconditionally; any other option that the chosen source does not take is an error.

    Example::

        >>> load_dataset("beijing").name
        'beijing'
        >>> load_dataset("csv:data.csv", target="load_mw", timestamp="time")  # doctest: +SKIP
    """
    options = {k: v for k, v in csv_options.items() if v is not None}
    kind, sep, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    rest = rest.strip()
    valid = ", ".join(repr(s) for s in DATASET_SPECS)

    def check(allowed: set[str], what: str) -> None:
        extra = sorted(set(options) - allowed)
        if extra:
            allowed_txt = ", ".join(sorted(allowed)) if allowed else "none"
            raise DataError(
                f"dataset {spec!r}: option(s) {', '.join(extra)} do not apply to {what} "
                f"(accepted: {allowed_txt})."
            )

    if kind == "beijing" and not sep:
        check(set(), "the embedded Beijing data")
        return load_beijing()
    if kind in ("airu", "csv") and sep:
        if not rest:
            raise DataError(
                f"dataset {spec!r}: missing path after '{kind}:', e.g. '{kind}:data/x'."
            )
        if kind == "airu":
            check(_AIRU_OPTIONS, "airu:")
            return load_airu(rest, **options)
        check(_CSV_OPTIONS, "csv:")
        if "target" not in options:
            raise DataError(f"dataset {spec!r}: csv: needs target= (the column to forecast).")
        return load_csv(rest, **options)
    raise DataError(f"unknown dataset spec {spec!r}; valid specs: {valid}.")
