"""Brevitas quantiser injectors: SQ, AQ and APQ for weights, biases and activations.

Each quantiser is a small injector class composed from fragments, the Brevitas solver last, and
is a drop-in ``weight_quant=``, ``bias_quant=``, ``input_quant=``, ``output_quant=`` or
``act_quant=`` argument of ``brevitas.nn`` layers. Bit width (2-16) and, for APQ, the symmetry
threshold and the decision rule (``decision_rule="paper"|"hysteresis"``, ``decision_band``,
``decision_momentum``, see ``brevitas_apq.quant.core``) are set per layer through Brevitas's
usual prefixed keywords::

    import brevitas.nn as qnn
    from brevitas_apq.quant import APQActQuant, APQWeightQuant, SQBiasQuant

    layer = qnn.QuantLinear(
        16, 16, bias=True,
        weight_quant=APQWeightQuant, weight_bit_width=4, weight_symmetry_threshold=0.05,
        bias_quant=SQBiasQuant, bias_bit_width=8,
        input_quant=APQActQuant, input_bit_width=8, input_decision_rule="paper",
        return_quant_tensor=False)

Grids (static per class, read once by Brevitas and exported as ``signed`` / ``narrow_range``):

* weights and biases: signed, narrow range for SQ and APQ (``[-(2^(b-1)-1), 2^(b-1)-1]``, the
  symmetric grid FINN's RTL MVU wants on 7-series parts); full signed range for AQ, where the
  zero point makes use of the extra level.
* activations: signed, full range for all three schemes.
* ``UnsignedActQuant``: unsigned, full range, zero point 0, for tensors that are one-sided by
  construction (after ReLU). On ``[0, max]`` this grid *is* the asymmetric quantiser, at no
  zero-point cost, and it is what FINN's ReLU handler needs.

Scales: one per tensor by default. Weights take one scale (and zero point) per output channel
with Brevitas's own flag, ``weight_scaling_per_output_channel=True``, or the ``PerChannel``
fragment (plans: ``per_channel: true`` on a weight); FINN folds them into the thresholds that
follow. Activation quantisers pass the gradient of a clipped value back inwards (see
``RuntimeStats``).
"""

from __future__ import annotations

from typing import NamedTuple

from brevitas.core.function_wrapper import Identity, TensorClamp
from brevitas.core.scaling import ScalingPerOutputType
from brevitas.inject import ExtendedInjector, value
from brevitas.quant.base import IntQuant, NarrowIntQuant, UintQuant
from brevitas.quant.solver import ActQuantSolver, BiasQuantSolver, WeightQuantSolver

from brevitas_apq.errors import ConfigError
from brevitas_apq.quant.clamp import TensorClampInwardSte
from brevitas_apq.quant.core import (
    DEFAULT_DECISION_BAND,
    DEFAULT_DECISION_MOMENTUM,
    DEFAULT_DECISION_RULE,
    AdaptiveIntQuant,
)

__all__ = [
    "SCHEME_QUANTIZERS",
    "APQActQuant",
    "APQBiasQuant",
    "APQWeightQuant",
    "AQActQuant",
    "AQBiasQuant",
    "AQWeightQuant",
    "PerChannel",
    "SQActQuant",
    "SQBiasQuant",
    "SQWeightQuant",
    "UnsignedActQuant",
]


class AdaptiveCore(ExtendedInjector):
    """Fragment: use ``AdaptiveIntQuant`` as the tensor quantiser (per tensor, 8 bits default)."""

    tensor_quant = AdaptiveIntQuant
    # Per-tensor scale (Brevitas's solver derives ``scaling_per_output`` from this, or from a
    # ``scaling_per_output_channel`` keyword); plain clamp (activations: see ``RuntimeStats``)
    # and no input view, as for Brevitas's per-tensor quantisers.
    scaling_per_output_type = ScalingPerOutputType.TENSOR
    tensor_clamp_impl = TensorClamp
    input_view_impl = Identity
    bit_width = 8
    symmetry_threshold = 0.1
    stats_momentum = 0.1
    decision_rule = DEFAULT_DECISION_RULE
    decision_band = DEFAULT_DECISION_BAND
    decision_momentum = DEFAULT_DECISION_MOMENTUM

    @value
    def channel_dim(scaling_per_output):
        if scaling_per_output != ScalingPerOutputType.TENSOR:
            raise ConfigError(
                f"scaling_per_output={scaling_per_output} is not supported here: biases and "
                "activations have one scale per tensor; per-channel scales are for weights"
            )
        return None


class PerChannel(ExtendedInjector):
    """Fragment: one scale (and zero point) per output channel, for weight quantisers.

    FINN folds per-channel weight scales into the thresholds that follow, so at 4 bits they are
    free in hardware where a layer feeds a threshold. The same choice as a keyword:
    ``weight_scaling_per_output_channel=True`` (Brevitas's own flag). S and the APQ decision stay
    per tensor.

    Example:
        >>> import brevitas.nn as qnn
        >>> class SQWeightPerChannelQuant(PerChannel, SQWeightQuant):
        ...     pass
        >>> layer = qnn.QuantLinear(4, 3, True, weight_quant=SQWeightPerChannelQuant)
        >>> tuple(layer.quant_weight().scale.shape)
        (3, 1)
    """

    scaling_per_output_type = ScalingPerOutputType.CHANNEL


class WeightChannels(ExtendedInjector):
    """Fragment (weights): per tensor, or per output channel with ``scaling_per_output`` CHANNEL
    (the ``PerChannel`` fragment or ``scaling_per_output_channel=True``)."""

    @value
    def channel_dim(scaling_per_output, output_channel_dim):
        if scaling_per_output == ScalingPerOutputType.CHANNEL:
            return output_channel_dim
        if scaling_per_output != ScalingPerOutputType.TENSOR:
            raise ConfigError(
                f"scaling_per_output={scaling_per_output} is not supported; allowed: "
                "ScalingPerOutputType.TENSOR or CHANNEL"
            )
        return None


class Symmetric(ExtendedInjector):
    """Fragment: zero point 0, scale from the largest magnitude."""

    quant_scheme = "sq"


class Asymmetric(ExtendedInjector):
    """Fragment: scale and zero point from minimum and maximum."""

    quant_scheme = "aq"


class Adaptive(ExtendedInjector):
    """Fragment: SQ or AQ, re-decided from the symmetry metric after every training batch."""

    quant_scheme = "apq"


class ParameterStats(ExtendedInjector):
    """Fragment: statistics from the parameter itself (weights, biases)."""

    runtime_stats = False


class RuntimeStats(ExtendedInjector):
    """Fragment: running statistics collected in training, frozen in eval (activations).

    The range follows the data, so a clipped value is the statistics lagging behind: the clamp
    passes its gradient back inwards (``TensorClampInwardSte``, see ``brevitas_apq.quant.clamp``
    for why neither of Brevitas's clamps). Brevitas's own stay selectable per quantiser, e.g.
    ``output_tensor_clamp_impl=TensorClamp`` on a layer.
    """

    runtime_stats = True
    tensor_clamp_impl = TensorClampInwardSte


class BiasWithOwnScale(ExtendedInjector):
    """Fragment: the bias gets its own scale (no input scale needed, as FINN folds biases)."""

    requires_input_scale = False


class SQWeightQuant(
    Symmetric, NarrowIntQuant, ParameterStats, WeightChannels, AdaptiveCore, WeightQuantSolver
):
    """Symmetric weight quantiser: signed narrow grid, zero point 0.

    Example:
        >>> import brevitas.nn as qnn
        >>> layer = qnn.QuantLinear(4, 2, True, weight_quant=SQWeightQuant, weight_bit_width=4)
        >>> int(layer.quant_weight().zero_point)
        0
    """


class AQWeightQuant(
    Asymmetric, IntQuant, ParameterStats, WeightChannels, AdaptiveCore, WeightQuantSolver
):
    """Asymmetric weight quantiser: signed full grid with an integer zero point.

    Example:
        >>> import brevitas.nn as qnn
        >>> layer = qnn.QuantLinear(4, 2, True, weight_quant=AQWeightQuant, weight_bit_width=4)
        >>> layer.weight_quant.tensor_quant.scheme
        'AQ'
    """


class APQWeightQuant(
    Adaptive, NarrowIntQuant, ParameterStats, WeightChannels, AdaptiveCore, WeightQuantSolver
):
    """Adaptive weight quantiser: SQ or AQ per training step, frozen in eval and at export.

    Example:
        >>> import brevitas.nn as qnn
        >>> layer = qnn.QuantLinear(
        ...     4, 2, True, weight_quant=APQWeightQuant, weight_symmetry_threshold=0.2)
        >>> layer.weight_quant.tensor_quant.symmetry_threshold
        0.2
    """


class SQBiasQuant(
    Symmetric, NarrowIntQuant, ParameterStats, BiasWithOwnScale, AdaptiveCore, BiasQuantSolver
):
    """Symmetric bias quantiser with its own scale (``bias_quant=SQBiasQuant``)."""


class AQBiasQuant(
    Asymmetric, IntQuant, ParameterStats, BiasWithOwnScale, AdaptiveCore, BiasQuantSolver
):
    """Asymmetric bias quantiser with its own scale and zero point."""


class APQBiasQuant(
    Adaptive, NarrowIntQuant, ParameterStats, BiasWithOwnScale, AdaptiveCore, BiasQuantSolver
):
    """Adaptive bias quantiser with its own scale."""


class SQActQuant(Symmetric, IntQuant, RuntimeStats, AdaptiveCore, ActQuantSolver):
    """Symmetric activation quantiser: signed grid, zero point 0, running max-magnitude scale.

    Example:
        >>> import brevitas.nn as qnn
        >>> act = qnn.QuantIdentity(act_quant=SQActQuant, bit_width=4, return_quant_tensor=True)
        >>> int(act(torch.randn(8, 3)).zero_point)
        0
    """


class AQActQuant(Asymmetric, IntQuant, RuntimeStats, AdaptiveCore, ActQuantSolver):
    """Asymmetric activation quantiser: signed grid with an integer zero point."""


class APQActQuant(Adaptive, IntQuant, RuntimeStats, AdaptiveCore, ActQuantSolver):
    """Adaptive activation quantiser: the paper's proposal for activations.

    Example:
        >>> import brevitas.nn as qnn
        >>> act = qnn.QuantIdentity(act_quant=APQActQuant, return_quant_tensor=True)
        >>> _ = act(torch.rand(8, 3))  # one-sided data in training mode
        >>> act.act_quant.fused_activation_quant_proxy.tensor_quant.scheme
        'AQ'
    """


class UnsignedActQuant(Symmetric, UintQuant, RuntimeStats, AdaptiveCore, ActQuantSolver):
    """Unsigned activation quantiser with zero point 0, for one-sided tensors (after ReLU)."""


class SchemeQuantizers(NamedTuple):
    """The weight, bias and activation quantisers of one scheme."""

    weight: type
    bias: type
    act: type


#: ``"sq" | "aq" | "apq"`` -> the quantisers of that scheme (used by bit plans).
SCHEME_QUANTIZERS = {
    "sq": SchemeQuantizers(SQWeightQuant, SQBiasQuant, SQActQuant),
    "aq": SchemeQuantizers(AQWeightQuant, AQBiasQuant, AQActQuant),
    "apq": SchemeQuantizers(APQWeightQuant, APQBiasQuant, APQActQuant),
}
