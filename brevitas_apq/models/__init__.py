"""Models: the paper's time-series Transformer, float and quantised."""

from brevitas_apq.models.transformer import (
    ModelConfig,
    TimeSeriesTransformer,
    count_parameters,
    sinusoidal_encoding,
)

__all__ = ["ModelConfig", "TimeSeriesTransformer", "count_parameters", "sinusoidal_encoding"]
