"""Exceptions and warnings of the FINN flow."""

from __future__ import annotations


class FinnFlowError(ValueError):
    """A model, board, folding file or option the FINN flow cannot use, explained."""


class EmulationMismatchError(FinnFlowError):
    """FINN's hardware graph does not reproduce the QONNX model's outputs within tolerance."""


class FinnFlowWarning(UserWarning):
    """Something the build works around but the user should know (e.g. unmet target FPS)."""
