"""Tests of bit plans: presets, YAML round trip, overrides and loud failures."""

from __future__ import annotations

import pytest
import torch

from brevitas_apq.module_plans import ModulePlan, ModuleSpec
from brevitas_apq.plans import (
    ACTIVATIONS,
    BIT_PRESETS,
    LAYERS,
    SCHEME_PRESETS,
    BitPlan,
    PlanError,
    QuantSpec,
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


# --- module-name plans ------------------------------------------------------------------------


class Net(torch.nn.Module):
    """A model this project did not write: convolutions, ReLUs, pooling and two heads."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv1d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(8, 8, 3)
        )
        self.head = nn.Linear(8, 1)
        self.head_aux = nn.Linear(8, 1, bias=False)

    def forward(self, x):
        h = self.features(x).mean(-1)
        return self.head(h) + self.head_aux(h)


def module_plan(modules: dict, **extra) -> ModulePlan:
    return ModulePlan.from_dict({"modules": modules, **extra})


def test_module_plan_resolves_exact_names_and_globs():
    plan = module_plan(
        {
            "features.*": {"weight": 4, "bias": 8, "act": {"bits": 4}},
            "features.0": {"input": {"bits": 8, "scheme": "apq"}, "weight": 8, "bias": 8},
            "head*": {"weight": {"bits": 8, "scheme": "aq"}, "bias": 8},
        }
    )
    got = plan.resolve(Net())
    assert list(got) == ["features.0", "features.1", "features.3", "head", "head_aux"]
    assert got["features.0"].roles == ("weight", "bias", "input")  # the exact name, entirely
    assert got["features.0"].weight.bits == 8 and got["features.0"].input.scheme == "apq"
    assert got["features.1"].roles == ("act",)  # a ReLU takes act from the glob's entry
    assert got["features.3"].roles == ("weight", "bias") and got["features.3"].weight.bits == 4
    assert got["head_aux"].roles == ("weight",)  # no bias: the bias role is skipped
    assert got["head"].weight == QuantSpec(8, "aq")


def test_overlap_rule_most_specific_pattern_wins():
    net = Net()
    spec = {"weight": 4}
    # the longer literal prefix wins over a shorter one, whatever the order in the file
    for order in (["*", "head*"], ["head*", "*"]):
        plan = module_plan({p: {"weight": 8 if p == "head*" else 4} for p in order})
        plan = ModulePlan({**plan.modules, "features.1": ModuleSpec(act=QuantSpec(4))})
        got = plan.resolve(net)
        assert got["head"].weight.bits == got["head_aux"].weight.bits == 8
        assert got["features.0"].weight.bits == 4
    # then more literal characters; an exact name beats everything
    plan = module_plan(
        {"f*.3": {"weight": 6}, "f*": {"weight": 5}, "features.0": {"weight": 7}, "h*": spec}
        | {"features.1": {"act": 4}}
    )
    got = plan.resolve(net)
    assert [got[n].weight.bits for n in ("features.0", "features.3")] == [7, 6]
    # a tie is an error, naming both patterns
    tie = {"he*d": spec, "he?d": spec, "*": spec, "features.1": {"act": 4}}
    with pytest.raises(PlanError, match=r"patterns 'he\*d' and 'he\?d' match module 'head'"):
        module_plan(tie).resolve(Net())


@pytest.mark.parametrize(
    ("modules", "message"),
    [
        ({"feature.0": {"weight": 4}}, r"'feature.0' matches no module .* features.0"),
        ({"encoder.*.q_proj": {"weight": 4}}, r"'encoder.\*.q_proj' matches no module"),
        ({"features.2": {"act": 4}}, r"matches only modules a plan cannot quantise: .*MaxPool1d"),
        ({"features.1": {"weight": 4}}, r"'features.1' \(ReLU\) but gives it none of its roles"),
        ({"head*": {"weight": 4, "act": 4}}, r"'head\*' gives act, but no module it applies to"),
        ({"head": {"output": {"bits": 4, "scheme": "aq"}, "act": 4}}, r"gives act, but no"),
    ],
)
def test_plans_that_do_not_fit_the_model_fail_loudly(modules, message):
    with pytest.raises(PlanError, match=message):
        module_plan(modules).resolve(Net())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("modules: {head: {weight: {bits: 17}}}", r"module 'head'.weight: bits=17 .*2 to 16"),
        ("modules: {head: {weight: {bits: 4, scheme: xq}}}", r"scheme='xq' is unknown"),
        ("modules: {head: {weights: 4}}", r"unknown role of module 'head' 'weights'"),
        ("modules: {head: {weight: {scheme: aq}}}", r"head'.weight: no bits"),
        ("modules: {head: {weight: {bits: 4, size: 2}}}", r"unknown key .* 'size'"),
        ("modules: {head: {}}", r"gives no quantiser"),
        ("modules: {r: {act: {bits: 4, scheme: aq}, unsigned: true}}", r"zero point 0"),
        ("modules: {r: {weight: 4, unsigned: true}}", r"unsigned is for the act quantiser"),
        ("modules: {r: {act: 4, unsigned: 1}}", r"unsigned=1 is invalid"),
        ("modules: {h: {output: {bits: 4, per_channel: true}}}", r"per_channel is for weights"),
        ("modules: {}", r"modules: expected a mapping"),
        ("defaults: {scheme: zq}\nmodules: {h: {weight: 4}}", r"defaults: scheme='zq'"),
        ("layers: {}\nmodules: {h: {weight: 4}}", r"unknown plan key 'layers'"),
    ],
)
def test_bad_module_plans_fail_with_the_valid_choices(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(PlanError, match=message):
        ModulePlan.from_yaml(path)


def test_module_plan_yaml_round_trip_and_defaults(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(
        "name: my-net\n"
        "defaults: {scheme: apq, threshold: 0.2}\n"
        "modules:\n"
        "  'features.*': {weight: {bits: 4, scheme: sq}, bias: 8, act: {bits: 4, scheme: sq},\n"
        "                 unsigned: true}\n"
        "  head: {weight: {bits: 8, per_channel: true}, output: {bits: 8, scheme: aq}}\n"
        "decision: {rule: hysteresis, band: 0.3}\n"
    )
    plan = ModulePlan.from_yaml(path)
    glob = plan.modules["features.*"]
    assert glob.bias == QuantSpec(8, "apq", 0.2) and glob.weight == QuantSpec(4, "sq", 0.2)
    assert glob.act == QuantSpec(4, "sq", 0.2) and glob.unsigned is True
    assert plan.modules["head"].weight.per_channel and plan.decision.band == 0.3
    again = ModulePlan.from_yaml(plan.to_yaml(tmp_path / "again.yaml"))
    assert again == plan and again.name == "my-net"


def test_unsigned_act_needs_scheme_sq(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("defaults: {scheme: apq}\nmodules: {'features.1': {act: 4, unsigned: true}}\n")
    with pytest.raises(PlanError, match="scheme 'apq' is not allowed there"):
        ModulePlan.from_yaml(path)


def test_bit_plans_become_module_plans_of_the_transformer():
    plan = BitPlan.from_presets("mixed-4-8", "sq-apq")
    modules = plan.to_module_plan()
    assert modules.modules["L8"].weight.bits == 8 and modules.modules["L1"].output.scheme == "apq"
    assert modules.modules["softmax_quant"].unsigned and modules.modules["relu"].unsigned
    assert modules.modules["res1_quant"].unsigned is False
    assert modules.decision == plan.decision
    from brevitas_apq.models import ModelConfig, TimeSeriesTransformer

    resolved = modules.resolve(TimeSeriesTransformer(ModelConfig(n_features=3, window=4)))
    assert set(resolved) == set(modules.modules)  # every name exists in the model


def test_a_module_plan_file_is_not_a_transformer_plan(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("modules: {head: {weight: 4}}\n")
    with pytest.raises(PlanError, match=r"module-name plan .* ModulePlan.from_yaml"):
        BitPlan.from_yaml(path)


# --- bounded plan files (a YAML alias bomb, a deep document, a big file) ---------------------


def alias_bomb(rest: str, levels: int = 9) -> str:
    """Issue 13's kind of file: under 600 bytes, 9**9 strings once expanded (by str() of the
    description, for instance)."""
    items = ["&a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        items.append(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "description: [" + ", ".join(items) + "]\n" + rest


@pytest.mark.timeout(60)  # expanded, the bomb takes minutes and gigabytes; refused, no time
@pytest.mark.parametrize("loader", [BitPlan.from_yaml, ModulePlan.from_yaml])
def test_alias_bomb_is_refused_before_expansion(tmp_path, loader):
    path = tmp_path / "bomb.yaml"
    rest = "base: {bits: all-8}\n" if loader == BitPlan.from_yaml else "modules: {h: {act: 4}}\n"
    path.write_text(alias_bomb(rest))
    assert path.stat().st_size < 600
    with pytest.raises(PlanError, match=r"bomb.yaml' (expands to more than|uses more than)"):
        loader(path)
    # few aliases, but each expanding the previous: refused by the expanded node count
    path.write_text(
        "description: [&a [" + ", ".join(["x"] * 60) + "], "
        + ", ".join(f"&b{i} [" + ", ".join([f"*{'a' if i == 0 else f'b{i - 1}'}"] * 7) + "]"
                    for i in range(5))
        + "]\n" + rest
    )  # fmt: skip
    with pytest.raises(PlanError, match=r"expands to more than 100,000 YAML nodes"):
        loader(path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loader", [BitPlan.from_yaml, ModulePlan.from_yaml])
def test_deep_and_big_plan_files_are_refused(tmp_path, loader):
    path = tmp_path / "deep.yaml"
    path.write_text("x: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(PlanError, match=r"nests deeper than 32 levels"):
        loader(path)
    path.write_text("x: " + "[" * 40 + "]" * 40 + "\n")  # small, but too deep all the same
    with pytest.raises(PlanError, match=r"nests deeper than 32 levels"):
        loader(path)
    # depth through an alias: shallow as written, deep once expanded
    path.write_text("a: &a " + "[" * 20 + "]" * 20 + "\nb: " + "[" * 20 + "*a" + "]" * 20 + "\n")
    with pytest.raises(PlanError, match=r"nests deeper than 32 levels \(aliases expanded\)"):
        loader(path)
    path.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(PlanError, match=r"more than a plan may have"):
        loader(path)


def test_plans_with_a_few_aliases_still_load(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "modules:\n"
        "  features.0: &conv {weight: {bits: 4, scheme: sq}, bias: 8}\n"
        "  features.3: *conv\n"
        "  features.1: {act: 4}\n"
    )
    plan = ModulePlan.from_yaml(path)
    assert plan.modules["features.3"] == plan.modules["features.0"]
    assert set(plan.resolve(Net())) == {"features.0", "features.1", "features.3"}


@pytest.mark.timeout(60)
def test_cli_refuses_a_plan_bomb_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from brevitas_apq.cli import app

    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb("base: {bits: all-8}\n"))
    result = CliRunner().invoke(app, ["train", "--plan", str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "error: plan file" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()
