"""Argument checks shared by the quantisers and the bit plans.

Every check raises ``ConfigError`` (a ``ValueError``) naming the parameter, the value and the
allowed range, so a bad configuration fails where it is written instead of deep inside torch or
Brevitas.
"""

from __future__ import annotations

import math
import numbers

from brevitas_apq.errors import ConfigError

MIN_BIT_WIDTH = 2
MAX_BIT_WIDTH = 16
SCHEMES = ("sq", "aq", "apq")
DECISION_RULES = ("paper", "hysteresis")


def check_bit_width(bit_width: object, name: str = "bit_width") -> int:
    """Return ``bit_width`` as an int if it is an integer in [2, 16], else raise ``ValueError``."""
    is_number = isinstance(bit_width, numbers.Real) and not isinstance(bit_width, bool)
    if not is_number or not float(bit_width).is_integer():
        raise ConfigError(
            f"{name}={bit_width!r} is not an integer; allowed: integers "
            f"{MIN_BIT_WIDTH} to {MAX_BIT_WIDTH}"
        )
    value = int(bit_width)
    if not MIN_BIT_WIDTH <= value <= MAX_BIT_WIDTH:
        raise ConfigError(
            f"{name}={value} is out of range; allowed: integers {MIN_BIT_WIDTH} to {MAX_BIT_WIDTH}"
        )
    return value


def check_threshold(threshold: object, name: str = "symmetry_threshold") -> float:
    """Return the APQ threshold as a float if it lies in [0, 1], else raise ``ValueError``.

    The symmetry metric S lies in [0, 1], so a threshold of 0 means "AQ unless perfectly
    symmetric" and 1 means "always SQ"; values outside that range would be meaningless.
    """
    is_number = isinstance(threshold, numbers.Real) and not isinstance(threshold, bool)
    if not is_number or math.isnan(float(threshold)) or not 0.0 <= float(threshold) <= 1.0:
        raise ConfigError(f"{name}={threshold!r} is invalid; allowed: a number from 0 to 1")
    return float(threshold)


def check_momentum(momentum: object, name: str = "stats_momentum") -> float:
    """Return the running-statistics momentum if it lies in (0, 1], else raise ``ValueError``."""
    is_number = isinstance(momentum, numbers.Real) and not isinstance(momentum, bool)
    if not is_number or math.isnan(float(momentum)) or not 0.0 < float(momentum) <= 1.0:
        raise ConfigError(f"{name}={momentum!r} is invalid; allowed: a number in (0, 1]")
    return float(momentum)


def check_scheme(scheme: object, name: str = "quant_scheme") -> str:
    """Return the scheme in lower case if it is one of ``SCHEMES``, else raise ``ValueError``."""
    if not isinstance(scheme, str) or scheme.lower() not in SCHEMES:
        raise ConfigError(f"{name}={scheme!r} is unknown; allowed: {', '.join(SCHEMES)}")
    return scheme.lower()


def check_decision_rule(rule: object, name: str = "decision_rule") -> str:
    """Return the APQ decision rule in lower case if it is one of ``DECISION_RULES``."""
    if not isinstance(rule, str) or rule.lower() not in DECISION_RULES:
        raise ConfigError(f"{name}={rule!r} is unknown; allowed: {', '.join(DECISION_RULES)}")
    return rule.lower()


def check_band(band: object, name: str = "decision_band") -> float:
    """Return the hysteresis half-width (relative to the threshold) if it lies in [0, 1)."""
    is_number = isinstance(band, numbers.Real) and not isinstance(band, bool)
    if not is_number or math.isnan(float(band)) or not 0.0 <= float(band) < 1.0:
        raise ConfigError(f"{name}={band!r} is invalid; allowed: a number in [0, 1)")
    return float(band)


def check_channel_dim(channel_dim: object, runtime_stats: bool = False) -> int | None:
    """Return the per-channel scaling dimension (``None``: per tensor); parameters only."""
    if channel_dim is None:
        return None
    if not isinstance(channel_dim, int) or isinstance(channel_dim, bool):
        raise ConfigError(
            f"channel_dim={channel_dim!r} is invalid; allowed: None (per tensor) or an integer"
        )
    if runtime_stats:
        raise ConfigError(
            "per-channel scales are for weights only: an activation quantiser has one scale per "
            "tensor; drop scaling_per_output_channel from the activation quantiser"
        )
    return channel_dim
