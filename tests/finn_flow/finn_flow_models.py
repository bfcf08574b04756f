"""Small Brevitas test models for the FINN flow tests, and their QONNX export.

Everything here uses Brevitas's standard quantisers only, so the exported graphs contain
the same standard QONNX ``Quant`` nodes as the project's own quantisers (signed/unsigned
grids, zero point 0 or an integer zero point, per-tensor scales).

The Transformer follows the construction rules the FINN flow needs (see ``finn_flow``'s
module docstring in ``finn_flow/build.py``):

* every tensor entering a matrix product or an add is quantised (``QuantIdentity`` or the
  ``output_quant`` of a ``QuantLinear``);
* both inputs of every add (positional encoding, residuals) go through ONE shared quantiser
  instance, so both sides have the same scale;
* ``QuantIdentity`` before and after the softmax, and after the attention-times-values
  product;
* the quantiser after ``ReLU`` is unsigned and not narrow (``Uint8ActPerTensorFloat``);
* the normalisations have no affine terms;
* batch size 1, a single head: tensors are (1, seq, d_model), which finn-plus's attention
  operator reads as (heads, seq, emb).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from brevitas.export import export_qonnx
from brevitas.nn import QuantIdentity, QuantLinear, QuantReLU
from brevitas.quant import (
    Int8ActPerTensorFloat,
    Int8WeightPerTensorFloat,
    ShiftedUint8ActPerTensorFloat,
    ShiftedUint8WeightPerTensorFloat,
    Uint8ActPerTensorFloat,
)
from torch import nn

SEQ_LEN = 24
FEATURES = 4
D_MODEL = 16
D_FF = 64


class TinyMLP(nn.Module):
    """Input quantiser, QuantLinear -> QuantReLU -> QuantLinear -> QuantReLU -> QuantLinear."""

    def __init__(self, in_features: int = 8, hidden: int = 16, out_features: int = 2, wbits=4):
        super().__init__()
        self.inp = QuantIdentity(act_quant=Int8ActPerTensorFloat, return_quant_tensor=True)
        self.fc1 = QuantLinear(
            in_features,
            hidden,
            bias=True,
            weight_quant=Int8WeightPerTensorFloat,
            weight_bit_width=wbits,
        )
        self.act1 = QuantReLU(act_quant=Uint8ActPerTensorFloat, return_quant_tensor=True)
        self.fc2 = QuantLinear(
            hidden,
            hidden,
            bias=True,
            weight_quant=Int8WeightPerTensorFloat,
            weight_bit_width=wbits,
        )
        self.act2 = QuantReLU(act_quant=Uint8ActPerTensorFloat, return_quant_tensor=True)
        self.fc3 = QuantLinear(
            hidden,
            out_features,
            bias=False,
            weight_quant=Int8WeightPerTensorFloat,
            weight_bit_width=wbits,
        )

    def forward(self, x):
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(self.inp(x))))))


def sinusoidal_encoding(seq_len: int, d_model: int) -> torch.Tensor:
    """Standard sinusoidal positional encoding of shape (seq_len, d_model)."""
    pos = torch.arange(seq_len, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(1e4) / d_model))
    pe = torch.zeros(seq_len, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


class TinyTransformer(nn.Module):
    """One-layer, one-head quantised Transformer encoder for time series regression.

    ``zero_points=True`` swaps every activation quantiser except the ones FINN's handlers
    need unsigned-without-offset (after ReLU and after softmax) and every weight quantiser
    for Brevitas's shifted (zero-point) quantisers.
    """

    def __init__(
        self,
        features: int = FEATURES,
        d_model: int = D_MODEL,
        seq_len: int = SEQ_LEN,
        d_ff: int = D_FF,
        wbits: int = 4,
        zero_points: bool = False,
        norm: str = "batch",
    ):
        super().__init__()
        act = ShiftedUint8ActPerTensorFloat if zero_points else Int8ActPerTensorFloat
        wq = ShiftedUint8WeightPerTensorFloat if zero_points else Int8WeightPerTensorFloat
        self.d_model = d_model

        def qid(quant=act):
            return QuantIdentity(act_quant=quant, return_quant_tensor=False)

        def lin(i, o, out_quant=act, bias=True):
            return QuantLinear(
                i,
                o,
                bias=bias,
                weight_quant=wq,
                weight_bit_width=wbits,
                output_quant=out_quant,
                return_quant_tensor=False,
            )

        self.inp_q = qid()
        self.embed = lin(features, d_model, out_quant=None)
        self.register_buffer("pe", sinusoidal_encoding(seq_len, d_model))
        self.pe_q = qid()  # shared: both inputs of the positional-encoding add
        self.q_proj = lin(d_model, d_model)
        self.k_proj = lin(d_model, d_model)
        self.v_proj = lin(d_model, d_model)
        self.pre_softmax_q = qid()
        self.post_softmax_q = qid(Uint8ActPerTensorFloat)
        self.av_q = qid()
        self.o_proj = lin(d_model, d_model)
        self.res1_q = qid()  # shared: both inputs of the first residual add
        self.norm1 = self._norm(norm, d_model)
        self.norm1_q = qid()
        self.ff1 = lin(d_model, d_ff, out_quant=None)
        self.relu = QuantReLU(act_quant=Uint8ActPerTensorFloat, return_quant_tensor=False)
        self.ff2 = lin(d_ff, d_model)
        self.res2_q = qid()  # shared: both inputs of the second residual add
        self.norm2 = self._norm(norm, d_model)
        self.norm2_q = qid()
        self.pool_q = qid()
        self.head = lin(d_model, 1, out_quant=None)
        self.norm_kind = norm

    @staticmethod
    def _norm(kind: str, d_model: int) -> nn.Module:
        if kind == "batch":
            return nn.BatchNorm1d(d_model, affine=False)
        if kind == "layer":
            return nn.LayerNorm(d_model, elementwise_affine=False)
        raise ValueError(kind)

    def _apply_norm(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.norm_kind == "batch":  # BatchNorm1d wants (N, C, L)
            return norm(x.transpose(1, 2)).transpose(1, 2)
        return norm(x)

    def forward(self, x):  # x: (1, seq, features)
        h = self.embed(self.inp_q(x))
        h = self.pe_q(h) + self.pe_q(self.pe)
        q, k, v = self.q_proj(h), self.k_proj(h), self.v_proj(h)
        s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.d_model))
        a = self.post_softmax_q(torch.softmax(self.pre_softmax_q(s), dim=-1))
        att = self.o_proj(self.av_q(torch.matmul(a, v)))
        h = self.res1_q(h) + self.res1_q(att)
        h = self.norm1_q(self._apply_norm(self.norm1, h))
        f = self.ff2(self.relu(self.ff1(h)))
        h = self.res2_q(h) + self.res2_q(f)
        h = self.norm2_q(self._apply_norm(self.norm2, h))
        p = self.pool_q(h.mean(dim=1))
        return self.head(p)


def calibrate(model: nn.Module, shape: tuple[int, ...], seed: int = 0, steps: int = 8) -> None:
    """Give BatchNorm non-trivial statistics and the activation quantisers their ranges."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(*shape, generator=g) * 2.0)
    model.eval()


def export(model: nn.Module, shape: tuple[int, ...], path: Path | str) -> Path:
    """Export to QONNX with the TorchScript exporter (one self-contained file)."""
    path = Path(path)
    model.eval()
    export_qonnx(model, args=torch.randn(*shape), export_path=str(path), dynamo=False)
    return path


def make_mlp(path: Path | str, seed: int = 0) -> tuple[Path, tuple[int, ...]]:
    torch.manual_seed(seed)
    shape = (1, 8)
    model = TinyMLP()
    calibrate(model, shape, seed)
    return export(model, shape, path), shape


class SinBetween(nn.Module):
    """A quantised MLP with a ``Sin`` between its layers: an operator FINN cannot map."""

    def __init__(self):
        super().__init__()
        self.q0 = QuantIdentity(act_quant=Int8ActPerTensorFloat)
        self.l1 = QuantLinear(8, 8, bias=False, weight_quant=Int8WeightPerTensorFloat)
        self.q1 = QuantIdentity(act_quant=Int8ActPerTensorFloat)
        self.l2 = QuantLinear(8, 2, bias=False, weight_quant=Int8WeightPerTensorFloat)

    def forward(self, x):
        return self.l2(self.q1(torch.sin(self.l1(self.q0(x)))))


def make_unmappable(path: Path | str) -> Path:
    """Export a calibrated :class:`SinBetween` to ``path``."""
    model = SinBetween()
    calibrate(model, (1, 8))
    return export(model, (1, 8), path)


def make_transformer(
    path: Path | str, seed: int = 0, zero_points: bool = False, wbits: int = 4, norm="batch"
) -> tuple[Path, tuple[int, ...]]:
    torch.manual_seed(seed)
    shape = (1, SEQ_LEN, FEATURES)
    model = TinyTransformer(zero_points=zero_points, wbits=wbits, norm=norm)
    calibrate(model, shape, seed)
    return export(model, shape, path), shape


def random_inputs(shape: tuple[int, ...], n: int = 4, seed: int = 1) -> np.ndarray:
    """``n`` inputs stacked on a new leading axis: (n, *shape)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, *shape)) * 2.0).astype(np.float32)
