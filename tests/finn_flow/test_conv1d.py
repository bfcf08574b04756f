"""finn_flow.conv1d: 1D convolutions as channels-last Im2Col + MatMul, exact, end to end."""

from __future__ import annotations

import brevitas.nn as qnn
import finn_flow_models as models
import numpy as np
import pytest
from brevitas.quant import (
    Int8ActPerTensorFloat,
    Int8Bias,
    Int8WeightPerChannelFloat,
    Int8WeightPerTensorFloat,
    ShiftedUint8ActPerTensorFloat,
    Uint8ActPerTensorFloat,
)
from torch import nn

pytest.importorskip("finn")

from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.transformation.infer_shapes import InferShapes

from finn_flow.build import build
from finn_flow.conv1d import Conv1dToChannelsLast
from finn_flow.errors import FinnFlowError

pytestmark = pytest.mark.finn
T, F = 24, 3


class ConvNet(nn.Module):
    """(B, T, F) -> transpose -> 2 QuantConv1d (+ReLU) -> flatten or mean over time -> head."""

    def __init__(self, ncw_input=False, pool=False, per_channel=False, zero_point=False):
        super().__init__()
        wq = Int8WeightPerChannelFloat if per_channel else Int8WeightPerTensorFloat
        iq = ShiftedUint8ActPerTensorFloat if zero_point else Int8ActPerTensorFloat
        self.ncw_input, self.pool = ncw_input, pool
        self.inp = qnn.QuantIdentity(act_quant=iq, return_quant_tensor=True)
        self.c1 = qnn.QuantConv1d(F, 8, 3, padding=1, weight_quant=wq, bias_quant=Int8Bias)
        self.r1 = qnn.QuantReLU(act_quant=Uint8ActPerTensorFloat, return_quant_tensor=True)
        self.c2 = qnn.QuantConv1d(
            8,
            6,
            3,
            stride=2,
            dilation=2,
            padding=2,
            weight_quant=wq,
            weight_bit_width=4,
            bias=False,
        )
        self.r2 = qnn.QuantReLU(act_quant=Uint8ActPerTensorFloat, return_quant_tensor=False)
        self.q = qnn.QuantIdentity(act_quant=iq, return_quant_tensor=True)
        self.fc = qnn.QuantLinear(
            6 if pool else 6 * 12,
            2,
            weight_quant=Int8WeightPerTensorFloat,
            bias_quant=Int8Bias,
            output_quant=Int8ActPerTensorFloat,
        )

    def forward(self, x):
        x = self.inp(x)
        x = self.r2(self.c2(self.r1(self.c1(x if self.ncw_input else x.transpose(1, 2)))))
        return self.fc(self.q(x.mean(dim=2) if self.pool else x.flatten(1)))


def _export(tmp_path, name, **kw):
    shape = (1, F, T) if kw.get("ncw_input") else (1, T, F)
    model = ConvNet(**kw)
    models.calibrate(model, (8, *shape[1:]))
    return models.export(model, shape, tmp_path / f"{name}.onnx"), shape


VARIANTS = {
    "flatten": {},
    "ncw_input": {"ncw_input": True},
    "pool_per_channel": {"pool": True, "per_channel": True},
    "zero_points": {"zero_point": True},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_rewrite_is_exact_and_channels_last(tmp_path, name):
    path, shape = _export(tmp_path, name, **VARIANTS[name])
    before = ModelWrapper(str(path)).transform(InferShapes())
    after = before.transform(Conv1dToChannelsLast())
    ops = [n.op_type for n in after.graph.node]
    assert "Conv" not in ops and ops.count("Im2Col") == 2
    # only the graph input's own layout change may remain (NCW input), in front of everything
    assert ops.count("Transpose") == int(name == "ncw_input")
    iname, oname = before.graph.input[0].name, before.graph.output[0].name
    for x in models.random_inputs(shape, 8):
        ref = execute_onnx(before, {iname: x})[oname]
        got = execute_onnx(after, {iname: x})[oname]
        np.testing.assert_array_equal(got, ref)  # quantised output: bit exact


@pytest.mark.parametrize("name", list(VARIANTS))
def test_conv1d_estimate_flow_emulation_matches_qonnx(tmp_path, name):
    path, shape = _export(tmp_path, name, **VARIANTS[name])
    x = models.random_inputs(shape, 4)
    summary = build(path, tmp_path / "out", emulation_inputs=x, tolerance=1e-6, quiet=True)
    assert summary["emulation"]["passed"], summary["emulation"]
    outside = {n["op"] for n in summary["nodes_outside_dataflow_partition"]}
    assert outside <= {"Mul", "Add", "Transpose"}


def test_transformer_graph_unchanged(transformer_model):
    path, _ = transformer_model
    model = ModelWrapper(str(path)).transform(InferShapes())
    after = model.transform(Conv1dToChannelsLast())
    assert after.model.SerializeToString() == model.model.SerializeToString()


def test_grouped_conv1d_fails_cleanly(tmp_path):
    """A grouped 1D conv is not lowered: a FinnFlowError naming the node and the fix (2D
    convolutions build: test_conv2d.py)."""

    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, return_quant_tensor=True)
            self.c = qnn.QuantConv1d(
                4, 4, 3, groups=2, weight_quant=Int8WeightPerTensorFloat, bias_quant=Int8Bias
            )

        def forward(self, x):
            return self.c(self.inp(x))

    model = Grouped()
    models.calibrate(model, (4, 4, 12))
    path = models.export(model, (1, 4, 12), tmp_path / "grouped.onnx")
    with pytest.raises(FinnFlowError, match=r"Conv '/c/Conv': 1D convolution .*groups=1"):
        build(path, tmp_path / "out", quiet=True)
