"""Shared test data: a small synthetic hourly series as a `csv:` data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from brevitas_apq.data import DataSpec


def write_series_csv(path: Path, days: int = 40) -> str:
    """Write a synthetic hourly series (target ``load``, feature ``temp``, a daily cycle, one
    missing value and a 10-hour gap) and return its ``csv:`` data-set spec."""
    rng = np.random.default_rng(0)
    n = 24 * days
    t = pd.date_range("2020-01-01", periods=n, freq="h")
    temp = 10 + 5 * np.sin(np.arange(n) * 2 * np.pi / 24) + rng.normal(0, 0.5, n)
    load = 50 + 2 * temp + rng.normal(0, 1, n)
    frame = pd.DataFrame({"time": t, "load": load, "temp": temp})
    frame.loc[100, "load"] = np.nan
    frame = frame.drop(index=range(500, 510))
    frame.to_csv(path, index=False)
    return f"csv:{path}"


def csv_data(spec: str) -> DataSpec:
    """The DataSpec of a series written by :func:`write_series_csv`."""
    return DataSpec(spec, options=(("target", "load"), ("timestamp", "time")))
