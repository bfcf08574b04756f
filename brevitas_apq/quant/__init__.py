"""SQ, AQ and APQ quantisers for Brevitas, and tools to inspect their decisions."""

from brevitas_apq.quant.core import AdaptiveIntQuant, SymmetryRecord, mark_batch, symmetry_metric
from brevitas_apq.quant.injectors import (
    SCHEME_QUANTIZERS,
    AdaptiveCore,
    APQActQuant,
    APQBiasQuant,
    APQWeightQuant,
    AQActQuant,
    AQBiasQuant,
    AQWeightQuant,
    SQActQuant,
    SQBiasQuant,
    SQWeightQuant,
    UnsignedActQuant,
)
from brevitas_apq.quant.inspect import (
    decision_flips,
    iter_quantizers,
    scheme_decisions,
    symmetry_history,
)
from brevitas_apq.quant.validation import MAX_BIT_WIDTH, MIN_BIT_WIDTH, SCHEMES

__all__ = [
    "MAX_BIT_WIDTH",
    "MIN_BIT_WIDTH",
    "SCHEMES",
    "SCHEME_QUANTIZERS",
    "APQActQuant",
    "APQBiasQuant",
    "APQWeightQuant",
    "AQActQuant",
    "AQBiasQuant",
    "AQWeightQuant",
    "AdaptiveCore",
    "AdaptiveIntQuant",
    "SQActQuant",
    "SQBiasQuant",
    "SQWeightQuant",
    "SymmetryRecord",
    "UnsignedActQuant",
    "decision_flips",
    "iter_quantizers",
    "mark_batch",
    "scheme_decisions",
    "symmetry_history",
    "symmetry_metric",
]
