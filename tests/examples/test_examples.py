"""The quick-start and paper-reproduction examples run end to end in their quick modes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.finn
@pytest.mark.timeout(1800)  # training, export and a FINN build with emulation
def test_quickstart_example_trains_exports_builds_and_emulates(tmp_path):
    out = load("quickstart").main(["--out", str(tmp_path / "run"), "--quick"])
    assert out["export"]["passed"]
    assert out["finn"]["LUT"] > 0 and out["finn"]["estimated_throughput_fps"] > 0
    summary = json.loads((tmp_path / "run" / "finn" / "summary.json").read_text())
    assert summary["emulation"]["passed"]


def test_paper_reproduction_example_writes_the_tables(tmp_path):
    result = load("paper_reproduction").main(["--out", str(tmp_path / "grid"), "--quick"])
    assert not result.failed
    assert (tmp_path / "grid" / "results.md").is_file()
    assert set(result.results["config"]) == {"float", "mixed-4-8/all-sq", "mixed-4-8/sq-apq t=0.1"}
