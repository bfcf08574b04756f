"""Tests of the cost model: hand-computed operation counts, the zero-point algebra, sizes."""

from __future__ import annotations

import brevitas.nn as qnn
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from brevitas_apq import quantize
from brevitas_apq.analysis import (
    Operand,
    float_size_bits,
    linear_row,
    matmul_zero_point_ops,
    model_size_bits,
    operation_counts,
    product_row,
    size_summary,
)
from brevitas_apq.models import ModelConfig, TimeSeriesTransformer
from brevitas_apq.module_plans import ModulePlan
from brevitas_apq.plans import ACTIVATIONS, BitPlan
from brevitas_apq.quant import (
    AQActQuant,
    AQWeightQuant,
    SQActQuant,
    SQBiasQuant,
    SQWeightQuant,
    iter_quantizers,
)

SMALL = ModelConfig(n_features=3, window=4, d_model=4, ffn_dim=8)


def quant_linear(n_in: int, n_out: int, input_quant, weight_quant, bits=(8, 4)):
    return qnn.QuantLinear(
        n_in,
        n_out,
        bias=True,
        input_quant=input_quant,
        input_bit_width=bits[0],
        weight_quant=weight_quant,
        weight_bit_width=bits[1],
        bias_quant=SQBiasQuant,
        bias_bit_width=bits[1],
        return_quant_tensor=False,
    )


def plan(schemes: str, bits: str = "mixed-4-8") -> BitPlan:
    """A preset with the extra activations spelled out: input at 8 bits, the others at 4."""
    acts = {name: {"bits": 8 if name == "input" else 4} for name in ACTIVATIONS}
    return BitPlan.from_dict({"base": {"bits": bits, "schemes": schemes}, "activations": acts})


def model(schemes: str, config: ModelConfig = SMALL, bits: str = "mixed-4-8"):
    return TimeSeriesTransformer(config, plan(schemes, bits))


def set_zero_point(m: torch.nn.Module, quantizer: str, value: bool) -> None:
    cores = dict(iter_quantizers(m))
    cores[quantizer].use_zero_point.fill_(value)


# --- single products, by hand -----------------------------------------------------------------


def test_linear_with_aq_input_and_sq_weight_costs_no_zero_point_ops():
    layer = quant_linear(5, 3, AQActQuant, SQWeightQuant)
    row = linear_row("lin", layer, rows=7)
    # 7 input vectors x 5 inputs x 3 outputs MACs, 7 x 3 bias adds; z_x folds into the bias
    assert row["macs"] == 105 and row["adds"] == 21
    assert row["zero_point_ops"] == 0 and row["int_ops"] == 126
    assert row["mac_bits"] == "8x4" and row["a"] == "8b AQ" and row["b"] == "4b SQ"


def test_linear_with_aq_weight_pays_row_sums_and_corrections():
    layer = quant_linear(5, 3, SQActQuant, AQWeightQuant, bits=(4, 8))
    row = linear_row("lin", layer, rows=7)
    # per input vector: sum of its 5 inputs, then one multiply-subtract per output: 7 (5 + 3)
    assert row["zero_point_ops"] == 56
    assert row["macs"] == 105 and row["int_ops"] == 105 + 21 + 56 and row["mac_bits"] == "4x8"
    # an AQ input adds nothing more: z_x sum q_w and K z_x z_w are constants
    both = linear_row("lin", quant_linear(5, 3, AQActQuant, AQWeightQuant), rows=7)
    assert both["zero_point_ops"] == 56


def test_linear_without_input_quantiser_needs_an_operand():
    layer = quant_linear(5, 3, None, SQWeightQuant)
    with pytest.raises(ValueError, match="no input quantiser"):
        linear_row("lin", layer, rows=2)
    assert linear_row("lin", layer, 2, Operand(6, zero_point=True))["mac_bits"] == "6x4"


def test_activation_products_pay_for_both_zero_points():
    q, k = Operand(4, zero_point=True), Operand(4, zero_point=True)
    # scores = q (T x dh) @ k^T (dh x T), T = 6, dh = 4, 2 heads
    # z_k: row sums of q (6*4) + 36 corrections; z_q: column sums of k^T (4*6) + 36 corrections
    assert matmul_zero_point_ops(q, k, 6, 4, 6, groups=2) == 2 * (24 + 36 + 24 + 36)
    assert matmul_zero_point_ops(q, Operand(4), 6, 4, 6, groups=2) == 2 * (24 + 36)
    assert matmul_zero_point_ops(Operand(4), k, 6, 4, 6, groups=2) == 2 * (24 + 36)
    # context = softmax (T x T, unsigned, z = 0) @ v (T x dh): z_v only, row sums of P
    p = Operand(4, signed=False)
    assert matmul_zero_point_ops(p, Operand(4, True), 6, 6, 4) == 36 + 24
    row = product_row("ctx", "matmul", p, Operand(4, True), 6, 6, 4)
    assert row["macs"] == 144 and row["adds"] == 0 and row["a"] == "u4b SQ"


def test_symmetric_operands_cost_nothing_extra():
    sq = Operand(8)
    assert matmul_zero_point_ops(sq, sq, 5, 6, 7, groups=3) == 0


# --- the zero-point algebra -------------------------------------------------------------------


def reference_zero_point_matmul(qa, qb, za, zb, a_const, b_const):
    """Integer (qa - za) @ (qb - zb) from the raw product and the four terms of the expansion;
    counts the operations that cannot be precomputed from constant operands."""
    m, k = qa.shape
    n = qb.shape[1]
    acc = qa @ qb  # the MAC array
    ops = 0
    if zb:
        row_sums = qa.sum(axis=1, keepdims=True)  # m k additions, unless qa is constant
        acc = acc - zb * row_sums  # m n corrections
        ops += 0 if a_const else m * k + m * n
    if za:
        col_sums = qb.sum(axis=0, keepdims=True)
        acc = acc - za * col_sums
        ops += 0 if b_const else k * n + m * n
    acc = acc + k * za * zb  # constant
    return acc, ops


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 5),
    k=st.integers(1, 5),
    n=st.integers(1, 5),
    za=st.integers(-8, 7),
    zb=st.integers(-8, 7),
    b_const=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_expansion_is_exact_and_counted(m, k, n, za, zb, b_const, seed):
    rng = np.random.default_rng(seed)
    qa = rng.integers(-8, 8, size=(m, k))
    qb = rng.integers(-8, 8, size=(k, n))
    acc, ops = reference_zero_point_matmul(qa, qb, za, zb, False, b_const)
    np.testing.assert_array_equal(acc, (qa - za) @ (qb - zb))
    a = Operand(4, zero_point=za != 0)
    b = Operand(4, zero_point=zb != 0, constant=b_const)
    assert matmul_zero_point_ops(a, b, m, k, n) == ops


# --- the Transformer ----------------------------------------------------------------------------


def test_all_sq_model_has_no_zero_point_ops_and_hand_counted_macs():
    ops = operation_counts(model("all-sq"))
    t, f, d, ffn = 4, 3, 4, 8
    assert ops["zero_point_ops"] == 0
    macs = {
        "8x4": t * f * d,  # L1: 8-bit input
        "5x4": 3 * t * d * d,  # L2-L4: the positional add's 5-bit sum
        "4x4": 2 * t * t * d + t * d * d + t * d * ffn + t * ffn * d,  # attention, L5-L7
        "4x8": d,  # L8 (8-bit weights) on the pooled vector
    }
    assert ops["macs_by_bits"] == dict(sorted(macs.items()))
    adds = 6 * t * d + 4 * t * d + t * ffn + 1  # biases L1-L5, L7; pos/res/pool; L6; L8
    assert ops["macs"] == sum(macs.values()) and ops["adds"] == adds
    assert ops["int_ops"] == ops["macs"] + ops["adds"]
    # derived from a forward pass: modules by name, functions by their operands' modules
    assert [r["layer"] for r in ops["per_layer"]] == [
        "L1",
        "add(pos_quant, pos_quant)",
        "L2",
        "L3",
        "L4",
        "matmul(L2, L3)",
        "matmul(softmax_quant, L4)",
        "L5",
        "add(res1_quant, res1_quant)",
        "L6",
        "L7",
        "add(res2_quant, res2_quant)",
        "mean(norm2_quant)",
        "L8",
    ]
    assert [r["kind"] for r in ops["per_layer"]] == [
        *("linear", "add", "linear", "linear", "linear", "matmul", "matmul", "linear", "add"),
        *("linear", "linear", "add", "pool", "linear"),
    ]


def test_all_aq_model_hand_counted():
    t, f, d, ffn = 4, 3, 4, 8
    sq, aq = operation_counts(model("all-sq")), operation_counts(model("all-aq"))
    zp = (
        t * (f + d)  # L1 weight zero point
        + 3 * t * (d + d)  # L2-L4
        + 2 * (t * d + t * t)  # scores: z_q and z_k
        + (t * t + t * d)  # context: z_v (softmax has no zero point)
        + t * (d + d)  # L5
        + t * (d + ffn)  # L6
        + t * (ffn + d)  # L7
        + (d + 1)  # L8
    )
    assert zp == 353
    assert aq["zero_point_ops"] == zp
    assert aq["int_ops"] == sq["int_ops"] + zp and aq["macs"] == sq["macs"]


def test_counts_follow_current_apq_decisions():
    m = model("sq-apq")
    assert operation_counts(m)["zero_point_ops"] == 0  # APQ starts on SQ
    t, d = 4, 4
    set_zero_point(m, "L1.output_quant", True)  # feeds only a requantiser: free
    set_zero_point(m, "pos_quant.act_quant", True)  # shared add: folds into L2-L4 biases
    set_zero_point(m, "res1_quant.act_quant", True)
    assert operation_counts(m)["zero_point_ops"] == 0
    set_zero_point(m, "L4.output_quant", True)  # v: context pays T*T + T*d
    assert operation_counts(m)["zero_point_ops"] == t * t + t * d
    set_zero_point(m, "L2.output_quant", True)  # q: scores pay k's sums + T*T
    ops = operation_counts(m)
    assert ops["zero_point_ops"] == 2 * (t * t + t * d)
    by_layer = {r["layer"]: r["zero_point_ops"] for r in ops["per_layer"]}
    assert by_layer["matmul(L2, L3)"] == by_layer["matmul(softmax_quant, L4)"] == t * t + t * d


@settings(max_examples=8, deadline=None)
@given(
    window=st.integers(1, 6),
    d_model=st.sampled_from([2, 4, 6]),
    heads=st.sampled_from([1, 2]),
    features=st.integers(1, 4),
)
def test_zero_point_ops_closed_form(window, d_model, heads, features):
    config = ModelConfig(n_features=features, window=window, d_model=d_model, n_heads=heads)
    t, d, f, h, ffn = window, d_model, features, heads, 4 * d_model
    aq = operation_counts(model("all-aq", config))
    expected = (
        (t * (f + d) + 4 * t * 2 * d + 2 * (t * d + h * t * t) + (h * t * t + t * d))
        + 2 * t * (d + ffn)
        + (d + 1)
    )
    assert aq["zero_point_ops"] == expected
    assert operation_counts(model("all-sq", config))["zero_point_ops"] == 0
    # the attention MACs scale with T^2 d whatever the number of heads
    scores = next(r for r in aq["per_layer"] if r["layer"] == "matmul(L2, L3)")
    assert scores["macs"] == t * t * d


def test_example_input_and_invalid_models():
    m = model("all-sq")
    assert operation_counts(m)["window"] == 4  # zeros of the config's shape by default
    longer = torch.zeros(3, 8, 3)  # the first sample is one inference; pos encoding is 4 long
    with pytest.raises(RuntimeError):
        operation_counts(m, longer)
    assert operation_counts(m, torch.ones(5, 4, 3)) == operation_counts(m)  # values, batch: no
    with pytest.raises(ValueError, match="quantised model"):
        operation_counts(TimeSeriesTransformer(SMALL))
    with pytest.raises(TypeError, match="needs example_input"):
        operation_counts(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"layer '1' \(Linear\) is float"):
        operation_counts(torch.nn.Sequential(quant_linear(2, 2, SQActQuant, SQWeightQuant),
                                             torch.nn.Linear(2, 2)), torch.zeros(1, 2))  # fmt: skip


def test_counting_leaves_the_model_as_it_was():
    m = model("all-apq")
    m.train()
    m(torch.rand(8, 4, 3) + 1)  # a pending mini-batch of one-sided data: .eval() commits it
    cores = dict(iter_quantizers(m))
    for core in cores.values():
        core.use_zero_point.fill_(False)  # all on SQ now; the pending batch would say AQ
    before = {k: v.clone() for k, v in m.state_dict().items()}
    pending = {name: core._pending is not None for name, core in cores.items()}
    assert operation_counts(m)["zero_point_ops"] == 0  # the decisions in force, not committed
    assert m.training and all(mod.training for mod in m.modules())
    torch.testing.assert_close(m.state_dict(), before, rtol=0, atol=0, equal_nan=True)
    assert {name: core._pending is not None for name, core in cores.items()} == pending
    assert any(pending.values())


def test_size_summary_matches_model_size():
    for schemes in ("all-sq", "all-aq"):
        m = model(schemes)
        summary = size_summary(m)
        assert summary["total_bits"] == model_size_bits(m)
        assert (summary["zero_point_bits"] > 0) == (schemes == "all-aq")
        assert summary["total_bits"] < float_size_bits(TimeSeriesTransformer(SMALL))


# --- any model quantised with brevitas_apq.quantize -------------------------------------------


def quantized(model: torch.nn.Module, modules: dict) -> torch.nn.Module:
    return quantize(model, ModulePlan.from_dict({"modules": modules}))


def test_a_quantised_mlp_counted_by_hand():
    mlp = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    q = quantized(
        mlp,
        {
            "0": {"input": 8, "weight": {"bits": 4, "scheme": "aq"}, "bias": 8},
            "1": {"act": 4},
            "2": {"weight": 8, "bias": 8},
        },
    )
    ops = operation_counts(q, torch.zeros(7, 5))  # one inference: the first sample
    first, second = ops["per_layer"]
    # 1 x 5 x 3 MACs, 3 bias adds, AQ weight: the input's sum (5) + one correction per output (3)
    assert (first["layer"], first["macs"], first["adds"], first["zero_point_ops"]) == (
        "0",
        15,
        3,
        8,
    )
    assert (first["a"], first["b"], first["mac_bits"]) == ("8b SQ", "4b AQ", "8x4")
    # the unsigned 4-bit ReLU output times the 8-bit SQ weights
    assert (second["macs"], second["adds"], second["zero_point_ops"]) == (6, 2, 0)
    assert second["a"] == "u4b SQ" and ops["int_ops"] == 15 + 3 + 8 + 6 + 2


class ConvPool(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1, self.relu1, self.pool = (
            nn.Conv1d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool1d(2),
        )
        self.conv2, self.relu2 = nn.Conv1d(4, 4, 3, groups=2), nn.ReLU()
        self.head_in, self.head = nn.Identity(), nn.Linear(4, 1)

    def forward(self, x):
        h = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))
        return self.head(self.head_in(h.mean(-1)))


def test_a_quantised_conv_net_counted_by_hand():
    aq4 = {"bits": 4, "scheme": "aq"}
    q = quantized(
        ConvPool(),
        {
            "conv1": {"input": 8, "weight": aq4, "bias": 8},
            "relu*": {"act": 4},
            "conv2": {"weight": aq4, "bias": 8},
            "head_in": {"act": 8},
            "head": {"weight": 8, "bias": 8},
        },
    )
    ops = operation_counts(q, torch.zeros(1, 3, 10))
    rows = {r["layer"]: r for r in ops["per_layer"]}
    assert list(rows) == ["conv1", "conv2", "mean(relu2)", "head"]
    # conv1: 10 positions x (3 x 3 inputs) x 4 outputs; AQ weights: 10 x (9 + 4)
    assert (rows["conv1"]["macs"], rows["conv1"]["adds"], rows["conv1"]["zero_point_ops"]) == (
        360,
        40,
        130,
    )
    # max pooling keeps the ReLU's grid; conv2 has 2 groups of (2 ch x 3) -> 2 ch, 3 positions
    assert rows["conv2"]["a"] == "u4b SQ" and rows["conv2"]["shape"] == "2*3x6x2"
    assert (rows["conv2"]["macs"], rows["conv2"]["zero_point_ops"]) == (72, 2 * (3 * 6 + 3 * 2))
    assert (rows["mean(relu2)"]["adds"], rows["mean(relu2)"]["shape"]) == (12, "4x3")
    assert rows["head"]["macs"] == 4 and ops["zero_point_ops"] == 130 + 48


class Mixed(torch.nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b = torch.nn.Identity(), torch.nn.Identity()
        self.fc = torch.nn.Linear(4, 4)
        self.w = torch.nn.Parameter(torch.ones(4, 4))

    def forward(self, x):
        if self.how == "float matmul":
            return self.a(x) @ self.w
        if self.how == "mul":
            return self.a(x) * self.b(x)
        return self.fc(self.a(x) + self.b(x))  # two grids: the sum is not one integer grid


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("float matmul", r"product of the integer tensor from 'a' and a float tensor"),
        ("mul", r"mul of the integer tensors from 'a' and 'b' is not counted"),
        ("add", r"layer 'fc' \(QuantLinear\): its input is not an integer tensor"),
    ],
)
def test_what_the_cost_model_cannot_count_is_refused(how, message):
    q = quantized(Mixed(how), {"a": {"act": 8}, "b": {"act": 8}, "fc": {"weight": 8, "bias": 8}})
    with pytest.raises(ValueError, match=message):
        operation_counts(q, torch.zeros(1, 4))
    eltwise = torch.nn.Sequential(
        quant_linear(2, 2, SQActQuant, SQWeightQuant), qnn.QuantEltwiseAdd()
    )
    with pytest.raises(ValueError, match=r"layer '1' \(QuantEltwiseAdd\) is not counted"):
        operation_counts(eltwise, torch.zeros(1, 2))
