"""Per-channel weight scales (the quantiser math, plans, cost model, export and the FINN build)
and the inward straight-through clamp of the activation quantisers."""

from __future__ import annotations

import dataclasses
import json

import brevitas.nn as qnn
import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from typer.testing import CliRunner

from brevitas_apq.analysis import model_size_bits, size_summary
from brevitas_apq.cli import app
from brevitas_apq.export import export_qonnx_model, run_qonnx
from brevitas_apq.models import ModelConfig, TimeSeriesTransformer
from brevitas_apq.plans import BitPlan, PlanError
from brevitas_apq.quant import (
    SCHEME_QUANTIZERS,
    SQActQuant,
    SQBiasQuant,
    SQWeightQuant,
    UnsignedActQuant,
    mark_batch,
)
from brevitas_apq.quant.injectors import PerChannel


def weight_core(layer):
    return layer.weight_quant.tensor_quant


def levels(quant_weight) -> np.ndarray:
    """The integers of a quantised weight: ``w / scale + zero_point``."""
    q = quant_weight.value / quant_weight.scale + quant_weight.zero_point
    return q.detach().numpy()


weights = st.integers(1, 6).flatmap(
    lambda out: st.integers(1, 6).flatmap(
        lambda k: st.lists(
            st.floats(-8, 8, allow_nan=False, allow_subnormal=False, width=32),
            min_size=out * k,
            max_size=out * k,
        ).map(lambda v, out=out, k=k: torch.tensor(v).reshape(out, k))
    )
)


def linear_with(weight: torch.Tensor, scheme: str, bits: int) -> qnn.QuantLinear:
    out, k = weight.shape
    layer = qnn.QuantLinear(
        k,
        out,
        bias=False,
        weight_quant=SCHEME_QUANTIZERS[scheme].weight,
        weight_bit_width=bits,
        weight_scaling_per_output_channel=True,
    )
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


# --- the quantiser math ------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(w=weights, bits=st.integers(2, 8), scheme=st.sampled_from(["sq", "aq", "apq"]))
def test_one_scale_per_output_channel_and_values_on_the_grid(w, bits, scheme):
    layer = linear_with(w, scheme, bits)
    for mode in (True, False):  # training (parameters measured at every call) and eval
        layer.train(mode)
        qw = layer.quant_weight()
        assert tuple(qw.scale.shape) == (w.shape[0], 1)
        assert tuple(qw.zero_point.shape) == (w.shape[0], 1)
        q = levels(qw)
        np.testing.assert_allclose(q, np.round(q), atol=1e-3)
        core = weight_core(layer)
        assert q.min() >= float(core.min_int) - 1e-3 and q.max() <= float(core.max_int) + 1e-3
        # every channel on its own grid: the error is at most half of that channel's step
        err = (qw.value - w).abs().detach()
        assert torch.all(err <= 0.5 * qw.scale.detach() * (1 + 1e-4) + 1e-6)


@settings(max_examples=150, deadline=None)
@given(w=weights, bits=st.integers(2, 8))
def test_sq_per_channel_zero_point_is_zero_and_scale_is_each_rows_max(w, bits):
    qw = linear_with(w, "sq", bits).quant_weight()
    assert torch.all(qw.zero_point == 0)
    max_int = 2 ** (bits - 1) - 1  # signed narrow grid
    row_max = w.abs().amax(dim=1, keepdim=True)
    expected = torch.where(row_max > 0, row_max / max_int, qw.scale)  # all-zero rows: any scale
    torch.testing.assert_close(qw.scale.detach(), expected)


@settings(max_examples=100, deadline=None)
@given(w=weights, bits=st.integers(2, 8))
def test_aq_per_channel_spreads_each_row_over_the_whole_grid(w, bits):
    w = w - w.amin(dim=1, keepdim=True) + 0.5  # positive rows, each with its own range
    qw = linear_with(w, "aq", bits).quant_weight()
    # a positive row [lo, hi] is widened to [0, hi] and spread over the whole signed grid:
    # 0 at its bottom (zero point -2^(b-1)), the row's maximum at its top
    assert np.allclose(levels(qw).max(axis=1), 2 ** (bits - 1) - 1, atol=1e-3)
    assert torch.all(qw.zero_point == -(2 ** (bits - 1)))
    torch.testing.assert_close(
        qw.scale.detach(), w.amax(dim=1, keepdim=True) / (2**bits - 1), rtol=1e-5, atol=0
    )


def test_per_channel_is_per_output_channel_for_conv1d_and_the_fragment():
    torch.manual_seed(0)
    conv = qnn.QuantConv1d(
        3,
        5,
        4,
        weight_quant=SQWeightQuant,
        weight_bit_width=4,
        weight_scaling_per_output_channel=True,
    )
    qw = conv.quant_weight()
    assert tuple(qw.scale.shape) == (5, 1, 1)
    expected = conv.weight.detach().abs().amax(dim=(1, 2), keepdim=True) / 7
    torch.testing.assert_close(qw.scale.detach(), expected)

    class SQWeightPerChannelQuant(PerChannel, SQWeightQuant):
        pass

    layer = qnn.QuantLinear(4, 3, bias=False, weight_quant=SQWeightPerChannelQuant)
    assert tuple(layer.quant_weight().scale.shape) == (3, 1)
    assert weight_core(layer).channel_dim == 0
    default = qnn.QuantLinear(4, 3, bias=False, weight_quant=SQWeightQuant)
    assert default.quant_weight().scale.dim() == 0 and weight_core(default).channel_dim is None


def test_apq_decides_per_tensor_with_per_channel_scales():
    # Rows that are each one-sided (S = 1 per row) but a tensor symmetric about 0 (S = 0): the
    # decision follows the tensor, so SQ, with a scale per row.
    w = torch.tensor([[1.0, 2.0, 3.0], [-3.0, -2.0, -1.0]])
    layer = linear_with(w, "apq", 4)
    layer.train()
    qw = layer.quant_weight()
    core = weight_core(layer)
    assert core.scheme == "SQ" and float(core.symmetry) == 0.0
    assert torch.all(qw.zero_point == 0) and tuple(qw.scale.shape) == (2, 1)
    w2 = torch.tensor([[1.0, 2.0, 3.0], [0.5, 1.0, 4.0]])  # one-sided tensor: AQ
    layer = linear_with(w2, "apq", 4)
    layer.train()
    qw = layer.quant_weight()
    assert weight_core(layer).scheme == "AQ"
    # APQ weights keep the narrow grid [-7, 7]: 0 at its bottom
    assert torch.all(qw.zero_point == -7) and not torch.allclose(qw.scale[0], qw.scale[1])


@pytest.mark.parametrize("act", [SQActQuant, SCHEME_QUANTIZERS["aq"].act, UnsignedActQuant])
def test_activation_clamp_passes_the_gradient_of_clipped_values_inwards(act):
    from brevitas.core.function_wrapper import TensorClamp

    def grads(sign: float, **kwargs):
        quant = qnn.QuantIdentity(act_quant=act, bit_width=4, return_quant_tensor=False, **kwargs)
        quant(torch.linspace(0.0, 1.0, 11))  # calibrate the range to [0, 1]
        mark_batch()
        quant.eval()
        x = torch.tensor([-3.0, 0.5, 4.0], requires_grad=True)
        y = quant(x)
        assert float(y[0]) > -3.0 and float(y[2]) <= 1.0 + 1e-6  # the forward pass clamps
        (sign * y).sum().backward()
        return x.grad.tolist()

    # a descent step x - grad: above the range only a positive gradient leads back in, below
    # it only a negative one; inside, the gradient is the straight-through estimator's
    assert grads(1.0) == [0.0, 1.0, 1.0]
    assert grads(-1.0) == [-1.0, -1.0, 0.0]
    plain = grads(1.0, tensor_clamp_impl=TensorClamp)  # Brevitas's clamp stays selectable
    assert plain == [0.0, 1.0, 0.0]
    # weights keep the plain clamp (their range is the tensor's own, nothing lags)
    layer = qnn.QuantLinear(3, 2, bias=False, weight_quant=SQWeightQuant)
    assert isinstance(weight_core(layer).int_quant.tensor_clamp_impl, TensorClamp)


def test_per_channel_on_activations_and_biases_is_a_clear_error():
    with pytest.raises(ValueError, match="per-channel scales are for weights"):
        qnn.QuantIdentity(act_quant=SQActQuant, scaling_per_output_channel=True)
    with pytest.raises(ValueError, match="per-channel scales are for weights"):
        qnn.QuantLinear(
            4, 3, bias=True, bias_quant=SQBiasQuant, bias_scaling_per_output_channel=True
        )


# --- plans, model, cost model, CLI -------------------------------------------------------------


def per_channel(plan: BitPlan) -> BitPlan:
    layers = {
        name: dataclasses.replace(spec, weight=spec.weight.replace(per_channel=True))
        for name, spec in plan.layers.items()
    }
    return dataclasses.replace(plan, layers=layers)


def test_plan_per_channel_round_trips_and_reaches_the_weights(tmp_path):
    plan = per_channel(BitPlan.from_presets("mixed-4-8", "sq-apq"))
    path = plan.to_yaml(tmp_path / "plan.yaml")
    assert yaml.safe_load(path.read_text())["layers"]["L1"]["weight"]["per_channel"] is True
    assert "per_channel" not in yaml.safe_load(path.read_text())["layers"]["L1"]["bias"]
    again = BitPlan.from_yaml(path)
    assert again == plan and again.layers["L3"].weight.per_channel
    model = TimeSeriesTransformer(ModelConfig(n_features=5, d_model=8), again)
    assert tuple(model.L1.quant_weight().scale.shape) == (8, 1)
    assert tuple(model.L8.quant_weight().scale.shape) == (1, 1)
    plain = TimeSeriesTransformer(ModelConfig(n_features=5, d_model=8), BitPlan.from_presets())
    assert plain.L1.quant_weight().scale.dim() == 0
    # one override in a plan file
    (tmp_path / "one.yaml").write_text(
        "base: {bits: mixed-4-8, schemes: sq-apq}\nlayers:\n  L6: {weight: {per_channel: true}}\n"
    )
    one = BitPlan.from_yaml(tmp_path / "one.yaml")
    assert one.layers["L6"].weight.per_channel and not one.layers["L5"].weight.per_channel


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("layers:\n  L1: {bias: {per_channel: true}}\n", "per_channel is for weights only"),
        ("activations:\n  pool: {per_channel: true}\n", "per_channel is for weights only"),
        ("layers:\n  L1: {weight: {per_channel: 2}}\n", "per_channel=2 is invalid"),
    ],
)
def test_bad_per_channel_plans(tmp_path, text, message):
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(PlanError, match=message):
        BitPlan.from_yaml(tmp_path / "p.yaml")


def test_model_size_counts_a_scale_per_channel():
    cfg = ModelConfig(n_features=5, d_model=8)
    plan = BitPlan.from_presets("mixed-4-8", "all-sq")
    tensor = size_summary(TimeSeriesTransformer(cfg, plan))
    channel = size_summary(TimeSeriesTransformer(cfg, per_channel(plan)))
    # L1-L7 have 8, 8, 8, 8, 8, 32, 8 output channels, L8 one: 80 - 8 more scales of 32 bits
    assert channel["scale_bits"] - tensor["scale_bits"] == 32 * (8 * 6 + 32 - 7)
    assert channel["weight_bits"] == tensor["weight_bits"]
    assert model_size_bits(TimeSeriesTransformer(cfg, per_channel(plan))) == channel["total_bits"]


def test_cli_train_per_channel_weights(tmp_path, small_csv):
    out = tmp_path / "run"
    args = ["train", "--data", small_csv, "--target", "load", "--timestamp", "time"]
    args += ["--epochs", "2", "--qat-epochs", "1", "--max-batches", "10", "--no-progress"]
    args += ["--qat-lr", "1e-5"]  # a short QAT that keeps the float model's output range
    args += ["--plan", "all-8/all-aq", "--per-channel-weights", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    plan = yaml.safe_load((out / "plan.yaml").read_text())
    assert all(plan["layers"][f"L{i}"]["weight"]["per_channel"] for i in range(1, 9))
    assert json.loads((out / "metrics.json").read_text())["model_size_bits"] > 0


# --- export and FINN -----------------------------------------------------------------------------


class ConvLinear(nn.Module):
    """Input quantiser, a per-channel Conv1d, ReLU, a per-channel Linear head."""

    def __init__(self, scheme: str, bits: int = 4) -> None:
        super().__init__()
        weight = SCHEME_QUANTIZERS[scheme].weight
        common = {
            "weight_quant": weight,
            "weight_bit_width": bits,
            "weight_scaling_per_output_channel": True,
            "bias_quant": SQBiasQuant,
            "bias_bit_width": 8,
            "return_quant_tensor": False,
        }
        self.inp = qnn.QuantIdentity(act_quant=SQActQuant, bit_width=8, return_quant_tensor=False)
        self.conv = qnn.QuantConv1d(3, 6, 3, padding=1, bias=True, **common)
        self.relu = qnn.QuantReLU(
            act_quant=UnsignedActQuant, bit_width=4, return_quant_tensor=False
        )
        self.pool = qnn.QuantIdentity(act_quant=SQActQuant, bit_width=8, return_quant_tensor=False)
        self.fc = qnn.QuantLinear(
            6 * 8, 5, bias=True, output_quant=SQActQuant, output_bit_width=8, **common
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(self.inp(x).transpose(1, 2)))
        return self.fc(self.pool(x.flatten(1)))


def calibrated(scheme: str) -> ConvLinear:
    torch.manual_seed(0)
    model = ConvLinear(scheme)
    with torch.no_grad():  # skewed rows, each differently: APQ picks AQ (tensor S ~ 0.35) and
        for layer in (model.conv, model.fc):  # the zero points differ across channels
            w = layer.weight
            offsets = torch.linspace(0.05, 0.45, w.shape[0]).view(-1, *[1] * (w.dim() - 1))
            w.copy_((torch.rand_like(w) - offsets) / w[0].numel() ** 0.5)
    for _ in range(10):
        model(torch.randn(32, 8, 3))
        mark_batch()
    return model.eval()


@pytest.mark.parametrize("scheme", ["sq", "aq", "apq"])
def test_qonnx_export_of_per_channel_weights_is_exact(tmp_path, scheme):
    from qonnx.core.modelwrapper import ModelWrapper

    model = calibrated(scheme)
    x = torch.randn(16, 8, 3)
    path = export_qonnx_model(model, x[:1], tmp_path / "m.onnx")
    np.testing.assert_array_equal(run_qonnx(path, x), model(x).detach().numpy())
    wrapper = ModelWrapper(str(path))
    weight_quants = [
        n
        for n in wrapper.graph.node
        if n.op_type == "Quant" and wrapper.get_initializer(n.input[0]) is not None
        and wrapper.get_initializer(n.input[0]).ndim > 1
    ]  # fmt: skip
    shapes = sorted(wrapper.get_initializer(n.input[1]).shape for n in weight_quants)
    assert shapes == [(5, 1), (6, 1, 1)]
    zero_points = [wrapper.get_initializer(n.input[2]) for n in weight_quants]
    if scheme == "sq":
        assert all(np.all(z == 0) for z in zero_points)
    else:  # per-channel integer zero points, different across channels
        assert all(z.size > 1 and len(np.unique(z)) > 1 for z in zero_points)


def test_scalar_zero_zero_point_rewrites_only_all_zero_zero_points(tmp_path):
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper

    from finn_flow.transforms import ScalarZeroZeroPoint

    def zero_points(wrapper):
        return [
            wrapper.get_initializer(n.input[2])
            for n in wrapper.graph.node
            if n.op_type == "Quant" and wrapper.get_initializer(n.input[0]) is not None
            and wrapper.get_initializer(n.input[0]).ndim > 1
        ]  # fmt: skip

    x = torch.randn(4, 8, 3)
    for scheme, expect_change in (("sq", True), ("aq", False)):
        model = calibrated(scheme)
        path = export_qonnx_model(model, x[:1], tmp_path / f"{scheme}.onnx")
        wrapper, changed = ScalarZeroZeroPoint().apply(ModelWrapper(str(path)))
        assert changed is expect_change
        if scheme == "sq":
            assert all(z.shape == () and z == 0 for z in zero_points(wrapper))
        else:
            assert all(z.size > 1 for z in zero_points(wrapper))
        wrapper.save(str(tmp_path / "rewritten.onnx"))
        np.testing.assert_array_equal(
            run_qonnx(tmp_path / "rewritten.onnx", x), model(x).detach().numpy()
        )
        _, again = ScalarZeroZeroPoint().apply(wrapper)
        assert again is False


@pytest.mark.finn
@pytest.mark.parametrize("scheme", ["sq", "aq"])
def test_per_channel_model_builds_with_finn_and_emulates_exactly(tmp_path, scheme):
    pytest.importorskip("finn")
    from finn_flow.build import build

    model = calibrated(scheme)
    x = torch.randn(4, 8, 3)
    path = export_qonnx_model(model, x[:1], tmp_path / "m.onnx")
    summary = build(path, tmp_path / "finn", emulation_inputs=x.numpy(), tolerance=1e-6, quiet=True)
    assert summary["emulation"]["passed"] and summary["emulation"]["max_abs_diff"] == 0.0
    assert {n["op"] for n in summary["nodes_outside_dataflow_partition"]} <= {"Mul", "Add"}
    np.testing.assert_array_equal(
        np.load(tmp_path / "finn" / "verification_output" / "emulation_output.npy").reshape(-1),
        model(x).detach().numpy().reshape(-1),
    )
