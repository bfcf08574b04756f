"""The stored formats shared by run directories: fingerprints, JSON round trips, number cells.

Fingerprints are stored in checkpoints (``float_init``), sensitivity configuration files and
folder names of ``apq search``; the values pinned here are those of the three hashers they
replaced (``training.state_fingerprint``, ``search._digest``, ``sensitivity._fingerprint``), so
a change that would make users' runs look like other runs fails here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from brevitas_apq import io
from brevitas_apq.report import fmt
from brevitas_apq.rundir import fingerprint


def test_state_dict_fingerprint_is_the_stored_one():
    state = {
        "b": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "a": torch.linspace(-1, 1, 5),
        "e": torch.zeros(0),
        "h": torch.tensor([1.5], dtype=torch.float16),
    }
    expected = "9f64bc3e1fe88a90ebdfbf09c3c457a0b58ac6ed7fafcfbb8b45d5b1f7124f2a"
    assert fingerprint(state) == expected
    assert fingerprint(dict(reversed(list(state.items())))) == expected  # order-independent
    changed = {**state, "a": state["a"] + 1e-3}
    assert fingerprint(changed) != expected


def test_settings_fingerprint_is_the_stored_one():
    settings = {"data": {"split": (0.7, 0.15, 0.15), "p": Path("/x")}, "n": None, "f": 1.5}
    assert fingerprint(settings, 16) == "03c3326788629272"
    assert fingerprint(dict(reversed(list(settings.items()))), 16) == "03c3326788629272"


def test_file_fingerprint_hashes_the_bytes(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"brevitas-apq\n" * 1000)
    full = "44347cf4d4bbbcff23787c29987747656a15416436782305a5990bfe73feb352"
    assert fingerprint(path) == full and fingerprint(path, 16) == full[:16]
    # a path is a file to hash, never the text of its name
    assert fingerprint(path) != fingerprint(str(path))


def test_jsonable_is_what_a_json_file_reads_back(tmp_path):
    value = {"bits": (4, 8), "p": Path("runs/x"), "s": np.float32(0.5), "n": np.int64(3)}
    io.write_json(tmp_path / "v.json", value)
    assert io.jsonable(value) == io.read_json(tmp_path / "v.json")
    assert io.jsonable(value) == {"bits": [4, 8], "p": "runs/x", "s": 0.5, "n": 3}


def test_fmt_marks_missing_values():
    assert fmt(37070.0, ",.0f") == "37,070" and fmt(1234.5678) == "1234.568"
    assert fmt(None, ",.0f") == "–" and fmt(float("nan"), ",.1f") == "–"
    assert fmt(np.float64("nan"), ",.1f", missing="-") == "-"
    assert fmt(0, ",.0f", missing="-") == "0"
