"""Tests of the grid's tables (``brevitas_apq.grid_report``) on hand-made run directories; the
tables of real grids are tested in test_experiments.py."""

from __future__ import annotations

import pandas as pd
import pytest

from brevitas_apq import grid_report


def test_decision_records_check_the_exported_decision_against_the_kept_epoch(tmp_path):
    """Two QAT epochs of 4 mini-batches, the first kept: agreement uses epoch 1's mean S."""
    pd.DataFrame({"phase": ["qat", "qat"], "epoch": [1, 2], "best": [True, False]}).to_csv(
        tmp_path / "history.csv", index=False
    )
    traces = {
        "a": [0.5] * 4 + [0.0] * 4,  # kept epoch says AQ (the last epoch would say SQ)
        "b": [0.0] * 4 + [0.5] * 4,  # kept epoch says SQ
        "c": [0.09, 0.11, 0.1, 0.11] + [0.5] * 4,  # mean 0.1025: inside the ±20 % band
        "d": [0.05, 0.2] * 4,  # flips every step
    }
    rows = [
        {"quantizer": q, "quant_scheme": "apq", "step": i + 1, "symmetry": v,
         "scheme": "AQ" if v > 0.1 else "SQ"}
        for q, trace in traces.items() for i, v in enumerate(trace)
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "symmetry.csv", index=False)
    frozen = {"a": "AQ", "b": "AQ", "c": "SQ", "d": "SQ"}
    rec = grid_report.decision_records(tmp_path, 0.1, frozen).set_index("quantizer")
    assert rec.loc["a", "agrees"] == 1.0 and rec.loc["a", "kept_symmetry"] == pytest.approx(0.5)
    assert rec.loc["b", "agrees"] == 0.0  # exported AQ, kept epoch's S says SQ
    assert pd.isna(rec.loc["c", "agrees"])
    assert rec.loc["d", "agrees"] == 0.0  # mean S 0.125 is above the band: AQ, exported SQ
    assert rec.flips.to_dict() == {"a": 1, "b": 1, "c": 3, "d": 7}
    assert rec.loc["a", "final_scheme"] == "SQ" and rec.loc["b", "frozen_scheme"] == "AQ"
    # 8 steps cannot be 3 equal epochs: the kept epoch is unknown and no agreement is claimed.
    pd.DataFrame({"phase": ["qat"] * 3, "epoch": [1, 2, 3], "best": [True, False, False]}).to_csv(
        tmp_path / "history.csv", index=False
    )
    assert grid_report.decision_records(tmp_path, 0.1, frozen).agrees.isna().all()
