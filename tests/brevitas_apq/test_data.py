"""Tests for brevitas_apq.data: loaders, windowing, splitting, scaling and error messages."""

from __future__ import annotations

import hashlib
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brevitas_apq.data import (
    BEIJING_FILE,
    BEIJING_SHA256,
    DataError,
    MinMaxScaler,
    TimeSeries,
    load_airu,
    load_beijing,
    load_csv,
    load_dataset,
    make_windows,
    prepare_dataset,
)

EMBEDDED = resources.files("brevitas_apq.data") / "embedded"
BEIJING_FEATURES = (
    "pm2.5",
    "DEWP",
    "TEMP",
    "PRES",
    "Iws",
    "Is",
    "Ir",
    "cbwd_NW",
    "cbwd_NE",
    "cbwd_SE",
    "cbwd_cv",
)


@pytest.fixture(scope="module")
def beijing() -> TimeSeries:
    return load_beijing()


@pytest.fixture(scope="module")
def beijing_ds(beijing: TimeSeries):
    return prepare_dataset(beijing, window=24, horizon=1)


def make_series(
    y: list[float] | np.ndarray,
    x: list[float] | np.ndarray | None = None,
    *,
    index: pd.DatetimeIndex | None = None,
) -> TimeSeries:
    """Small synthetic hourly series with target 'y' (first feature) and feature 'x'."""
    y = np.asarray(y, dtype=float)
    x = np.arange(len(y), dtype=float) * 10 if x is None else np.asarray(x, dtype=float)
    if index is None:
        index = pd.date_range("2024-01-01", periods=len(y), freq="h")
    frame = pd.DataFrame({"y": y, "x": x}, index=index)
    return TimeSeries(frame=frame, target="y", features=("y", "x"), name="synthetic")


# --------------------------------------------------------------------------------------------
# Embedded Beijing data
# --------------------------------------------------------------------------------------------


def test_beijing_checksum_matches_shipped_file() -> None:
    raw = (EMBEDDED / BEIJING_FILE).read_bytes()
    assert BEIJING_SHA256 == "7f942332746ea16abad083b53f8f481f98fabc0d9ec60f21cdf6a4705d9e3ee1"
    assert hashlib.sha256(raw).hexdigest() == BEIJING_SHA256


def test_beijing_tampered_copy_fails(tmp_path: Path) -> None:
    good = tmp_path / "good.csv.gz"
    with resources.as_file(EMBEDDED / BEIJING_FILE) as src:
        shutil.copyfile(src, good)
    assert load_beijing(good).frame.shape == (43824, 11)  # an intact copy loads

    bad = tmp_path / "tampered.csv.gz"
    data = bytearray(good.read_bytes())
    data[1000] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        load_beijing(bad)
    msg = str(err.value)
    assert "tampered.csv.gz" in msg and "SHA-256" in msg
    assert BEIJING_SHA256 in msg and hashlib.sha256(bytes(data)).hexdigest() in msg


def test_beijing_citation_ships_with_data() -> None:
    text = (EMBEDDED / "CITATION.md").read_text(encoding="utf-8")
    assert "CC BY 4.0" in text and "Liang" in text and BEIJING_SHA256 in text


def test_beijing_shape_and_columns(beijing: TimeSeries) -> None:
    frame = beijing.frame
    assert frame.shape == (43824, 11)
    assert int(frame["pm2.5"].isna().sum()) == 2067
    assert int(frame.drop(columns="pm2.5").isna().sum().sum()) == 0
    assert beijing.target == "pm2.5" and beijing.features == BEIJING_FEATURES
    assert beijing.freq == "h" and beijing.name == "beijing"
    assert frame.index[0] == pd.Timestamp("2010-01-01 00:00")
    assert frame.index[-1] == pd.Timestamp("2014-12-31 23:00")
    assert frame.index.tz is None and (np.diff(frame.index.asi8) == 3600 * 10**9).all()
    assert "No" not in frame.columns and "cbwd" not in frame.columns
    assert (frame.dtypes == np.float64).all()
    onehot = frame[["cbwd_NW", "cbwd_NE", "cbwd_SE", "cbwd_cv"]]
    assert (onehot.sum(axis=1) == 1).all()
    assert onehot.sum().to_dict() == {
        "cbwd_NW": 14150,
        "cbwd_NE": 4997,
        "cbwd_SE": 15290,
        "cbwd_cv": 9387,
    }
    assert frame.loc["2010-01-02 00:00", "pm2.5"] == 129.0  # first non-NA value of the file


def test_beijing_default_dataset_numbers(beijing_ds) -> None:
    ds = beijing_ds
    assert (ds.n_train, ds.n_val, ds.n_test) == (26317, 5616, 5615)
    assert ds.n_dropped == 2 * 24  # window + horizon - 1 windows lost per boundary
    assert ds.X_train.shape == (26317, 24, 11) and ds.X_train.dtype == np.float32
    assert ds.y_test.dtype == np.float32 and ds.features == BEIJING_FEATURES
    y = ds.inverse_target(ds.y_test)
    naive = ds.inverse_target(ds.persistence("test"))
    rmse = float(np.sqrt(np.mean((naive - y) ** 2)))
    assert rmse == pytest.approx(18.647, abs=0.01)


def test_beijing_windows_match_raw_values(beijing: TimeSeries, beijing_ds) -> None:
    ds, frame = beijing_ds, beijing.frame
    for split in ("train", "val", "test"):
        X, y, t = ds.arrays(split)
        # labels back in µg/m³ equal the file's values at the label timestamps
        np.testing.assert_allclose(
            ds.inverse_target(y), frame.loc[t, "pm2.5"].to_numpy(), rtol=1e-5, atol=1e-3
        )
        # the last input row of a window is the hour before its label (horizon 1)
        last = ds.scaler.inverse_transform(X[:, -1, :].astype(np.float64))
        expected = frame.loc[t - pd.Timedelta(hours=1), list(ds.features)].to_numpy()
        np.testing.assert_allclose(last, expected, rtol=1e-5, atol=1e-3)


# --------------------------------------------------------------------------------------------
# Windowing
# --------------------------------------------------------------------------------------------


def _brute_force_ends(frame: pd.DataFrame, window: int, horizon: int) -> list[pd.Timestamp]:
    """Label times of valid windows, checked one by one on the timestamps themselves."""
    step = pd.Timedelta(hours=1)
    labels = []
    rows = frame.dropna()  # rows with every value present
    present = set(rows.index)
    target_ok = set(frame.index[frame["y"].notna()])
    for t in frame.index:
        inputs = [t - k * step for k in range(window)]
        label = t + horizon * step
        if all(s in present for s in inputs) and label in target_ok:
            labels.append(label)
    return labels


def test_windows_never_span_nan_or_gaps() -> None:
    rng = np.random.default_rng(0)
    n = 200
    index = pd.date_range("2024-01-01", periods=n, freq="h")
    y = rng.normal(size=n)
    x = rng.normal(size=n)
    y[[10, 11, 57, 120]] = np.nan  # missing target values
    x[[30, 150]] = np.nan  # missing feature values
    keep = np.ones(n, bool)
    keep[[80, 81, 82, 170]] = False  # missing timestamps: gaps in the index itself
    series = make_series(y[keep], x[keep], index=index[keep])
    full = series.frame.reindex(index)

    for window, horizon in [(1, 0), (5, 1), (8, 0), (8, 3), (24, 1)]:
        w = make_windows(series, window=window, horizon=horizon)
        assert list(w.timestamps) == _brute_force_ends(full, window, horizon)
        assert w.X.shape == (len(w), window, 2)
        assert not np.isnan(w.X).any() and not np.isnan(w.y).any()
        for i in range(len(w)):
            t_last = w.timestamps[i] - pd.Timedelta(hours=horizon)
            span = pd.date_range(end=t_last, periods=window, freq="h")
            np.testing.assert_array_equal(w.X[i], full.loc[span, ["y", "x"]].to_numpy())
            assert w.y[i] == full.loc[w.timestamps[i], "y"]


def test_label_nan_between_window_and_horizon_does_not_matter() -> None:
    # horizon 2: the step between the window and the label may be missing; only inputs and
    # the label itself must be present.
    y = [0.0, 1.0, 2.0, np.nan, 4.0]
    w = make_windows(make_series(y), window=3, horizon=2)
    assert list(w.y) == [4.0]


def test_horizon_zero_vs_one() -> None:
    y = np.arange(10, dtype=float)
    series = make_series(y)
    w0 = make_windows(series, window=3, horizon=0)
    w1 = make_windows(series, window=3, horizon=1)
    assert len(w0) == 8 and len(w1) == 7
    # horizon 0: label is the target at the window's last step (also its last input value)
    np.testing.assert_array_equal(w0.y, w0.X[:, -1, 0])
    np.testing.assert_array_equal(w0.y, y[2:])
    # horizon 1: label is the next step
    np.testing.assert_array_equal(w1.y, w1.X[:, -1, 0] + 1)
    np.testing.assert_array_equal(w1.y, y[3:])
    assert w1.timestamps[0] == series.frame.index[3]
    assert w0.timestamps[0] == series.frame.index[2]


def test_windows_off_grid_timestamp_rejected() -> None:
    index = pd.DatetimeIndex(["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 01:30"])
    with pytest.raises(DataError, match=r"not on the 'h' grid.*resample"):
        make_windows(make_series([1.0, 2.0, 3.0], index=index), window=1, horizon=0)


# --------------------------------------------------------------------------------------------
# Splitting and scaling
# --------------------------------------------------------------------------------------------


def test_split_is_chronological_without_overlap() -> None:
    y = np.sin(np.arange(300) / 7.0)
    y[[100, 200]] = np.nan
    ds = prepare_dataset(make_series(y), window=10, horizon=1, split=(0.6, 0.2, 0.2))
    val_start, test_start = ds.split_times
    assert ds.t_train.max() < ds.t_val.min() and ds.t_val.max() < ds.t_test.min()
    assert (
        len(set(ds.t_train) | set(ds.t_val) | set(ds.t_test)) == ds.n_train + ds.n_val + ds.n_test
    )
    # every row a window uses (inputs and label) lies inside its own period
    first_input = {
        s: t - pd.Timedelta(hours=ds.window - 1 + ds.horizon)
        for s, t in (("train", ds.t_train), ("val", ds.t_val), ("test", ds.t_test))
    }
    assert ds.t_train.max() < val_start
    assert first_input["val"].min() >= val_start and ds.t_val.max() < test_start
    assert first_input["test"].min() >= test_start
    total = len(make_windows(make_series(y), window=10, horizon=1))
    assert ds.n_train + ds.n_val + ds.n_test + ds.n_dropped == total
    assert ds.n_train == round(0.6 * total)
    assert ds.n_dropped <= 2 * (ds.window + ds.horizon - 1)


def test_scaler_fitted_on_train_only() -> None:
    n = 200
    y = np.linspace(0.0, 100.0, n)  # rising: val/test values exceed the train range
    x = np.linspace(-5.0, 5.0, n)
    ds = prepare_dataset(make_series(y, x), window=5, horizon=1)
    for j, name in enumerate(ds.features):
        train_vals = ds.X_train[:, :, j].ravel()
        if name == ds.target:
            train_vals = np.concatenate([train_vals, ds.y_train])
        assert train_vals.min() == 0.0 and train_vals.max() == 1.0
    assert ds.X_test.max() > 1.0 and ds.y_test.min() > 1.0 and ds.y_val.max() > 1.0
    # the fitted range is the train period's, not the whole series'
    assert ds.scaler.data_min[0] == 0.0 and ds.scaler.data_max[0] < 100.0 * 0.75


def test_inverse_target_round_trip() -> None:
    rng = np.random.default_rng(1)
    y = rng.gamma(2.0, 30.0, size=150)
    series = make_series(y)
    ds = prepare_dataset(series, window=6, horizon=2)
    for split in ("train", "val", "test"):
        _, ys, t = ds.arrays(split)
        np.testing.assert_allclose(ds.inverse_target(ys), series.frame.loc[t, "y"], rtol=1e-5)
    back = ds.scaler.transform_column(ds.inverse_target(ds.y_val), "y")
    np.testing.assert_allclose(back, ds.y_val, rtol=1e-6, atol=1e-7)


def test_persistence_is_last_target_input() -> None:
    y = np.arange(60, dtype=float) ** 1.5
    series = make_series(y)
    ds = prepare_dataset(series, window=4, horizon=3)
    naive = ds.persistence("test")
    np.testing.assert_array_equal(naive, ds.X_test[:, -1, 0])
    # in data units: the target 'horizon' steps before each label
    earlier = ds.t_test - pd.Timedelta(hours=3)
    np.testing.assert_allclose(ds.inverse_target(naive), series.frame.loc[earlier, "y"], rtol=1e-5)
    no_target = prepare_dataset(series.with_features(["x"]), window=4, horizon=0)
    assert no_target.features == ("x",) and no_target.target_index is None
    with pytest.raises(DataError, match="persistence needs the target"):
        no_target.persistence("val")


def test_predict_change_trains_on_the_change_and_adds_the_last_value_back() -> None:
    rng = np.random.default_rng(3)
    series = make_series(rng.gamma(2.0, 30.0, size=200))
    level = prepare_dataset(series, window=5, horizon=2)
    change = prepare_dataset(series, window=5, horizon=2, predict="change")
    assert level.predict == "level" and change.predict == "change"
    for split in ("train", "val", "test"):
        X, y, _ = change.arrays(split)
        # labels stay levels; the model target is the change from the window's last input step
        np.testing.assert_array_equal(y, level.arrays(split)[1])
        np.testing.assert_allclose(change.model_target(split), y - X[:, -1, 0], atol=1e-7)
        np.testing.assert_array_equal(level.model_target(split), y)
        # forecast() inverts model_target() exactly; a zero output is the persistence forecast
        np.testing.assert_allclose(change.forecast(change.model_target(split), X), y, atol=1e-6)
        np.testing.assert_array_equal(change.forecast(np.zeros(len(X)), X), X[:, -1, 0])
        np.testing.assert_array_equal(level.forecast(np.zeros(len(X)), X), np.zeros(len(X)))


def test_predict_errors_name_the_fix() -> None:
    series = make_series(np.arange(80.0))
    with pytest.raises(DataError, match="predict='delta' is invalid; valid: level, change"):
        prepare_dataset(series, window=4, predict="delta")
    with pytest.raises(DataError, match=r"'y' is not an input feature.*predict='level'"):
        prepare_dataset(series.with_features(["x"]), window=4, predict="change")


def test_minmax_scaler_serialisation_and_constant_column() -> None:
    scaler = MinMaxScaler.fit([[1.0, 7.0], [3.0, 7.0]], columns=("a", "const"))
    np.testing.assert_array_equal(scaler.transform([[2.0, 7.0]]), [[0.5, 0.0]])
    again = MinMaxScaler.from_dict(scaler.to_dict())
    np.testing.assert_array_equal(again.inverse_transform([[0.5, 0.0]]), [[2.0, 7.0]])
    with pytest.raises(DataError, match="unknown column 'b'"):
        scaler.inverse_column([0.0], "b")


# --------------------------------------------------------------------------------------------
# AirU
# --------------------------------------------------------------------------------------------

SD_HEADER = (
    "Time (GMT),MAC,Uptime (s),Altitude (m),Latitude (DD.dd),Longitude (DD.dd),PM1 (ug/m3),"
    "PM2.5 (ug/m3),PM10 (ug/m3),Temperature (C),Humidity,RED (x/4096),OX (x/4096),"
    "Time Source ([N]TP/[G]PS)"
)


def _sd_row(time: str, pm25: float) -> str:
    return f"{time},a4cf12aabbcc,3600,1300,40.76,-111.89,1.0,{pm25},3.0,20.5,40,1000,2000,N"


def test_airu_cloud_export_with_mics_columns(tmp_path: Path) -> None:
    path = tmp_path / "cloud.csv"
    path.write_text(
        "Timestamp,PM1,PM2_5,PM10,Temperature,Humidity,MicsRED,MicsNOX,Latitude\n"
        "2022-01-01 00:00:00+00:00,1,10,20,5,50,100,200,40.7\n"
        "2022-01-01 00:20:00+00:00,1,20,20,5,50,100,200,40.7\n"
        "2022-01-01 00:40:00+00:00,1,30,20,5,50,100,200,40.7\n"
        "2022-01-01 02:10:00+01:00,2,40,20,6,50,110,210,40.7\n"  # = 01:10 UTC
        "2022-01-01 03:59:00+00:00,3,50,20,7,50,120,220,40.7\n"
    )
    ts = load_airu(path)
    assert ts.target == "PM2_5"
    assert ts.features == ("PM2_5", "PM1", "PM10", "Temperature", "Humidity", "RED", "NOX")
    assert ts.frame.index.tz is None
    assert list(ts.frame.index) == list(pd.date_range("2022-01-01 00:00", periods=4, freq="h"))
    np.testing.assert_array_equal(ts.frame["PM2_5"].to_numpy(), [20.0, 40.0, np.nan, 50.0])
    assert ts.frame.loc["2022-01-01 01:00", "RED"] == 110.0
    assert "Latitude" not in ts.frame.columns


def test_airu_sd_card_directory_and_single_file(tmp_path: Path) -> None:
    day1 = [_sd_row("2022-01-01 00:00:05", 4), _sd_row("2022-01-01 00:30:05", 8)]
    day1 += [_sd_row("2022-01-01 23:15:00", 10)]
    day2 = [_sd_row("2022-01-02 00:05:00", 1), _sd_row("2022-01-02 00:55:00", 2)]
    day2 += [_sd_row("2022-01-02 00:58:00", 6), ""]  # trailing blank line
    folder = tmp_path / "sd"
    folder.mkdir()
    (folder / "22-01-02.csv").write_text("\n".join([SD_HEADER, *day2]))
    (folder / "22-01-01.csv").write_text("\n".join([SD_HEADER, *day1]))

    ts = load_airu(folder)
    assert ts.features == ("PM2_5", "PM1", "PM10", "Temperature", "Humidity", "RED", "NOX")
    for dropped in ("MAC", "Uptime", "Altitude", "Latitude", "Longitude", "Time Source"):
        assert dropped not in ts.frame.columns
    assert len(ts.frame) == 25  # 2022-01-01 00:00 .. 2022-01-02 00:00, hourly, gaps are NaN
    assert ts.frame.loc["2022-01-01 00:00", "PM2_5"] == 6.0  # mean of 4 and 8
    assert ts.frame.loc["2022-01-02 00:00", "PM2_5"] == 3.0  # mean of 1, 2 and 6
    assert np.isnan(ts.frame.loc["2022-01-01 05:00", "PM2_5"])
    assert ts.frame.loc["2022-01-01 23:00", "NOX"] == 2000.0  # the SD 'OX' channel

    single = load_airu(folder / "22-01-01.csv", target="PM10")
    assert single.target == "PM10" and single.features[0] == "PM10"
    assert single.frame.index[-1] == pd.Timestamp("2022-01-01 23:00")


def test_airu_errors(tmp_path: Path) -> None:
    no_time = tmp_path / "no_time.csv"
    no_time.write_text("When,PM2_5\n2022-01-01 00:00:00,1\n")
    with pytest.raises(DataError, match=r"no timestamp column.*'When'"):
        load_airu(no_time)
    both = tmp_path / "both.csv"
    both.write_text("Timestamp,PM2_5,RED,MicsRED\n2022-01-01 00:00:00+00:00,1,2,3\n")
    with pytest.raises(DataError, match="'RED' and 'MicsRED' both map to 'RED'"):
        load_airu(both)
    ok = tmp_path / "ok.csv"
    ok.write_text("Timestamp,PM2_5,RED\n2022-01-01 00:00:00+00:00,1,2\n")
    with pytest.raises(DataError, match=r"AirU column\(s\) 'CO' not found.*'PM2_5', 'RED'"):
        load_airu(ok, target="CO")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(DataError, match=r"no \.csv files"):
        load_airu(empty_dir)
    with pytest.raises(DataError, match="not found"):
        load_airu(tmp_path / "nope")


# --------------------------------------------------------------------------------------------
# Generic CSV
# --------------------------------------------------------------------------------------------

UCI_AIRQUALITY = (
    "Date;Time;CO(GT);PT08.S1(CO);NMHC(GT);T;RH;;\n"
    "10/03/2004;18.00.00;2,6;1360;150;13,6;48,9;;\n"
    "10/03/2004;19.00.00;2;1292;112;13,3;47,7;;\n"
    "10/03/2004;20.00.00;-200;1402;88;11,9;54,0;;\n"
    "10/03/2004;22.00.00;1,6;1272;-200;11,0;60,0;;\n"
    "13/03/2004;00.00.00;1,2;1197;51;-200,0;59,6;;\n"
    ";;;;;;;;\n"
    ";;;;;;;;\n"
)


def test_csv_uci_airquality_format(tmp_path: Path) -> None:
    path = tmp_path / "AirQualityUCI.csv"
    path.write_text(UCI_AIRQUALITY)
    ts = load_csv(
        path,
        target="CO(GT)",
        timestamp=("Date", "Time"),
        timestamp_format="%d/%m/%Y %H.%M.%S",
        delimiter=";",
        decimal=",",
        na_values=(-200,),
    )
    # default features: target first, then all non-empty numeric columns (no 'Unnamed: 7')
    assert ts.features == ("CO(GT)", "PT08.S1(CO)", "NMHC(GT)", "T", "RH")
    assert ts.name == "csv:AirQualityUCI.csv" and ts.freq == "h"
    frame = ts.frame
    assert frame.index[0] == pd.Timestamp("2004-03-10 18:00")  # day first
    assert frame.index[-1] == pd.Timestamp("2004-03-13 00:00")
    assert len(frame) == 55  # regular hourly grid, missing hours are NaN rows
    assert frame.loc["2004-03-10 18:00", "CO(GT)"] == 2.6
    assert frame.loc["2004-03-10 18:00", "T"] == 13.6
    assert np.isnan(frame.loc["2004-03-10 20:00", "CO(GT)"])  # -200
    assert np.isnan(frame.loc["2004-03-10 22:00", "NMHC(GT)"])  # -200
    assert np.isnan(frame.loc["2004-03-13 00:00", "T"])  # -200,0
    assert frame.loc["2004-03-10 20:00"].notna().sum() == 4
    assert frame.loc["2004-03-10 21:00"].isna().all()  # hour absent from the file
    # Date and Time columns are found and joined without timestamp=
    auto = load_csv(
        path,
        target="CO(GT)",
        timestamp_format="%d/%m/%Y %H.%M.%S",
        delimiter=";",
        decimal=",",
        na_values=(-200,),
    )
    pd.testing.assert_frame_equal(auto.frame, frame)


def test_csv_resampling_and_own_step(tmp_path: Path) -> None:
    path = tmp_path / "sub.csv"
    path.write_text(
        "time,load,temp,label\n"
        "2024-05-01T00:00,1,10,a\n"
        "2024-05-01T00:30,3,12,b\n"
        "2024-05-01T01:00,5,14,c\n"
        "2024-05-01T02:30,7,16,d\n"
    )
    ts = load_csv(path, target="load")  # 'time' found automatically, text column ignored
    assert ts.features == ("load", "temp")
    np.testing.assert_array_equal(ts.frame["load"].to_numpy(), [2.0, 5.0, 7.0])
    raw = load_csv(path, target="load", features=["temp"], resample=None)
    assert raw.freq == "30min" and len(raw.frame) == 6 and raw.features == ("temp",)
    assert raw.frame["load"].isna().sum() == 2


def test_csv_timezone_offsets_become_naive_utc(tmp_path: Path) -> None:
    path = tmp_path / "tz.csv"
    path.write_text("timestamp,v\n2024-01-01 01:00:00+01:00,1\n2024-01-01 01:00:00+00:00,2\n")
    ts = load_csv(path, target="v")
    assert ts.frame.index.tz is None
    assert list(ts.frame.index) == [
        pd.Timestamp("2024-01-01 00:00"),
        pd.Timestamp("2024-01-01 01:00"),
    ]


# --------------------------------------------------------------------------------------------
# Dataset specs
# --------------------------------------------------------------------------------------------


def test_load_dataset_specs(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("time,v,w\n2024-01-01 00:00,1,2\n2024-01-01 01:00,3,4\n")
    ts = load_dataset(f"csv:{path}", target="w", delimiter=None)  # None = option not set
    assert ts.target == "w" and ts.features == ("w", "v")
    cloud = tmp_path / "c.csv"
    cloud.write_text("Timestamp,PM2_5,PM10\n2022-01-01 00:00:00+00:00,1,2\n")
    assert load_dataset(f"AirU:{cloud}").features == ("PM2_5", "PM10")
    with pytest.raises(
        DataError, match=r"unknown dataset spec 'parquet:x'.*'beijing'.*'airu:PATH'"
    ):
        load_dataset("parquet:x")
    with pytest.raises(DataError, match=r"unknown dataset spec.*'csv:PATH'"):
        load_dataset(str(path))  # a bare path needs the csv: prefix
    with pytest.raises(DataError, match="csv: needs target="):
        load_dataset(f"csv:{path}")
    with pytest.raises(DataError, match=r"option\(s\) delimiter do not apply to the embedded"):
        load_dataset("beijing", delimiter=";")
    with pytest.raises(DataError, match=r"option\(s\) decimal do not apply to airu"):
        load_dataset(f"airu:{cloud}", decimal=",")
    with pytest.raises(DataError, match="missing path after 'csv:'"):
        load_dataset("csv:")


def test_load_dataset_default_is_beijing(beijing: TimeSeries) -> None:
    ts = load_dataset()
    assert ts.name == "beijing" and ts.features == beijing.features


# --------------------------------------------------------------------------------------------
# Bad input: clear DataError messages, never a raw pandas traceback
# --------------------------------------------------------------------------------------------


@pytest.fixture
def good_csv(tmp_path: Path) -> Path:
    path = tmp_path / "good.csv"
    rows = [f"2024-01-01 {h:02d}:00,{h},{h * 2}" for h in range(24)]
    path.write_text("\n".join(["time,pm,temp", *rows]) + "\n")
    return path


def test_error_missing_columns_lists_available(good_csv: Path) -> None:
    with pytest.raises(DataError) as err:
        load_csv(good_csv, target="pm25")
    msg = str(err.value)
    assert "target column(s) 'pm25' not found" in msg
    assert "Available columns: 'time', 'pm', 'temp'" in msg
    with pytest.raises(DataError, match=r"feature column\(s\) 'rh' not found"):
        load_csv(good_csv, target="pm", features=["temp", "rh"])
    with pytest.raises(DataError, match=r"timestamp column\(s\) 'Date', 'Time' not found.*'time'"):
        load_csv(good_csv, target="pm", timestamp=("Date", "Time"))


def test_error_wrong_delimiter_hint(tmp_path: Path) -> None:
    path = tmp_path / "semi.csv"
    path.write_text("Date;Time;CO\n10/03/2004;18.00.00;2,6\n")
    with pytest.raises(DataError, match="try delimiter=';'"):
        load_csv(path, target="CO", timestamp=("Date", "Time"))


def test_error_no_timestamp_column(tmp_path: Path) -> None:
    path = tmp_path / "nots.csv"
    path.write_text("when,v\n1,2\n")
    with pytest.raises(DataError, match=r"no timestamp column found.*timestamp=.*'when'"):
        load_csv(path, target="v")


def test_error_unparsable_timestamps_show_sample_and_format(tmp_path: Path) -> None:
    path = tmp_path / "badts.csv"
    path.write_text("Date;Time;CO\n10/03/2004;18.00.00;2\n31/02/2004;19.00.00;3\nyesterday;x;4\n")
    with pytest.raises(DataError) as err:
        load_csv(
            path,
            target="CO",
            timestamp=("Date", "Time"),
            timestamp_format="%d/%m/%Y %H.%M.%S",
            delimiter=";",
        )
    msg = str(err.value)
    assert "2 of 3 timestamps could not be parsed" in msg
    assert "'%d/%m/%Y %H.%M.%S'" in msg
    assert "row 2: '31/02/2004 19.00.00'" in msg and "row 3: 'yesterday x'" in msg
    assert "timestamp_format=" in msg
    # no format given: the guesses are named, and the fix is suggested
    with pytest.raises(
        DataError, match=r"could not be parsed with format 'ISO8601'.*timestamp_format="
    ):
        load_csv(path, target="CO", timestamp=("Date", "Time"), delimiter=";")
    assert err.value.__context__ is None  # our own check, not a wrapped pandas exception


def test_error_non_numeric_values_suggest_decimal(tmp_path: Path) -> None:
    path = tmp_path / "comma.csv"
    path.write_text("Date;Time;CO\n10/03/2004;18.00.00;2,6\n10/03/2004;19.00.00;2\n")
    with pytest.raises(
        DataError, match=r"column 'CO' has 1 non-numeric value\(s\), e.g. '2,6'.*decimal="
    ):
        load_csv(
            path,
            target="CO",
            timestamp=("Date", "Time"),
            timestamp_format="%d/%m/%Y %H.%M.%S",
            delimiter=";",
        )


def test_error_target_all_missing(tmp_path: Path) -> None:
    path = tmp_path / "empty_target.csv"
    path.write_text("time,pm,temp\n2024-01-01 00:00,-200,1\n2024-01-01 01:00,NA,2\n")
    with pytest.raises(DataError, match=r"target column 'pm' has no values.*na_values"):
        load_csv(path, target="pm", na_values=(-200,))
    series = make_series([np.nan] * 5)
    with pytest.raises(DataError, match="target 'y' is entirely missing"):
        make_windows(series, window=2)


def test_error_series_too_short(good_csv: Path) -> None:
    ts = load_csv(good_csv, target="pm")
    with pytest.raises(DataError) as err:
        make_windows(ts, window=24, horizon=1)
    msg = str(err.value)
    assert "series too short" in msg and "0 valid window(s), need at least 1" in msg
    assert "window+horizon = 25" in msg and "smaller window" in msg
    w = make_windows(ts, window=23, horizon=1)
    assert len(w) == 1
    with pytest.raises(DataError, match=r"1 valid window\(s\), need at least 3"):
        prepare_dataset(ts, window=23, horizon=1)
    # enough windows overall, but a split ends up empty after the boundary drops
    with pytest.raises(DataError, match=r"the val split has 0 windows.*straddle"):
        prepare_dataset(ts, window=8, horizon=1, split=(0.8, 0.1, 0.1))


def test_error_nan_heavy_feature_named_in_too_short_message() -> None:
    x = np.full(50, np.nan)
    x[::3] = 1.0
    with pytest.raises(DataError, match=r"most missing: x 66%"):
        make_windows(make_series(np.ones(50), x), window=4)


@pytest.mark.parametrize(
    ("split", "pattern"),
    [
        ((0.7, 0.2, 0.2), "sum to 1.1, must sum to 1"),
        ((0.8, 0.2, 0.0), "every fraction must be > 0"),
        ((1.2, -0.1, -0.1), "every fraction must be > 0"),
        ((0.5, 0.5), "expected three fractions"),
        (("a", "b", "c"), "expected three numbers"),
    ],
)
def test_error_bad_split(split, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        prepare_dataset(make_series(np.arange(100.0)), window=3, split=split)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"window": 0}, r"window=0: must be an integer >= 1"),
        ({"window": 2.5}, r"window=2.5: must be an integer >= 1"),
        ({"horizon": -1}, r"horizon=-1: must be an integer >= 0"),
    ],
)
def test_error_bad_window_or_horizon(kwargs: dict, pattern: str) -> None:
    series = make_series(np.arange(100.0))
    with pytest.raises(DataError, match=pattern):
        make_windows(series, **kwargs)
    with pytest.raises(DataError, match=pattern):
        prepare_dataset(series, **kwargs)


def test_error_missing_file_and_bad_resample(tmp_path: Path, good_csv: Path) -> None:
    with pytest.raises(DataError, match=r"nothing\.csv: file not found") as err:
        load_csv(tmp_path / "nothing.csv", target="pm")
    assert err.value.__suppress_context__  # raised `from None`: no pandas traceback attached
    with pytest.raises(DataError, match="invalid resample='fortnightly'"):
        load_csv(good_csv, target="pm", resample="fortnightly")
    assert issubclass(DataError, ValueError)


def test_timeseries_validates_its_frame() -> None:
    frame = pd.DataFrame({"y": [1.0, 2.0]})
    with pytest.raises(DataError, match="needs a DatetimeIndex"):
        TimeSeries(frame, target="y", features=("y",), name="t")
    frame.index = pd.DatetimeIndex(["2024-01-01 01:00", "2024-01-01 00:00"])
    with pytest.raises(DataError, match="strictly increasing"):
        TimeSeries(frame, target="y", features=("y",), name="t")
    frame = frame.sort_index()
    with pytest.raises(DataError, match=r"column\(s\) 'z' not in the frame.*'y'"):
        TimeSeries(frame, target="y", features=("y", "z"), name="t")
