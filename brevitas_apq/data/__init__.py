"""Time-series data for brevitas_apq: loaders, windowing, a leak-free split and scaling.

Public API::

    load_dataset(spec, **csv_options)   # "beijing" | "airu:PATH" | "csv:PATH"
    load_beijing() / load_airu(path) / load_csv(path, target=..., ...)  -> TimeSeries
    make_windows(series, window=24, horizon=1)                           -> Windows
    prepare_dataset(series, window=24, horizon=1, split=(0.7, 0.15, 0.15), predict="level")
                                                                         -> WindowedDataset
    DataSpec(dataset, window, horizon, split, options, predict).load()   -> WindowedDataset
        the data settings of a training run (``spec``), saved with the run
    DataError (a ValueError): every bad-input problem, with a message saying how to fix it
    DataWarning (a UserWarning): suspicious but usable data (duplicate timestamps, a likely
        missing-value marker, a feature that removes many windows), with counts and the fix;
        also kept on the data (``data_warnings``) and recorded in a run's metrics.json

Default task (embedded Beijing PM2.5 data): forecast ``pm2.5`` one hour ahead from the previous
24 hours of all columns (``pm2.5`` itself first, weather, one-hot wind direction). Training
runs (``DataSpec``) have the model predict the change from the last hour
(``predict="change"``, see ``windows``); ``prepare_dataset`` defaults to the plain level.

Example::

    >>> import numpy as np
    >>> from brevitas_apq.data import load_dataset, prepare_dataset
    >>> ds = prepare_dataset(load_dataset("beijing"), window=24, horizon=1)
    >>> y = ds.inverse_target(ds.y_test)
    >>> naive = ds.inverse_target(ds.persistence("test"))
    >>> rmse = float(np.sqrt(np.mean((naive - y) ** 2)))  # persistence RMSE, µg/m³
"""

from .series import DataError, DataWarning, TimeSeries
from .sources import (
    BEIJING_FILE,
    BEIJING_SHA256,
    DATASET_SPECS,
    load_airu,
    load_beijing,
    load_csv,
    load_dataset,
)
from .spec import DataSpec
from .windows import (
    PREDICT_MODES,
    SPLITS,
    MinMaxScaler,
    WindowedDataset,
    Windows,
    make_windows,
    prepare_dataset,
)

__all__ = [
    "BEIJING_FILE",
    "BEIJING_SHA256",
    "DATASET_SPECS",
    "PREDICT_MODES",
    "SPLITS",
    "DataError",
    "DataSpec",
    "DataWarning",
    "MinMaxScaler",
    "TimeSeries",
    "WindowedDataset",
    "Windows",
    "load_airu",
    "load_beijing",
    "load_csv",
    "load_dataset",
    "make_windows",
    "prepare_dataset",
]
