"""brevitas_apq.quantize: module-name plans on models this project did not write, exported
exactly; Brevitas models get their quantisers swapped; the Transformer's presets as plans."""

from __future__ import annotations

import brevitas.nn as qnn
import numpy as np
import pytest
import torch
from brevitas.quant import (
    Int8ActPerTensorFloat,
    Int8ActPerTensorFloatMinMaxInit,
    Int8WeightPerTensorFloat,
)
from torch import nn

import brevitas_apq
from brevitas_apq.export import export_qonnx_model, run_qonnx
from brevitas_apq.models import ModelConfig, TimeSeriesTransformer
from brevitas_apq.module_plans import ModulePlan
from brevitas_apq.plans import BitPlan, PlanError
from brevitas_apq.quant import AdaptiveIntQuant, UnsignedActQuant, iter_quantizers

SCHEMES = ("sq", "aq", "apq")


class MLP(nn.Module):
    """An MLP written with torch.nn only."""

    def __init__(self, n_in: int = 6) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(n_in, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)).squeeze(-1)


class ConvNet(nn.Module):
    """A small 1D-conv regressor written with torch.nn only; input (batch, time, features)."""

    def __init__(self, n_features: int = 3, window: int = 16, channels: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(n_features, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, padding=1, groups=2),
            nn.ReLU(),
        )
        self.flat = nn.Identity()  # where the head's input quantiser goes
        self.head = nn.Linear(channels * window, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.transpose(1, 2))
        return self.head(self.flat(h.flatten(1))).squeeze(-1)


def mlp_plan(scheme: str) -> ModulePlan:
    return ModulePlan.from_dict(
        {
            "name": f"mlp-{scheme}",
            "defaults": {"scheme": scheme},
            "modules": {
                "encoder.0": {"input": 8, "weight": 4, "bias": 8},
                "encoder.*": {"weight": 4, "bias": 8, "act": {"bits": 4, "scheme": "sq"}},
                "head": {"weight": 8, "bias": 8, "output": 8},
            },
        }
    )


def conv_plan(scheme: str) -> ModulePlan:
    return ModulePlan.from_dict(
        {
            "defaults": {"scheme": scheme},
            "modules": {
                "features.0": {"input": 8, "weight": 4, "bias": 8},
                "features.2": {"weight": 4, "bias": 8},
                "features.[13]": {"act": {"bits": 4, "scheme": "sq"}},
                "flat": {"act": 8},
                "head": {"weight": 8, "bias": 8, "output": 8},
            },
        }
    )


CASES = {"mlp": (MLP, mlp_plan, (6,)), "conv": (ConvNet, conv_plan, (16, 3))}

#: What each case's plan puts where: module -> {role: (bits, scheme or "unsigned")}.
EXPECTED = {
    "mlp": {
        "encoder.0": {"input": 8, "weight": 4, "bias": 8},
        "encoder.1": {"act": "unsigned4"},
        "encoder.2": {"weight": 4, "bias": 8},
        "encoder.3": {"act": "unsigned4"},
        "head": {"weight": 8, "bias": 8, "output": 8},
    },
    "conv": {
        "features.0": {"input": 8, "weight": 4, "bias": 8},
        "features.1": {"act": "unsigned4"},
        "features.2": {"weight": 4, "bias": 8},
        "features.3": {"act": "unsigned4"},
        "flat": {"act": 8},
        "head": {"weight": 8, "bias": 8, "output": 8},
    },
}


def quantiser(model: nn.Module, module: str, role: str) -> AdaptiveIntQuant | None:
    proxy = getattr(model.get_submodule(module), f"{role}_quant")
    cores = [m for m in proxy.modules() if isinstance(m, AdaptiveIntQuant)]
    return cores[0] if cores else None


def train_briefly(model: nn.Module, shape: tuple[int, ...], steps: int = 20) -> torch.Tensor:
    """A few Adam steps on a learnable target; returns the data (every step ends an APQ
    mini-batch, so APQ quantisers decide)."""
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(256, *shape, generator=gen) * 2 - 0.5
    y = X.reshape(256, -1)[:, -1] - X.reshape(256, -1)[:, 0]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, 256, (32,), generator=gen)
        loss = nn.functional.mse_loss(model(X[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return X


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("case", list(CASES))
def test_the_plans_quantisers_land_on_the_right_modules(case, scheme):
    make, make_plan, _ = CASES[case]
    torch.manual_seed(0)
    model = make()
    q = brevitas_apq.quantize(model, make_plan(scheme))
    # the float model is untouched; the quantised one is Brevitas with the same float weights
    assert not any(isinstance(m, qnn.QuantLinear) for m in model.modules())
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv1d):
            assert torch.equal(q.get_submodule(name).weight, module.weight)
            assert type(q.get_submodule(name)).__name__ == "Quant" + type(module).__name__
    found = {}
    for name, roles in EXPECTED[case].items():
        for role, want in roles.items():
            core = quantiser(q, name, role)
            assert core is not None, f"{name}.{role}_quant"
            found[f"{name}.{role}_quant"] = core
            if want == "unsigned4":  # after a ReLU: unsigned grid, zero point 0
                assert int(core.bit_width) == 4 and int(core.min_int) == 0
                assert isinstance(q.get_submodule(name), qnn.QuantReLU)
                assert q.get_submodule(name).act_quant.quant_injector.__name__.startswith(
                    UnsignedActQuant.__name__
                )
            else:
                assert (int(core.bit_width), core.quant_scheme) == (want, scheme)
    # nothing else is quantised: exactly the plan's quantisers, under the names of the plan
    assert {name for name, _ in iter_quantizers(q)} == set(found)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("case", list(CASES))
def test_quantised_float_models_export_exactly(tmp_path, case, scheme):
    make, make_plan, shape = CASES[case]
    torch.manual_seed(0)
    q = brevitas_apq.quantize(make(), make_plan(scheme))
    X = train_briefly(q, shape)
    q.eval()
    # real-ish inputs, and inputs on rounding ties of the input quantiser: (k + 1/2 - z) s
    first = "encoder.0" if case == "mlp" else "features.0"
    core = quantiser(q, first, "input")
    s, z = core.scale_zero_point(core.running_min, core.running_max)
    k = torch.randint(int(core.min_int), int(core.max_int), (16, *shape))
    ties = (k + 0.5 - z) * s
    on_tie = (ties / s + z) - torch.floor(ties / s + z) == 0.5
    assert on_tie.float().mean() > 0.5  # most land on a tie in float32 too
    check = torch.cat([X[:16], ties])
    path = export_qonnx_model(q, check[:1], tmp_path / "model.onnx")
    with torch.no_grad():
        expected = q(check).numpy()
    got = run_qonnx(path, check).reshape(-1)
    np.testing.assert_array_equal(got, expected)
    if scheme != "sq":  # the zero points are really there
        decisions = {n: c.scheme for n, c in iter_quantizers(q)}
        assert "AQ" in decisions.values()


def test_brevitas_models_get_their_quantisers_swapped():
    """A model of brevitas.nn layers with Brevitas's stock quantisers: the plan's roles get this
    project's injectors, the other quantisers keep theirs (and their learned scale), the float
    weights stay, and a module shared under two names stays shared."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, return_quant_tensor=False)
    model.fc = qnn.QuantLinear(
        4,
        3,
        bias=True,
        weight_quant=Int8WeightPerTensorFloat,
        input_quant=Int8ActPerTensorFloatMinMaxInit,  # a learned scale, in the state dict
        input_min_val=-1.0,
        input_max_val=1.0,
        return_quant_tensor=False,
    )
    model.act = qnn.QuantReLU(return_quant_tensor=False)
    model.again = model.act  # the same module under a second name
    with torch.no_grad():
        model.fc.input_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl.value.fill_(
            0.37
        )
    plan = ModulePlan.from_dict(
        {"modules": {"fc": {"weight": {"bits": 4, "scheme": "aq"}}, "act": {"act": 6}}}
    )
    q = brevitas_apq.quantize(model, plan)
    assert torch.equal(q.fc.weight, model.fc.weight) and torch.equal(q.fc.bias, model.fc.bias)
    assert quantiser(q, "fc", "weight").quant_scheme == "aq"
    assert int(quantiser(q, "fc", "weight").bit_width) == 4
    kept = q.fc.input_quant.fused_activation_quant_proxy.tensor_quant
    assert not isinstance(kept, AdaptiveIntQuant)  # Brevitas's own, with its learned scale
    assert float(kept.scaling_impl.value.detach()) == pytest.approx(0.37)
    assert q.act is q.again and int(quantiser(q, "act", "act").bit_width) == 6
    assert int(quantiser(q, "act", "act").min_int) == 0  # a ReLU: unsigned
    assert isinstance(q.inp.act_quant.fused_activation_quant_proxy.tensor_quant, nn.Module)
    assert quantiser(q, "inp", "act") is None  # not in the plan: untouched
    assert q.inp is not model.inp  # a copy; inplace=True changes the model itself
    assert brevitas_apq.quantize(model, plan, inplace=True) is model
    assert quantiser(model, "fc", "weight").quant_scheme == "aq"


@pytest.mark.parametrize("preset", ["mixed-4-8/sq-apq", "all-8/all-aq"])
def test_the_transformers_presets_are_module_plans(preset):
    """quantize(float Transformer, BitPlan) builds the model TimeSeriesTransformer(config,
    plan) builds; and swapping a quantised Transformer to another preset equals building it."""
    config = ModelConfig(n_features=3, window=6)
    plan = BitPlan.parse(preset)
    torch.manual_seed(0)
    float_model = TimeSeriesTransformer(config)
    built = TimeSeriesTransformer(config, plan)
    built.load_float_weights(float_model)
    converted = brevitas_apq.quantize(float_model, plan)
    other = BitPlan.parse("all-4/all-apq")
    swapped = brevitas_apq.quantize(built, other)
    built_other = TimeSeriesTransformer(config, other)
    built_other.load_float_weights(float_model)
    x = torch.randn(8, 6, 3)
    for a, b in ((built, converted), (built_other, swapped)):
        assert a.state_dict().keys() == b.state_dict().keys()
        for m in (a, b):
            m.train()
            m(x)
            m.eval()
        with torch.no_grad():
            assert torch.equal(a(x), b(x))
        assert {n: c.scheme for n, c in iter_quantizers(a)} == {
            n: c.scheme for n, c in iter_quantizers(b)
        }


def test_plans_are_checked_before_the_model_changes(tmp_path):
    model = MLP()
    bad = ModulePlan.from_dict({"modules": {"head": {"weight": 4}, "decoder.*": {"weight": 4}}})
    with pytest.raises(PlanError, match=r"'decoder.\*' matches no module"):
        brevitas_apq.quantize(model, bad, inplace=True)
    assert isinstance(model.head, nn.Linear) and not isinstance(model.head, qnn.QuantLinear)
    with pytest.raises(TypeError, match=r"needs a torch\.nn\.Module"):
        brevitas_apq.quantize(lambda x: x, bad)
    path = mlp_plan("apq").to_yaml(tmp_path / "plan.yaml")
    q = brevitas_apq.quantize(model, path)  # a plan file works too
    assert quantiser(q, "head", "output").quant_scheme == "apq"


def test_the_plans_decision_rule_reaches_every_quantiser():
    plan = ModulePlan.from_dict(
        {**mlp_plan("apq").to_dict(), "decision": {"rule": "hysteresis", "band": 0.3}}
    )
    q = brevitas_apq.quantize(MLP(), plan)
    cores = [c for _, c in iter_quantizers(q)]
    assert cores and all((c.decision_rule, c.decision_band) == ("hysteresis", 0.3) for c in cores)


def test_per_channel_weights_from_a_plan():
    plan = ModulePlan.from_dict(
        {
            "defaults": {"scheme": "aq", "per_channel": True},  # per_channel: weights only
            "modules": {"encoder.*": {"weight": 4, "bias": 8, "act": 4}, "head": {"weight": 8}},
        }
    )
    q = brevitas_apq.quantize(MLP(), plan)
    assert tuple(q.encoder[0].quant_weight().scale.shape) == (16, 1)
    assert quantiser(q, "encoder.0", "bias").channel_dim is None
    assert tuple(q.head.quant_weight().scale.shape) == (1, 1)  # one output channel
