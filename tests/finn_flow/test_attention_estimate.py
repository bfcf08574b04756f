"""The attention resource model against the published post-synthesis results it was fitted to
(benchmarks/data/finn_t_post_synthesis.csv), and the previous model's error on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("qonnx")

from finn_flow.attention_estimate import estimate_attention

DATA = Path(__file__).parents[2] / "benchmarks" / "data" / "finn_t_post_synthesis.csv"


def _attention_rows() -> pd.DataFrame:
    d = pd.read_csv(DATA)
    keep = (d.scope == "ScaledDotProductAttention_hls") & (d.report_kind == "post_synthesis")
    return d[keep]


def _estimate(row) -> dict:
    hd, t, b = int(row.emb_dim) // int(row.heads), int(row.seq_len), int(row.bits)
    per_head = estimate_attention(
        dict(QKDim=hd, VDim=hd, QLen=t, KVLen=t, EmbFold=1, SeqFold=t,
             QType=f"INT{b}", KType=f"INT{b}", VType=f"INT{b}", AType=f"INT{b}", OType=f"INT{b}",
             ActQKMatMul="none", ActASoftmax="thresholds", ActAVMatMul="thresholds",
             ram_style=row.attn_ram_style, ram_style_thresholds=row.attn_ram_style_thresholds,
             mac_resource=row.attn_mac_resource)
    )  # fmt: skip
    return {k: per_head[k] * int(row.heads) for k in ("LUT", "DSP", "BRAM_18K")}


def test_model_matches_published_attention_nodes():
    rows = _attention_rows()
    assert len(rows) == 32
    lut_err, exact = [], 0
    for _, row in rows.iterrows():
        est = _estimate(row)
        lut_err.append(abs(est["LUT"] - row.LUT) / row.LUT)
        bram18 = 2 * row.BRAM_36K + row.BRAM_18K
        exact += est["DSP"] == row.DSP and est["BRAM_18K"] == bram18
    assert np.mean(lut_err) < 0.02 and max(lut_err) < 0.05
    assert exact == 32


def test_calibration_is_stated_in_the_estimate():
    est = estimate_attention(dict(QKDim=16, VDim=16, QLen=24, KVLen=24))
    assert "fitted to 32 FINN-T post-synthesis" in est["method"]


def test_unknown_datatype_is_an_error_not_a_guess():
    from finn_flow.errors import FinnFlowError

    with pytest.raises(FinnFlowError, match="unknown datatype 'INT4X'"):
        estimate_attention(dict(QKDim=16, VDim=16, QLen=24, KVLen=24, QType="INT4X"))
    # the same attributes with a real datatype give an estimate, and bits matter
    small = estimate_attention(dict(QKDim=16, VDim=16, QLen=24, KVLen=24, QType="INT4"))
    wide = estimate_attention(dict(QKDim=16, VDim=16, QLen=24, KVLen=24, QType="INT8"))
    assert 0 < small["LUT"] < wide["LUT"]
