"""Tests of the time-series Transformer, float and quantised."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from qonnx.core.modelwrapper import ModelWrapper

from brevitas_apq.export import export_qonnx_model, run_qonnx
from brevitas_apq.models import ModelConfig, TimeSeriesTransformer, sinusoidal_encoding
from brevitas_apq.plans import LAYERS, BitPlan
from brevitas_apq.quant import iter_quantizers, mark_batch, scheme_decisions


def calibrate(model, n_features=5, steps=20):
    """Some mini-batches of statistics (a few steps leave rational scale ratios between
    quantisers, which make exact rounding ties, and so one-LSB torch/onnx differences, common)."""
    torch.manual_seed(1)
    model.train()
    for _ in range(steps):
        model(torch.randn(16, 24, n_features) * (1 + torch.rand(1)))
        mark_batch()
    return model.eval()


def test_float_model_has_the_papers_eight_linear_layers():
    model = TimeSeriesTransformer(ModelConfig(n_features=5))
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert linears == list(LAYERS)
    assert (model.L1.in_features, model.L1.out_features) == (5, 16)
    assert (model.L6.out_features, model.L7.in_features, model.L8.out_features) == (64, 64, 1)
    assert model(torch.randn(3, 24, 5)).shape == (3,)


def test_quantised_model_loads_float_weights_and_has_every_quantiser():
    cfg = ModelConfig(n_features=5)
    float_model = TimeSeriesTransformer(cfg)
    plan = BitPlan.from_presets("mixed-4-8", "sq-apq")
    model = TimeSeriesTransformer(cfg, plan)
    model.load_float_weights(float_model)
    torch.testing.assert_close(model.L3.weight, float_model.L3.weight)
    names = {name for name, _ in iter_quantizers(model)}
    # 8 layers x (weight, bias, output) + the 11 activation quantisers
    assert len(names) == 8 * 3 + 11
    assert model.L8.weight_quant.tensor_quant.bit_width == 8
    assert model.L1.weight_quant.tensor_quant.bit_width == 4


@pytest.mark.parametrize("training", [True, False])
def test_adds_quantise_both_inputs_with_one_scale(training):
    """Both inputs of each add (positional encoding, the two residuals) go through one shared
    quantiser instance: in a forward pass it is called twice and gives both the same scale and
    zero point (after calibration, in training and in eval)."""
    model = TimeSeriesTransformer(ModelConfig(n_features=5), BitPlan.from_presets())
    calibrate(model)
    model.train(training)
    calls: dict[str, list[tuple[float, float]]] = {}
    hooks = []
    for name in ("pos_quant", "res1_quant", "res2_quant"):
        core = dict(iter_quantizers(getattr(model, name)))["act_quant"]

        def record(module, args, out, name=name):
            calls.setdefault(name, []).append((float(out[1]), float(out[2])))

        hooks.append(core.register_forward_hook(record))
    model(torch.randn(8, 24, 5) * 3)  # a larger range than calibration: no new scale mid-pass
    for hook in hooks:
        hook.remove()
    assert set(calls) == {"pos_quant", "res1_quant", "res2_quant"}
    for name, pairs in calls.items():
        assert len(pairs) == 2 and pairs[0] == pairs[1], (name, pairs)


def reference_attention(model, h: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of a float model written head by head (slices, not reshapes)."""
    heads = model.config.n_heads
    dh = model.config.d_model // heads
    q, k, v = model.L2(h), model.L3(h), model.L4(h)
    out = []
    for i in range(heads):
        cols = slice(i * dh, (i + 1) * dh)
        scores = q[..., cols] @ k[..., cols].transpose(-2, -1) / math.sqrt(dh)
        out.append(torch.softmax(scores, dim=-1) @ v[..., cols])
    return model.L5(torch.cat(out, dim=-1))


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_multi_head_attention_values(heads):
    """The float model's attention equals attention computed head by head; the quantised
    model gives one finite forecast per window."""
    torch.manual_seed(heads)
    model = TimeSeriesTransformer(ModelConfig(n_features=3, n_heads=heads))
    h = torch.randn(2, 24, 16)
    with torch.no_grad():
        torch.testing.assert_close(model._attention(h), reference_attention(model, h))
    if heads > 1:  # the heads are really separate: one head over all columns differs
        single = TimeSeriesTransformer(ModelConfig(n_features=3, n_heads=1))
        single.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert not torch.allclose(single._attention(h), model._attention(h))
    quant = TimeSeriesTransformer(ModelConfig(n_features=3, n_heads=heads), BitPlan.from_presets())
    quant.train()
    out = quant(torch.randn(2, 24, 3))
    assert out.shape == (2,) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize(("bits", "schemes"), [("mixed-4-8", "sq-apq"), ("all-4", "all-aq")])
def test_quantised_transformer_exports_and_matches_qonnx(tmp_path, bits, schemes):
    model = TimeSeriesTransformer(ModelConfig(n_features=5), BitPlan.from_presets(bits, schemes))
    calibrate(model)
    x = torch.randn(32, 24, 5)
    expected = model(x).detach().numpy()
    path = export_qonnx_model(model, x[:1], tmp_path / "model.onnx")
    got = run_qonnx(path, x).reshape(-1)
    assert np.abs(got - expected).max() <= 1e-5
    graph = ModelWrapper(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"Quant", "MatMul", "Softmax"} <= ops
    zero_points = [
        float(ModelWrapper(str(path)).get_initializer(n.input[2]))
        for n in graph.node
        if n.op_type == "Quant"
    ]
    if schemes == "all-aq":
        assert any(z != 0 for z in zero_points)
    decisions = scheme_decisions(model)
    if schemes == "sq-apq":
        assert all(decisions[f"{layer}.weight_quant"] == "SQ" for layer in LAYERS)


def test_bad_model_config_is_a_clear_error():
    with pytest.raises(ValueError, match="d_model=16 is not divisible by n_heads=3"):
        ModelConfig(n_features=4, n_heads=3)
    with pytest.raises(ValueError, match="norm='group'"):
        ModelConfig(n_features=4, norm="group")
    with pytest.raises(ValueError, match="n_features=0"):
        ModelConfig(n_features=0)


def test_loading_float_weights_of_another_shape_fails():
    a = TimeSeriesTransformer(ModelConfig(n_features=5))
    b = TimeSeriesTransformer(ModelConfig(n_features=6), BitPlan.from_presets())
    with pytest.raises(ValueError, match="same shape"):
        b.load_float_weights(a)


@pytest.mark.parametrize("d_model", [16, 7])
def test_positional_encoding_is_sinusoidal(d_model):
    """PE[t, 2i] = sin(t / 10000^(2i/d)), PE[t, 2i+1] = cos(t / 10000^(2i/d)) (Vaswani et al.)."""
    pe = sinusoidal_encoding(24, d_model).double().numpy()
    t = np.arange(24)[:, None]
    i = np.arange(d_model)[None, :]
    angle = t / 10000.0 ** ((i - i % 2) / d_model)
    expected = np.where(i % 2 == 0, np.sin(angle), np.cos(angle))
    np.testing.assert_allclose(pe, expected, atol=2e-5)
