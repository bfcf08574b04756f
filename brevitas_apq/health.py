"""Degenerate models: forecasts that are numbers but not forecasts, detected in one place.

A model is *degenerate* on the windows it was evaluated on when

* its output is not finite (NaN or infinity) on some window, or its forecasts in target units
  are not;
* its output is constant: every window gives the same value. A QAT model whose output
  quantiser froze a range that misses the data clamps every output to one level; with
  ``predict="change"`` an output of 0 everywhere is exactly the persistence forecast, so its
  RMSE looks plausible (the case that prompted this module: "+2.03 % vs float"). Nearly
  constant counts too: one value on at least 99 % of 100 or more windows (measured: a
  mixed-4-8/all-apq run gave 0 on 5,613 of 5,615 test windows, test RMSE 18.648 against
  persistence 18.647);
* one of its quantisers collapsed: a non-finite or non-positive scale, or a varying input that
  is mapped to a single level.

:class:`QuantizerWatch` and :func:`output_problems` find these while a model is evaluated
(``brevitas_apq.training.evaluate`` uses them, so every evaluation reports them);
``metrics.json`` keeps the reasons as ``degenerate = {"qat/test": [...], ...}`` (empty when the
model is sound) and :func:`degenerate_reasons` reads them back for every table that shows a run.

Example::

    >>> import numpy as np
    >>> output_problems(np.zeros(5, np.float32))
    ['constant output: all 5 windows give 0']
    >>> degenerate_reasons({"degenerate": {"qat/test": ["constant output: ..."]}})
    ['QAT model, test split: constant output: ...']
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from brevitas_apq.quant import iter_quantizers

__all__ = ["QuantizerWatch", "degenerate_reasons", "output_problems"]

#: Output "nearly constant": one value on at least this share of at least NEARLY_MIN windows.
NEARLY_CONSTANT = 0.99
NEARLY_MIN = 100

_MODELS = {"qat": "QAT model", "float": "float model"}


def output_problems(output: np.ndarray, forecast: np.ndarray | None = None) -> list[str]:
    """Reasons why model ``output`` over the evaluated windows (and the ``forecast`` made from
    it, in target units) is degenerate: non-finite values, or the same value everywhere."""
    out = np.asarray(output, np.float64).reshape(len(output), -1) if len(output) else None
    if out is None:
        return []
    reasons = []
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        reasons.append(f"non-finite output (NaN or inf) on {int(bad.sum())} of {len(out)} windows")
    elif len(out) > 1:
        values, counts = np.unique(out, axis=0, return_counts=True)
        mode, count = values[counts.argmax()], int(counts.max())
        value = ", ".join(f"{v:.6g}" for v in mode)
        if count == len(out):
            reasons.append(f"constant output: all {len(out)} windows give {value}")
        elif len(out) >= NEARLY_MIN and count >= NEARLY_CONSTANT * len(out):
            reasons.append(
                f"nearly constant output: {count} of {len(out)} windows "
                f"({count / len(out):.2%}) give {value}"
            )
    if forecast is not None and not bad.any():
        bad_forecast = ~np.isfinite(np.asarray(forecast, np.float64))
        if bad_forecast.any():
            reasons.append(
                f"non-finite forecast in target units on {int(bad_forecast.sum())} windows "
                "(the output is finite; the target's scale overflows)"
            )
    return reasons


class QuantizerWatch:
    """Hooks every quantiser of a model and records the ranges of what it saw and produced.

    Use it around the forward passes of an evaluation; :meth:`problems` then lists each
    quantiser whose scale was not a positive finite number, or that mapped a varying input to
    one level (its frozen range misses the data: every value is clamped to the same end).

    Example::

        >>> with QuantizerWatch(model) as watch:  # doctest: +SKIP
        ...     model(x)
        >>> watch.problems()  # doctest: +SKIP
        ["quantiser L8.output_quant maps every value to one level (0) ..."]
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._seen: dict[str, list[float]] = {}
        self._bad_scale: dict[str, float] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> QuantizerWatch:
        for name, core in iter_quantizers(self.model):
            self._handles.append(core.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        @torch.no_grad()
        def hook(module: nn.Module, args: tuple, output: tuple) -> None:
            x, (y, scale) = args[0], output[:2]
            lo, hi = (float(v) for v in torch.aminmax(x.detach().float()))
            y_lo, y_hi = (float(v) for v in torch.aminmax(y.detach().float()))
            seen = self._seen.setdefault(name, [math.inf, -math.inf, math.inf, -math.inf])
            seen[:] = [min(seen[0], lo), max(seen[1], hi), min(seen[2], y_lo), max(seen[3], y_hi)]
            s = scale.detach().float()
            if not (torch.isfinite(s).all() and (s > 0).all()):
                self._bad_scale.setdefault(name, float(s[~(torch.isfinite(s) & (s > 0))][0]))

        return hook

    def problems(self) -> list[str]:
        """One reason per collapsed quantiser (empty when all are sound)."""
        reasons = []
        for name, (lo, hi, y_lo, y_hi) in self._seen.items():
            if name in self._bad_scale:
                reasons.append(f"quantiser {name}: scale is {self._bad_scale[name]:g}")
            elif math.isfinite(lo) and math.isfinite(hi) and hi > lo and y_hi == y_lo:
                reasons.append(
                    f"quantiser {name} maps every value to one level ({y_lo:.6g}): its input "
                    f"spans [{lo:.6g}, {hi:.6g}] but its range misses it"
                )
        return reasons


def degenerate_reasons(metrics: Mapping[str, Any], model: str | None = None) -> list[str]:
    """The degenerate-model reasons of a run's metrics, readable on their own
    (``"QAT model, test split: constant output: ..."``); ``model`` selects ``"qat"`` or
    ``"float"``.

    Metrics written before the check existed carry no ``degenerate`` entry; for them the two
    symptoms visible in the numbers are reported: a non-finite RMSE, and (``predict="change"``)
    a test RMSE equal to the persistence RMSE, i.e. an output of 0 on every window.
    """
    models = (model,) if model else tuple(_MODELS)
    recorded = metrics.get("degenerate")
    if recorded is not None:
        return [
            f"{_MODELS[key.split('/')[0]]}, {key.split('/')[1]} split: {reason}"
            for key, reasons in recorded.items()
            if key.split("/")[0] in models
            for reason in reasons
        ]
    reasons = []
    for which in models:
        rmse = metrics.get("rmse" if which == "qat" else "float_rmse")
        if rmse is None:
            continue
        if not math.isfinite(rmse):
            reasons.append(f"{_MODELS[which]}, test split: RMSE is {rmse}")
        elif metrics.get("predict") == "change" and rmse == metrics.get("persistence_rmse"):
            reasons.append(
                f"{_MODELS[which]}, test split: RMSE equals the persistence RMSE exactly (an "
                "output of 0 on every window; run trained before the degenerate-model check)"
            )
    return reasons
