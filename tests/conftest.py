"""Test-suite options: `slow` tests run with --runslow; `vivado` tests need XILINX_VIVADO."""

from __future__ import annotations

import importlib.util
import os

import pytest

from tests.helpers import write_series_csv


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow test: run with --runslow (make test-all)")
    skip_vivado = pytest.mark.skip(
        reason="needs Xilinx Vivado/Vitis HLS: XILINX_VIVADO is not set (run inside the Docker "
        "image with the tools mounted, see docker/README)"
    )
    skip_finn = pytest.mark.skip(reason="finn-plus is not installed (scripts/setup-env.sh does it)")
    has_finn = importlib.util.find_spec("finn") is not None
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "vivado" in item.keywords and not os.environ.get("XILINX_VIVADO"):
            item.add_marker(skip_vivado)
        if "finn" in item.keywords and not has_finn:
            item.add_marker(skip_finn)


@pytest.fixture(scope="session")
def small_csv(tmp_path_factory) -> str:
    """A small synthetic hourly series as a ``csv:`` data-set spec (see tests/helpers.py)."""
    return write_series_csv(tmp_path_factory.mktemp("data") / "series.csv")
