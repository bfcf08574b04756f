"""Tests of bit plans: presets, YAML round trip, overrides and loud failures."""

from __future__ import annotations

import pytest

from brevitas_apq.plans import (
    ACTIVATIONS,
    BIT_PRESETS,
    LAYERS,
    SCHEME_PRESETS,
    BitPlan,
    PlanError,
)
from brevitas_apq.quant import APQActQuant, SQWeightQuant, UnsignedActQuant


def test_mixed_4_8_sq_apq_is_the_papers_proposal():
    plan = BitPlan.from_presets("mixed-4-8", "sq-apq")
    for name in LAYERS:
        spec = plan.layers[name]
        want = 8 if name == "L8" else 4
        assert (spec.weight.bits, spec.bias.bits, spec.output.bits) == (want, want, want)
        assert (spec.weight.scheme, spec.bias.scheme, spec.output.scheme) == ("sq", "sq", "apq")
    assert plan.activations["scores"].scheme == "apq"
    assert plan.activations["softmax"].scheme == "sq"  # unsigned by construction
    # the extra activation quantisers of the integer-deployable model stay at 8 bits
    assert all(spec.bits == 8 for spec in plan.activations.values())
    assert BitPlan.from_presets("all-4", "all-sq").activations["res1"].bits == 8


@pytest.mark.parametrize("bits", BIT_PRESETS)
@pytest.mark.parametrize("schemes", SCHEME_PRESETS)
def test_every_preset_combination_round_trips_through_yaml(tmp_path, bits, schemes):
    plan = BitPlan.from_presets(bits, schemes, threshold=0.2)
    path = plan.to_yaml(tmp_path / "plan.yaml")
    assert BitPlan.from_yaml(path) == plan


def test_scheme_presets_assign_weights_and_activations():
    get = BitPlan.from_presets
    assert get("all-8", "sq-aq").layers["L3"].weight.scheme == "sq"
    assert get("all-8", "sq-aq").layers["L3"].output.scheme == "aq"
    assert get("all-8", "all-aq").layers["L3"].bias.scheme == "aq"
    assert get("all-8", "all-apq").layers["L3"].weight.scheme == "apq"
    assert get("all-8", "all-sq").activations["res1"].scheme == "sq"


def test_yaml_base_with_overrides(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(
        "base: {bits: all-4, schemes: sq-apq, threshold: 0.05}\n"
        "layers:\n  L1: {weight: {bits: 8}}\n"
        "activations:\n  scores: {bits: 6, scheme: aq}\n"
    )
    plan = BitPlan.from_yaml(path)
    assert plan.layers["L1"].weight.bits == 8 and plan.layers["L1"].bias.bits == 4
    assert plan.activations["scores"].bits == 6 and plan.activations["scores"].scheme == "aq"
    assert plan.activations["res1"].threshold == 0.05


def test_parse_command_line_forms(tmp_path):
    assert BitPlan.parse("all-4/sq-aq") == BitPlan.from_presets("all-4", "sq-aq")
    assert BitPlan.parse("all-4", schemes="all-aq") == BitPlan.from_presets("all-4", "all-aq")
    path = BitPlan.from_presets("all-8", "all-sq").to_yaml(tmp_path / "p.yaml")
    assert BitPlan.parse(str(path)) == BitPlan.from_presets("all-8", "all-sq")


def test_linear_and_act_kwargs_pick_quantisers():
    plan = BitPlan.from_presets("mixed-4-8", "sq-apq")
    kw = plan.linear_kwargs("L8")
    assert kw["weight_quant"] is SQWeightQuant and kw["weight_bit_width"] == 8
    assert kw["output_quant"] is APQActQuant
    assert plan.act_kwargs("softmax")["act_quant"] is UnsignedActQuant


def test_with_layer_bits():
    plan = BitPlan.from_presets("all-8", "all-sq").with_layer_bits("L3", 4)
    assert plan.layers["L3"].weight.bits == 4 and plan.layers["L2"].weight.bits == 8


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("layers:\n  L9: {weight: {bits: 4}}\n", r"unknown layer 'L9'; valid: L1, L2"),
        ("layers:\n  L1: {weights: {bits: 4}}\n", r"unknown role .*'weights'; valid: weight"),
        ("layers:\n  L1: {weight: {bits: 17}}\n", r"L1.weight: bits=17 .*2 to 16"),
        ("layers:\n  L1: {weight: {scheme: xq}}\n", r"scheme='xq' is unknown; allowed: sq, aq"),
        ("activations:\n  attn: {bits: 4}\n", r"unknown activation 'attn'; valid: input, pos"),
        ("activations:\n  softmax: {scheme: aq}\n", r"'softmax' always uses an unsigned grid"),
        ("base: {bits: all-3}\n", r"unknown bit preset 'all-3'; valid: all-8, all-4, mixed-4-8"),
        ("base: {schemes: aq}\n", r"unknown scheme preset 'aq'; valid: all-sq"),
        ("bitz: 3\n", r"unknown plan key 'bitz'"),
        ("activations:\n  res1: {threshold: -1}\n", r"threshold=-1 is invalid"),
        ("[unclosed\n", r"not valid YAML"),
    ],
)
def test_bad_plans_fail_with_the_valid_choices(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PlanError, match=message):
        BitPlan.from_yaml(path)


def test_missing_plan_file():
    with pytest.raises(PlanError, match="neither a preset nor an existing YAML file"):
        BitPlan.parse("no/such/plan.yaml")


def test_every_activation_and_layer_is_covered():
    plan = BitPlan.from_presets()
    assert tuple(plan.layers) == LAYERS and tuple(plan.activations) == ACTIVATIONS


def test_decision_rule_round_trips_and_reaches_every_quantiser(tmp_path):
    from brevitas_apq.models import ModelConfig, TimeSeriesTransformer
    from brevitas_apq.plans import DecisionRule
    from brevitas_apq.quant import iter_quantizers

    rule = DecisionRule("hysteresis", band=0.3, momentum=0.05)
    plan = BitPlan.from_presets("mixed-4-8", "all-apq", decision=rule)
    assert BitPlan.from_yaml(plan.to_yaml(tmp_path / "p.yaml")) == plan
    assert BitPlan.parse("all-8/sq-apq", decision=DecisionRule("paper")).decision.rule == "paper"
    assert BitPlan.parse(str(tmp_path / "p.yaml")).decision == rule
    model = TimeSeriesTransformer(ModelConfig(n_features=3, window=8), plan)
    cores = [core for _, core in iter_quantizers(model)]
    assert cores and all(
        (c.decision_rule, c.decision_band, c.decision_momentum) == ("hysteresis", 0.3, 0.05)
        for c in cores
    )


def test_plan_files_without_a_decision_rule_load_with_the_default(tmp_path):
    from brevitas_apq.plans import DecisionRule

    path = tmp_path / "old.yaml"
    path.write_text("base: {bits: all-8, schemes: sq-apq}\n")
    assert BitPlan.from_yaml(path).decision == DecisionRule()
    old = BitPlan.from_presets("all-8", "sq-apq").to_dict()
    del old["decision"]  # the explicit form written before the rule existed
    assert BitPlan.from_dict(old).decision == DecisionRule()
    path.write_text("base: {bits: all-8}\ndecision: paper\n")
    assert BitPlan.from_yaml(path).decision.rule == "paper"


@pytest.mark.parametrize(
    "text, message",
    [
        ("decision: {rule: vote}", "decision: rule='vote' is unknown"),
        ("decision: {band: 1.5}", "decision: band=1.5 is invalid"),
        ("decision: {rule: paper, window: 3}", "unknown decision key 'window'"),
    ],
)
def test_bad_decision_rules_fail_loudly(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(PlanError, match=message):
        BitPlan.from_yaml(path)
