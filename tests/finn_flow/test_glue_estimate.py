"""Resource models for the nodes FINN estimates as 0 (finn_flow.glue_estimate): against the
published post-synthesis rows they were fitted to (benchmarks/data/finn_t_post_synthesis.csv),
their scaling, and (marked finn) inside the estimate the build and the folding search use."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("qonnx")
from hypothesis import given, settings
from hypothesis import strategies as st

from finn_flow.errors import FinnFlowError
from finn_flow.glue_estimate import (
    FLOAT_OPS,
    NODES_PER_DESIGN,
    estimate_elementwise_add,
    estimate_layernorm,
    estimate_node,
    estimate_replicate_stream,
    estimate_reshape,
    layernorm_operators,
)

DATA = Path(__file__).parents[2] / "benchmarks" / "data" / "finn_t_post_synthesis.csv"


def _rows(scope: str) -> pd.DataFrame:
    d = pd.read_csv(DATA)
    return d[(d.scope == scope) & (d.report_kind == "post_synthesis")]


def _add(b_in: int, b_out: int, shape, const: bool = False, ram_style="auto", pe: int = 1):
    return dict(lhs_dtype=f"INT{b_in}", rhs_dtype=f"INT{b_in}", out_dtype=f"INT{b_out}",
                lhs_shape=list(shape), rhs_shape=list(shape[-2:]) if const else list(shape),
                out_shape=list(shape), lhs_style="input", rhs_style="const" if const else "input",
                PE=pe, ram_style=ram_style)  # fmt: skip


def _design_adds(row) -> list[dict]:
    """The 3 adds of one published design: positional encoding (constant operand) and the two
    residual adds, b-bit inputs and a b+1-bit output, PE 1 (glue_estimate's docstring)."""
    t, e, b = int(row.seq_len), int(row.emb_dim), int(row.bits)
    pos = _add(b, b + 1, (1, t, e), const=True, ram_style=row.eltwise_add_ram_style)
    return [pos, _add(b, b + 1, (1, t, e)), _add(b, b + 1, (1, t, e))]


def _design_forks(row) -> list[dict]:
    """The 3 forks: block input (b+1 bits, 2 outputs), q/k/v input (b bits, 3 outputs), MLP
    input (b+1 bits, 2 outputs)."""
    t, e, b = int(row.seq_len), int(row.emb_dim), int(row.bits)
    return [
        dict(PE=1, dtype=f"INT{bits}", num=num, num_elems=e, num_inputs=[1, t])
        for bits, num in ((b + 1, 2), (b, 3), (b + 1, 2))
    ]


def test_add_model_reproduces_published_rows_within_stated_error():
    rows = _rows("ElementwiseAdd_hls")
    assert len(rows) == 8 and NODES_PER_DESIGN["ElementwiseAdd_hls"] == 3
    err = []
    for _, row in rows.iterrows():
        ests = [estimate_elementwise_add(a) for a in _design_adds(row)]
        # the published constant is a binary code of the address: its ROM is logic, not LUTRAM
        err.append(abs(sum(e["LUT_logic"] for e in ests) - row.LUT) / row.LUT)
        assert sum(e["BRAM_18K"] for e in ests) == row.BRAM_18K + 2 * row.BRAM_36K
        assert sum(e["DSP"] for e in ests) == row.DSP == 0
    assert np.mean(err) < 0.016 and max(err) < 0.035  # stated: 1.5 % mean, 3.4 % max


def test_fork_model_reproduces_published_rows_within_stated_error():
    rows = _rows("ReplicateStream")
    assert len(rows) == 4 and NODES_PER_DESIGN["ReplicateStream"] == 3
    err = []
    for _, row in rows.iterrows():
        ests = [estimate_replicate_stream(a) for a in _design_forks(row)]
        err.append(abs(sum(e["LUT"] for e in ests) - row.LUT) / row.LUT)
        assert sum(e["BRAM_18K"] + e["DSP"] for e in ests) == row.BRAM_18K + row.DSP == 0
    assert np.mean(err) < 0.012 and max(err) < 0.022  # stated: 1.1 % mean, 2.1 % max


def test_every_estimate_states_its_method():
    add = estimate_elementwise_add(_add(8, 9, (1, 24, 16)))
    fork = estimate_replicate_stream(dict(PE=1, dtype="INT9", num=4, num_elems=16, num_inputs=[24]))
    ln = estimate_layernorm(dict(SIMD=1, ifm_dim=[1, 24, 16], inputDataType="INT9"))
    assert "fitted to 8 FINN-T post-synthesis ElementwiseAdd_hls rows" in add["method"]
    assert "fitted to 4 FINN-T post-synthesis ReplicateStream rows" in fork["method"]
    assert "not validated against any synthesis of LayerNorm" in ln["method"]
    assert all(e["method"].startswith("analytical (finn_flow.glue_estimate)") for e in (add, ln))


def test_constant_operand_memory_follows_ram_style():
    # a learned positional encoding (INT8, 24 x 16) like the quickstart's
    block = estimate_elementwise_add(_add(8, 9, (1, 24, 16), const=True, ram_style="block"))
    dist = estimate_elementwise_add(_add(8, 9, (1, 24, 16), const=True, ram_style="distributed"))
    plain = estimate_elementwise_add(_add(8, 9, (1, 24, 16)))
    assert block["BRAM_18K"] == 1 and dist["BRAM_18K"] == 0 == plain["BRAM_18K"]
    assert dist["LUT"] - plain["LUT"] == 8 * math.ceil(384 / 64)  # LUT6 as 64 x 1 ROM
    assert block["LUT"] == plain["LUT"] == block["LUT_logic"]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 64),
    pe_exp=st.tuples(st.integers(0, 6), st.integers(0, 6)),
    bits=st.tuples(st.integers(2, 16), st.integers(2, 16)),
    num=st.integers(2, 5),
)
def test_add_and_fork_grow_with_pe_and_bits(rows, pe_exp, bits, num):
    """Monotone for widths of 2+ bits (a wider lane outgrows the shorter loop counter)."""
    lo_pe, hi_pe = (2 ** min(pe_exp), 2 ** max(pe_exp))
    lo_b, hi_b = min(bits), max(bits)

    def add(pe, b):
        return estimate_elementwise_add(_add(b, b + 1, (1, rows, 64), pe=pe))["LUT"]

    def fork(pe, b):
        attrs = dict(PE=pe, dtype=f"INT{b}", num=num, num_elems=64, num_inputs=[1, rows])
        return estimate_replicate_stream(attrs)["LUT"]

    for f in (add, fork):
        assert f(lo_pe, lo_b) <= f(hi_pe, lo_b) and f(lo_pe, hi_b) <= f(hi_pe, hi_b)
        if hi_b > lo_b:
            assert f(lo_pe, lo_b) < f(lo_pe, hi_b) and f(hi_pe, lo_b) < f(hi_pe, hi_b)


def test_more_lanes_cost_more_at_typical_widths():
    for b in (4, 8):
        luts = [estimate_elementwise_add(_add(b, b + 1, (1, 24, 16), pe=p))["LUT"] for p in
                (1, 2, 4, 8, 16)]  # fmt: skip
        assert all(a < c for a, c in itertools.pairwise(luts))
        forks = [
            estimate_replicate_stream(
                dict(PE=p, dtype=f"INT{b}", num=2, num_elems=16, num_inputs=[1, 24])
            )["LUT"]
            for p in (1, 2, 4, 8)
        ]
        assert all(a < c for a, c in itertools.pairwise(forks))


def test_layernorm_scales_with_simd_lanes():
    n = 64
    ests = {s: estimate_layernorm(dict(SIMD=s, ifm_dim=[1, 24, n], inputDataType="INT9")) for s in
            (1, 2, 4, 8, 16)}  # fmt: skip
    luts = [ests[s]["LUT"] for s in sorted(ests)]
    assert all(a < b for a, b in itertools.pairwise(luts))
    # every lane has its own int-to-float, float multiply and x^2 multiplier (unrolled, II=1)
    w_n = 1 + math.ceil(math.log2(n)) + 8
    per_lane_dsp = FLOAT_OPS["fmul"][1] + math.ceil(w_n / 25) * math.ceil(w_n / 18)
    for s in ests:
        assert ests[s]["DSP"] - ests[1]["DSP"] == (s - 1) * per_lane_dsp
    per_lane_float_lut = FLOAT_OPS["itofp"][0] + FLOAT_OPS["fmul"][0]
    assert ests[16]["LUT"] - ests[1]["LUT"] >= 15 * per_lane_float_lut
    # one shared row pipeline: uitofp, fmul 1/N, fadd eps, rsqrt
    assert layernorm_operators(dict(SIMD=4, inputDataType="INT9")) == dict(
        itofp=5, fmul=5, fadd=1, rsqrt=1
    )


def test_layernorm_float_input_costs_float_statistics():
    ops = layernorm_operators(dict(SIMD=2, inputDataType="FLOAT32"))
    assert ops == dict(fadd=7, fmul=7, rsqrt=1)
    f = estimate_layernorm(dict(SIMD=2, ifm_dim=[1, 24, 16], inputDataType="FLOAT32"))
    i = estimate_layernorm(dict(SIMD=2, ifm_dim=[1, 24, 16], inputDataType="INT9"))
    assert f["DSP"] > i["DSP"] and f["LUT"] > i["LUT"]


def test_layernorm_bypass_fifo_goes_to_bram_above_srl_limit():
    def bram(simd, n, dtype):
        attrs = dict(SIMD=simd, ifm_dim=[1, 24, n], inputDataType=dtype)
        return estimate_layernorm(attrs)["BRAM_18K"]

    assert bram(1, 16, "INT4") == 0  # 4 x 46 and 8 x 106 bits: both SRL (<= 1024 bits)
    assert bram(1, 16, "INT9") == 1  # 13 x 106 bits > 1024: BRAM; 9 x 46 bits: SRL
    assert bram(8, 64, "INT8") == 6  # 64 x 38 bits: 2 BRAM_18K, 112 x 98 bits: 4


def test_bad_attributes_are_errors_that_name_the_fix():
    with pytest.raises(FinnFlowError, match="unknown datatype 'INT4X' in a ElementwiseAdd_hls"):
        estimate_elementwise_add(dict(_add(4, 5, (1, 8, 8)), out_dtype="INT4X"))
    with pytest.raises(FinnFlowError, match="unknown datatype 'FOO' in a LayerNorm_hls"):
        estimate_layernorm(dict(SIMD=1, ifm_dim=[1, 8, 16], inputDataType="FOO"))
    with pytest.raises(FinnFlowError, match="SIMD=3 does not divide the normalised dimension 16"):
        estimate_layernorm(dict(SIMD=3, ifm_dim=[1, 8, 16], inputDataType="INT8"))


def test_dispatch_and_reshape_wire_through():
    assert estimate_node("ElementwiseSub_hls", _add(4, 5, (1, 8, 8)))["LUT"] > 0
    assert estimate_node("ElementwiseMul_hls", _add(4, 8, (1, 8, 8))) is None  # no model
    assert estimate_node("LayerNorm_rtl", dict(SIMD=1)) is None
    assert estimate_reshape(dict(PE=2), 16, 16)["LUT"] == 0
    assert estimate_reshape(dict(PE=2), 16, 8) is None


@pytest.mark.finn
def test_build_and_fit_estimates_include_the_glue_models(tmp_path):
    """A transformer with LayerNorm through the estimate flow: adds, forks and LayerNorm get
    an analytical estimate in summary.json, the totals and fit.estimate_resources."""
    import finn_flow_models as models

    from finn_flow.build import build
    from finn_flow.fit import estimate_resources
    from finn_flow.no_vivado import finn_session

    path, shape = models.make_transformer(tmp_path / "t_ln.onnx", norm="layer")
    out = tmp_path / "ln"
    summary = build(path, out, emulation_inputs=models.random_inputs(shape, 2), quiet=True)
    glue = json.loads((out / "report" / "estimate_glue_analytical.json").read_text())
    ops = {name.rsplit("_", 1)[0] for name in glue}
    assert {"ElementwiseAdd_hls", "ReplicateStream_hls", "LayerNorm_hls"} <= ops
    listed = {n["node"]: n for n in summary["nodes_not_estimated_by_finn"]}
    for name, est in glue.items():
        assert listed[name]["analytical_estimate"] == est
    src = summary["resource_sources"]
    models_used = src["analytical_models"]
    assert sorted(models_used["LayerNorm (analytical, operator costs, unvalidated)"]) == sorted(
        n for n in glue if n.startswith("LayerNorm_hls")
    )
    assert not set(glue) & set(src["not_estimated"])
    analytical = {k: sum(e[k] for e in [*glue.values(), *_attention(out).values()]) for k in
                  ("LUT", "DSP")}  # fmt: skip
    for key in ("LUT", "DSP"):
        assert src["analytical"][key] == pytest.approx(analytical[key])
        assert src["finn"][key] + src["analytical"][key] == pytest.approx(summary[key])
    # the folding search sees the same figures
    from qonnx.core.modelwrapper import ModelWrapper

    hw = ModelWrapper(str(out / "intermediate_models" / "step_generate_estimate_reports.onnx"))
    with finn_session():
        totals = estimate_resources(hw, summary["part"])
    for key in ("LUT", "BRAM_18K", "DSP"):
        assert totals[key] == pytest.approx(summary[key])


def _attention(out: Path) -> dict:
    f = out / "report" / "estimate_attention_analytical.json"
    return json.loads(f.read_text()) if f.is_file() else {}
