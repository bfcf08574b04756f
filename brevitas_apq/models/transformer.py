"""The time-series Transformer of Ling et al. (arXiv 2310.02654), float and quantised.

Eight linear layers, named as in the paper::

    x (B, T, F) -> L1 (F -> d) -> + sinusoidal positional encoding
      -> encoder layer: L2/L3/L4 = Q/K/V, softmax(Q K^T / sqrt(d_head)) V, L5 = output projection,
                        residual add + norm, L6 (d -> ffn) -> ReLU -> L7 (ffn -> d),
                        residual add + norm
      -> average pooling over time -> L8 (d -> 1)

The quantised model is integer-deployable end to end, written so that finn-plus can map it:
hand-written attention (no ``nn.MultiheadAttention``), a ``QuantIdentity`` before and after
the softmax, one shared quantiser instance on both inputs of each add (positional encoding and
both residuals), so that each add sums two integers of one scale, and normalisation without
affine terms (the affine part of a norm folds into the following quantiser's thresholds in FINN
anyway). Every quantiser gets its bit width and scheme from a :class:`~brevitas_apq.plans.BitPlan`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import brevitas.nn as qnn
import torch
from torch import Tensor, nn

from brevitas_apq.errors import ConfigError
from brevitas_apq.plans import BitPlan


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the Transformer. Defaults are the paper's: d_model 16, one head, window 24."""

    n_features: int
    window: int = 24
    d_model: int = 16
    n_heads: int = 1
    ffn_dim: int | None = None  # default 4 * d_model
    norm: str = "layer"  # "layer" (LayerNorm) or "batch" (BatchNorm1d over d_model)

    def __post_init__(self) -> None:
        for name in ("n_features", "window", "d_model", "n_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} is invalid; allowed: a positive integer")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "allowed: n_heads dividing d_model"
            )
        if self.ffn_dim is not None and (not isinstance(self.ffn_dim, int) or self.ffn_dim < 1):
            raise ConfigError(f"ffn_dim={self.ffn_dim!r} is invalid; allowed: a positive integer")
        if self.norm not in ("layer", "batch"):
            raise ConfigError(f"norm={self.norm!r} is invalid; allowed: layer, batch")

    @property
    def ffn(self) -> int:
        return self.ffn_dim or 4 * self.d_model

    def to_dict(self) -> dict:
        return asdict(self)


def sinusoidal_encoding(window: int, d_model: int) -> Tensor:
    """The fixed sinusoidal positional encoding of Vaswani et al., shape (window, d_model)."""
    position = torch.arange(window, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(1e4) / d_model))
    pe = torch.zeros(window, d_model)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)[:, : d_model // 2]
    return pe


class _Norm(nn.Module):
    """Normalisation over d_model without affine terms, on (B, T, d) tensors."""

    def __init__(self, kind: str, d_model: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "layer":
            self.norm = nn.LayerNorm(d_model, elementwise_affine=False)
        else:
            self.norm = nn.BatchNorm1d(d_model, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "layer":
            return self.norm(x)
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class TimeSeriesTransformer(nn.Module):
    """Float (``plan=None``) or quantised (``plan=BitPlan``) Transformer regressor.

    Example:
        >>> from brevitas_apq.plans import BitPlan
        >>> cfg = ModelConfig(n_features=12)
        >>> float_model = TimeSeriesTransformer(cfg)
        >>> quant_model = TimeSeriesTransformer(cfg, BitPlan.from_presets("mixed-4-8", "sq-apq"))
        >>> quant_model.load_float_weights(float_model)
        >>> quant_model(torch.randn(2, 24, 12)).shape
        torch.Size([2])
    """

    def __init__(self, config: ModelConfig, plan: BitPlan | None = None) -> None:
        super().__init__()
        self.config = config
        self.plan = plan
        c = config
        self.register_buffer("pos_encoding", sinusoidal_encoding(c.window, c.d_model))
        self.input_quant = self._act("input")
        self.L1 = self._linear("L1", c.n_features, c.d_model)
        self.pos_quant = self._act("pos")
        self.L2 = self._linear("L2", c.d_model, c.d_model)
        self.L3 = self._linear("L3", c.d_model, c.d_model)
        self.L4 = self._linear("L4", c.d_model, c.d_model)
        self.scores_quant = self._act("scores")
        self.softmax_quant = self._act("softmax")
        self.context_quant = self._act("context")
        self.L5 = self._linear("L5", c.d_model, c.d_model)
        self.res1_quant = self._act("res1")
        self.norm1 = _Norm(c.norm, c.d_model)
        self.norm1_quant = self._act("norm1")
        self.L6 = self._linear("L6", c.d_model, c.ffn)
        self.relu = self._relu()
        self.L7 = self._linear("L7", c.ffn, c.d_model)
        self.res2_quant = self._act("res2")
        self.norm2 = _Norm(c.norm, c.d_model)
        self.norm2_quant = self._act("norm2")
        self.pool_quant = self._act("pool")
        self.L8 = self._linear("L8", c.d_model, 1)

    # --- construction ---------------------------------------------------------------------------

    @property
    def is_quantized(self) -> bool:
        return self.plan is not None

    def _linear(self, name: str, n_in: int, n_out: int) -> nn.Module:
        if self.plan is None:
            return nn.Linear(n_in, n_out)
        return qnn.QuantLinear(n_in, n_out, bias=True, **self.plan.linear_kwargs(name))

    def _act(self, name: str) -> nn.Module:
        if self.plan is None:
            return nn.Identity()
        return qnn.QuantIdentity(**self.plan.act_kwargs(name))

    def _relu(self) -> nn.Module:
        if self.plan is None:
            return nn.ReLU()
        return qnn.QuantReLU(**self.plan.act_kwargs("relu"))

    def load_float_weights(self, float_model: TimeSeriesTransformer) -> None:
        """Initialise QAT from a trained float model of the same shape (weights and biases)."""
        if float_model.config != self.config:
            raise ValueError(
                f"float model config {float_model.config} differs from {self.config}; "
                "train the float model with the same shape"
            )
        missing, unexpected = self.load_state_dict(float_model.state_dict(), strict=False)
        if unexpected:
            raise ValueError(f"float weights not used by the quantised model: {unexpected}")
        not_quant = [k for k in missing if "_quant" not in k and "quant." not in k]
        if not_quant:
            raise ValueError(f"quantised model parameters without float weights: {not_quant}")

    # --- forward --------------------------------------------------------------------------------

    def _attention(self, h: Tensor) -> Tensor:
        b, t, d = h.shape
        heads = self.config.n_heads
        dh = d // heads
        q = self.L2(h)
        k = self.L3(h)
        v = self.L4(h)
        if heads > 1:
            q = q.reshape(b, t, heads, dh).transpose(1, 2)
            k = k.reshape(b, t, heads, dh).transpose(1, 2)
            v = v.reshape(b, t, heads, dh).transpose(1, 2)
        # The 1/sqrt(d_head) factor sits just before the scores quantiser, where FINN's
        # streamlining absorbs a scalar multiplication into the quantiser's thresholds.
        scores = self.scores_quant(torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(dh)))
        weights = self.softmax_quant(torch.softmax(scores, dim=-1))
        context = torch.matmul(weights, v)
        if heads > 1:
            context = context.transpose(1, 2).reshape(b, t, d)
        return self.L5(self.context_quant(context))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (batch, window, n_features) -> forecasts (batch,)."""
        h = self.L1(self.input_quant(x))
        h = self.pos_quant(h) + self.pos_quant(self.pos_encoding)
        h = self.norm1_quant(self.norm1(self.res1_quant(h) + self.res1_quant(self._attention(h))))
        f = self.L7(self.relu(self.L6(h)))
        h = self.norm2_quant(self.norm2(self.res2_quant(h) + self.res2_quant(f)))
        pooled = self.pool_quant(h.mean(dim=1))
        return self.L8(pooled).squeeze(-1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ModelConfig", "TimeSeriesTransformer", "count_parameters", "sinusoidal_encoding"]
