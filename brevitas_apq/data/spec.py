"""The data settings of a training run: :class:`DataSpec` (source, windowing, split, what the
model predicts), saved in a run's ``model.pt`` and checkpoint so the run can be reloaded.

Example::

    from brevitas_apq.data import DataSpec

    spec = DataSpec("csv:data/load.csv", window=48, options=(("target", "load"),))
    dataset = spec.load()  # a WindowedDataset: windowed, split, scaled
    assert DataSpec.from_dict(spec.to_dict()) == spec
"""

from __future__ import annotations

import gzip
import lzma
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

from brevitas_apq.errors import RunError

from .series import DataError
from .sources import load_dataset
from .windows import PREDICT_MODES, WindowedDataset, prepare_dataset


@dataclass(frozen=True)
class DataSpec:
    """Where the data comes from, how it is windowed and what the model predicts; saved so a
    run can be reloaded.

    ``predict="change"`` (the default): the model outputs the change of the target from the
    window's last hour and the forecast adds that last value back (see
    ``brevitas_apq.data.windows``); ``"level"``: the model outputs the target itself. Measured
    on the embedded data, the README's "What the model predicts" section.
    """

    dataset: str = "beijing"
    window: int = 24
    horizon: int = 1
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    options: tuple[tuple[str, Any], ...] = ()  # loader options (csv: target, delimiter, ...)
    predict: str = "change"

    def __post_init__(self) -> None:
        if self.predict not in PREDICT_MODES:
            raise RunError(
                f"predict={self.predict!r} is invalid; valid: {', '.join(PREDICT_MODES)}"
            )

    def load(self) -> WindowedDataset:
        """Load, window and split the data; a file that cannot be read (a truncated or corrupt
        compressed CSV, no permission) is a DataError naming it."""
        try:
            series = load_dataset(self.dataset, **dict(self.options))
        except (EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, OSError) as err:
            if isinstance(err, OSError) and not isinstance(err, gzip.BadGzipFile):
                reason = err.strerror or str(err)
                fix = "check the path and its permissions"
            else:
                reason = f"truncated or corrupt compressed file: {type(err).__name__}: {err}"
                fix = "check it (e.g. gzip -t FILE) and download or compress it again"
            raise DataError(f"{self.dataset}: cannot read the data ({reason}); {fix}") from None
        return prepare_dataset(
            series, window=self.window, horizon=self.horizon, split=self.split, predict=self.predict
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "window": self.window,
            "horizon": self.horizon,
            "split": list(self.split),
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.options},
            "predict": self.predict,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSpec:
        options = tuple(
            (k, tuple(v) if isinstance(v, list) else v) for k, v in data["options"].items()
        )
        return cls(
            data["dataset"],
            data["window"],
            data["horizon"],
            tuple(data["split"]),
            options,
            # Runs saved before ``predict`` existed were trained on the level.
            data.get("predict", "level"),
        )
