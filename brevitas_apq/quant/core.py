"""The quantisation core: one ``nn.Module`` for SQ, AQ and the adaptive APQ scheme.

``AdaptiveIntQuant`` follows Brevitas's ``RescalingIntQuant`` contract,
``forward(x) -> (y, scale, zero_point, bit_width)``, and delegates the integer rounding and
clamping to Brevitas's own ``IntQuant`` (round with a straight-through estimator, clamp to the
static signed / narrow-range grid). What it adds is the choice of scale and zero point:

* **SQ** (symmetric): ``zero_point = 0``, ``scale = max(|min|, |max|) / max_int``.
* **AQ** (asymmetric): the range ``[lo, hi] = [min(min, 0), max(max, 0)]`` (widened to contain 0
  so that 0 is exactly representable) is spread over the whole integer grid:
  ``scale = (hi - lo) / (max_int - min_int)``, ``zero_point = min_int - round(lo / scale)``.
  The grid stays the quantiser's static signed grid, so AQ and SQ differ only in scale and zero
  point and APQ can switch between them at run time without changing what Brevitas exports as
  ``signed`` / ``narrow_range``. (A signed grid with a zero point is also what the exact FINN
  lowering ``Quant(x; s, z) = Quant(x + z*s; s, 0) - z*s`` needs, see ``finn_flow``.)
* **APQ** (adaptive): during training, after every mini-batch, it measures the symmetry metric
  ``S`` of the range that sets the scale and picks SQ when ``S <= symmetry_threshold``, AQ
  otherwise. In eval mode and at export the last decision is frozen: it lives in the registered
  buffer ``use_zero_point`` (saved and loaded with ``state_dict``) and never depends on the
  input.

Decision rules (``decision_rule``):

* ``"paper"``: the rule of the paper, SQ when ``S <= symmetry_threshold`` after every mini-batch.
  With a range that sits near the threshold this flips at almost every mini-batch, and the
  frozen decision is whatever the last mini-batch happened to give.
* ``"hysteresis"``: the decision follows an exponential moving average ``S_avg`` of S (weight
  ``decision_momentum`` for the newest mini-batch, buffer ``smoothed_symmetry``) through a band
  around the threshold ``t``: SQ switches to AQ only when ``S_avg > t * (1 + decision_band)``
  and AQ switches back to SQ only when ``S_avg < t * (1 - decision_band)``. The first decision
  is the paper's (``S > t``). With ``decision_band=0`` and ``decision_momentum=1`` it is the
  paper's rule except at ``S == t`` exactly, where it keeps the current decision.

Both rules count the changes of decision in the buffer ``decision_flips`` (the first decision is
not a change). ``smoothed_symmetry`` is tracked under either rule, so a paper-rule run also tells
what the smoothed S says.

The symmetry metric (see :func:`symmetry_metric`) is ``S = |max + min| / (max - min)``, clipped
to [0, 1]: 0 for a range symmetric about zero, 1 for a one-sided range. It is the distance of the
range's centre from zero in units of its half-width, and it measures exactly what SQ loses:
SQ's step is ``(1 + S)`` times AQ's step for the same range. The default threshold 0.1 therefore
reads "pay for a zero point when SQ would be more than about 10 % coarser".

Per-channel scales (``channel_dim``, weights only): with ``channel_dim`` set, the scale and
the zero point are computed per slice along that dimension (the output channels: dim 0 of a
``Linear`` or ``Conv1d`` weight) and have the weight's rank with size 1 elsewhere, e.g.
``(out, 1)`` for a ``Linear``, as Brevitas's per-channel quantisers. S and the APQ decision
stay per tensor: one decision (and one kind of zero point) for the whole weight.

Statistics and mini-batches: parameters (weights, biases) use their current min / max at every
call. Runtime tensors (activations) keep an exponential moving average of the per-mini-batch
min / max (as PyTorch's moving-average observers and Brevitas's runtime-statistics scaling do),
frozen in eval mode. A mini-batch ends at every ``torch.optim`` optimizer step (a global
post-step hook) or at :func:`mark_batch`; until then every call of a quantiser adds to one range,
so a quantiser shared by both inputs of an add sees the union of the two and quantises both with
the same scale. The new range, S and the decision take effect from the next mini-batch (the
"delayed scaling" of FP8 training): each forward pass of a mini-batch uses one consistent scale.
The very first mini-batch, with no history yet, uses its own range.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from brevitas_apq.quant.validation import (
    check_band,
    check_bit_width,
    check_channel_dim,
    check_decision_rule,
    check_momentum,
    check_scheme,
    check_threshold,
)

#: Default APQ decision rule and its parameters (see the module docstring and the README).
#: Measured (README, "The APQ decision rule"; embedded data, predict=change, 20 float + 8 QAT
#: epochs x 300 mini-batches, 5 seeds): hysteresis with band 0.2 and momentum 0.02 cuts the
#: flips per model from about 300 to 6-13 and its frozen decisions always match the kept epoch's
#: mean S where that is outside threshold +- 20 %, but it cost mixed-4-8 +0.5-0.7 test RMSE on
#: average (9 of 10 paired runs worse; all-8 unchanged), so the paper's rule stays the default.
#: Band 0.2: the replayed S traces of the paper-rule runs need it to hold L8's output still
#: (flips max 8 at momentum 0.02 against 28 with no band), and inside +-20 % of the threshold
#: SQ's step is at most 1.12x AQ's, so either decision is acceptable there.
DEFAULT_DECISION_RULE = "paper"
DEFAULT_DECISION_BAND = 0.2
DEFAULT_DECISION_MOMENTUM = 0.02

# Buffers added after the first release: checkpoints without them load with their defaults.
_OPTIONAL_BUFFERS = {"smoothed_symmetry": float("nan"), "decision_flips": 0}


class _MiniBatches:
    """Counts finished mini-batches: every ``torch.optim`` optimizer step, plus ``mark_batch``."""

    count = 0


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    _MiniBatches.count += 1


register_optimizer_step_post_hook(_count_optimizer_step)


def mark_batch() -> None:
    """Mark the end of a mini-batch for training loops that do not step a ``torch.optim``
    optimizer (every optimizer step already does this).

    Runtime quantisers fold a mini-batch's statistics into their running range, measure S and
    re-decide SQ / AQ at the first training-mode call after the mark.
    """
    _MiniBatches.count += 1


# A record chunk is compacted into one tensor every this many steps (cheap appends, bounded
# number of Python objects over long training runs).
_RECORD_CHUNK = 512


def symmetry_metric(lo: Tensor, hi: Tensor) -> Tensor:
    """Symmetry metric ``S = |hi + lo| / (hi - lo)`` of the range ``[lo, hi]``, clipped to [0, 1].

    0 means symmetric about zero (SQ loses nothing), 1 means one-sided (SQ wastes half of its
    grid). A degenerate range ``lo == hi`` gives 0 at zero and 1 elsewhere.

    Example:
        >>> symmetry_metric(torch.tensor(-1.0), torch.tensor(1.0))
        tensor(0.)
        >>> symmetry_metric(torch.tensor(0.0), torch.tensor(3.0))
        tensor(1.)
    """
    span = hi - lo
    s = (hi + lo).abs() / torch.where(span > 0, span, torch.ones_like(span))
    degenerate = (hi != 0).to(s.dtype)
    return torch.where(span > 0, s, degenerate).clamp(max=1.0)


class SymmetryRecord:
    """Per-step record of ``S`` and of the chosen scheme, kept in memory for analysis.

    Appends are O(1) tensor appends; ``steps``, ``symmetry`` and ``use_zero_point`` materialise
    the whole history. The record is deliberately not part of the ``state_dict``: it is an
    analysis trace that callers save themselves (``apq train`` writes ``symmetry.csv``).
    """

    def __init__(self) -> None:
        self._chunks: list[Tensor] = []
        self._pending: list[Tensor] = []

    def append(self, step: Tensor, s: Tensor, use_zero_point: Tensor) -> None:
        row = torch.stack([step.to(torch.float64), s.to(torch.float64), use_zero_point.double()])
        self._pending.append(row.detach())
        if len(self._pending) >= _RECORD_CHUNK:
            self._chunks.append(torch.stack(self._pending))
            self._pending = []

    def _table(self) -> Tensor:
        parts = self._chunks + ([torch.stack(self._pending)] if self._pending else [])
        return torch.cat(parts) if parts else torch.empty(0, 3, dtype=torch.float64)

    def __len__(self) -> int:
        return sum(len(c) for c in self._chunks) + len(self._pending)

    def rows(self) -> list[tuple[int, float, str]]:
        """``(step, S, "SQ" | "AQ")`` for every recorded training step."""
        table = self._table().cpu()
        return [(int(t), float(s), "AQ" if z else "SQ") for t, s, z in table.tolist()]

    def clear(self) -> None:
        self._chunks, self._pending = [], []

    def state(self) -> Tensor:
        """The whole record as one (steps, 3) tensor: step, S, zero point used (for checkpoints)."""
        return self._table().clone()

    def load_state(self, table: Tensor) -> None:
        self._chunks, self._pending = [table.to(torch.float64).clone()], []


class AdaptiveIntQuant(nn.Module):
    """Per-tensor integer quantiser with a symmetric, asymmetric or adaptive scale / zero point.

    Args:
        int_quant: Brevitas ``IntQuant`` doing the rounding and clamping; its static ``signed``
            and ``narrow_range`` define the integer grid.
        bit_width: integer bit width, 2 to 16.
        quant_scheme: ``"sq"``, ``"aq"`` or ``"apq"``.
        symmetry_threshold: APQ picks SQ when ``S <= symmetry_threshold`` (0 to 1).
        runtime_stats: ``True`` for activations (running min / max, frozen in eval), ``False`` for
            parameters (min / max of the tensor itself).
        stats_momentum: weight of the newest batch in the running min / max (0 to 1].
        decision_rule: ``"paper"`` (SQ iff ``S <= symmetry_threshold`` at every mini-batch) or
            ``"hysteresis"`` (a band around the threshold on a moving average of S).
        decision_band: half-width of the hysteresis band relative to the threshold, [0, 1).
        decision_momentum: weight of the newest mini-batch in the moving average of S, (0, 1].
        channel_dim: ``None`` for one scale per tensor, or the dimension whose slices get a scale
            (and zero point) each; parameters only (``runtime_stats=False``).

    Returns from ``forward(x)``: ``(y, scale, zero_point, bit_width)``, ``y`` dequantised.

    Example:
        >>> from brevitas.core.quant import IntQuant
        >>> from brevitas.core.function_wrapper import Identity
        >>> grid = IntQuant(narrow_range=False, signed=True, input_view_impl=Identity())
        >>> quant = AdaptiveIntQuant(grid, bit_width=8, quant_scheme="apq")
        >>> y, scale, zero_point, bit_width = quant(torch.tensor([0.0, 1.0, 2.0, 3.0]))
        >>> quant.scheme  # a one-sided range: S = 1 > 0.1, so AQ
        'AQ'
    """

    def __init__(
        self,
        int_quant: nn.Module,
        bit_width: int,
        quant_scheme: str,
        symmetry_threshold: float = 0.1,
        runtime_stats: bool = False,
        stats_momentum: float = 0.1,
        decision_rule: str = DEFAULT_DECISION_RULE,
        decision_band: float = DEFAULT_DECISION_BAND,
        decision_momentum: float = DEFAULT_DECISION_MOMENTUM,
        channel_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.int_quant = int_quant
        self.quant_scheme = check_scheme(quant_scheme)
        self.symmetry_threshold = check_threshold(symmetry_threshold)
        self.stats_momentum = check_momentum(stats_momentum)
        self.runtime_stats = bool(runtime_stats)
        self.decision_rule = check_decision_rule(decision_rule)
        self.decision_band = check_band(decision_band)
        self.decision_momentum = check_momentum(decision_momentum, "decision_momentum")
        self.channel_dim = check_channel_dim(channel_dim, self.runtime_stats)
        bits = check_bit_width(bit_width)
        # Static per quantiser, as Brevitas reads them once: not saved, never switched.
        self.register_buffer("bit_width", torch.tensor(float(bits)), persistent=False)
        self.register_buffer(
            "min_int", torch.tensor(float(int_quant.min_int(torch.tensor(bits)))), persistent=False
        )
        self.register_buffer(
            "max_int", torch.tensor(float(int_quant.max_int(torch.tensor(bits)))), persistent=False
        )
        # The decision and the statistics: saved, loaded and exported with the model.
        self.register_buffer("use_zero_point", torch.tensor(self.quant_scheme == "aq"))
        self.register_buffer("symmetry", torch.tensor(float("nan")))
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.long))
        self.register_buffer("running_min", torch.tensor(0.0))
        self.register_buffer("running_max", torch.tensor(0.0))
        # The decision rule's state: moving average of S and the number of decision changes.
        self.register_buffer("smoothed_symmetry", torch.tensor(float("nan")))
        self.register_buffer("decision_flips", torch.tensor(0, dtype=torch.long))
        self.record = SymmetryRecord()
        self._pending: tuple[Tensor, Tensor] | None = None
        self._pending_batch = -1
        self._recorded_batch = -1

    @property
    def scheme(self) -> str:
        """The scheme in force now: ``"SQ"`` or ``"AQ"``."""
        return "AQ" if bool(self.use_zero_point) else "SQ"

    @property
    def is_adaptive(self) -> bool:
        return self.quant_scheme == "apq"

    def _observe(self, x: Tensor) -> None:
        """Take in the statistics of ``x`` (training mode)."""
        lo, hi = torch.aminmax(x.detach())
        step = _MiniBatches.count
        if not self.runtime_stats:
            # Parameters: S and the decision follow the tensor itself at every call; the record
            # keeps one row per mini-batch.
            self.running_min.copy_(lo)
            self.running_max.copy_(hi)
            new_batch = self._recorded_batch != step or int(self.num_updates) == 0
            self._decide(new_batch)
            if new_batch:
                self._recorded_batch = step
                self.num_updates += 1
                self.record.append(self.num_updates, self.symmetry, self.use_zero_point)
            return
        if self._pending is not None and self._pending_batch != step:
            self.commit()
        if self._pending is None:
            self._pending, self._pending_batch = (lo, hi), step
        else:  # a shared quantiser called again in the same mini-batch: one union range
            self._pending = (
                torch.minimum(self._pending[0], lo),
                torch.maximum(self._pending[1], hi),
            )

    def _decide(self, new_batch: bool = True) -> None:
        """Measure S of the running range and, for APQ, decide SQ / AQ by ``decision_rule``.

        ``new_batch``: this is the first call of a mini-batch (the moving average of S takes
        one step per mini-batch; parameters are measured again at every call of a mini-batch).
        """
        s = symmetry_metric(self.running_min, self.running_max)
        self.symmetry.copy_(s)
        first = int(self.num_updates) == 0
        if new_batch:
            if first or bool(torch.isnan(self.smoothed_symmetry)):
                self.smoothed_symmetry.copy_(s)
            else:
                self.smoothed_symmetry.lerp_(s, self.decision_momentum)
        if not self.is_adaptive:
            return
        threshold = self.symmetry_threshold
        if self.decision_rule == "paper" or first:
            new = s > threshold
        else:
            smoothed = self.smoothed_symmetry
            new = torch.where(
                self.use_zero_point,
                smoothed >= threshold * (1.0 - self.decision_band),  # AQ stays unless below
                smoothed > threshold * (1.0 + self.decision_band),  # SQ stays unless above
            )
        if not first:
            self.decision_flips += (new != self.use_zero_point).long()
        self.use_zero_point.copy_(new)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )
        for name, default in _OPTIONAL_BUFFERS.items():
            key = prefix + name
            if key not in state_dict:  # a checkpoint from before the buffer existed
                getattr(self, name).fill_(default)
                if key in missing_keys:
                    missing_keys.remove(key)

    @torch.no_grad()
    def commit(self) -> None:
        """Fold the pending mini-batch range into the running statistics and decide SQ / AQ.

        Called automatically at the first training-mode call after an optimizer step (see
        :func:`mark_batch`) and when the module switches to eval mode.
        """
        if self._pending is None:
            return
        lo, hi = self._pending
        self._pending = None
        if int(self.num_updates) == 0:
            self.running_min.copy_(lo)
            self.running_max.copy_(hi)
        else:
            self.running_min.lerp_(lo, self.stats_momentum)
            self.running_max.lerp_(hi, self.stats_momentum)
        self._decide()
        self.num_updates += 1
        self.record.append(self.num_updates, self.symmetry, self.use_zero_point)

    def train(self, mode: bool = True) -> AdaptiveIntQuant:
        if not mode:
            self.commit()  # the last mini-batch counts before the decision freezes
        return super().train(mode)

    def _param_range(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Min and max of a parameter: per tensor, or per slice along ``channel_dim``."""
        x = x.detach()
        if self.channel_dim is None:
            return torch.aminmax(x)
        dims = [d for d in range(x.dim()) if d != self.channel_dim % x.dim()]
        return x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)

    def _frozen_range(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.runtime_stats:
            return self._param_range(x)
        if int(self.num_updates) == 0:
            raise RuntimeError(
                "activation quantiser has no statistics yet: run at least one forward pass in "
                "training mode (training or calibration) before evaluating or exporting"
            )
        return self.running_min, self.running_max

    def scale_zero_point(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Scale and zero point for the range ``[lo, hi]`` under the current decision."""
        lo = torch.minimum(lo, torch.zeros_like(lo))
        hi = torch.maximum(hi, torch.zeros_like(hi))
        tiny = torch.finfo(lo.dtype).tiny
        sq_scale = torch.maximum(-lo, hi) / self.max_int
        aq_scale = (hi - lo) / (self.max_int - self.min_int)
        aq_scale = aq_scale.clamp(min=tiny)
        aq_zero_point = (self.min_int - torch.round(lo / aq_scale)).clamp(
            self.min_int, self.max_int
        )
        scale = torch.where(self.use_zero_point, aq_scale, sq_scale.clamp(min=tiny))
        zero_point = torch.where(self.use_zero_point, aq_zero_point, torch.zeros_like(lo))
        return scale, zero_point

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if self.training:
            with torch.no_grad():
                self._observe(x)
            if self.runtime_stats and int(self.num_updates) == 0:
                lo, hi = self._pending  # the very first mini-batch: its own range so far
            elif self.channel_dim is not None:  # per-channel parameters (S stays per tensor)
                lo, hi = self._param_range(x)
            else:  # parameters: _observe just stored this tensor's own range
                lo, hi = self.running_min, self.running_max
        else:
            lo, hi = self._frozen_range(x)
        scale, zero_point = self.scale_zero_point(lo, hi)
        y = self.int_quant(scale, zero_point, self.bit_width, x)
        return y, scale, zero_point, self.bit_width

    def extra_repr(self) -> str:
        return (
            f"scheme={self.quant_scheme}, bit_width={int(self.bit_width)}, "
            f"threshold={self.symmetry_threshold}, runtime_stats={self.runtime_stats}, "
            f"decision_rule={self.decision_rule}"
            + ("" if self.channel_dim is None else f", channel_dim={self.channel_dim}")
            + (
                f", band={self.decision_band}, decision_momentum={self.decision_momentum}"
                if self.decision_rule == "hysteresis"
                else ""
            )
        )


__all__ = [
    "DEFAULT_DECISION_BAND",
    "DEFAULT_DECISION_MOMENTUM",
    "DEFAULT_DECISION_RULE",
    "AdaptiveIntQuant",
    "SymmetryRecord",
    "mark_batch",
    "symmetry_metric",
]
