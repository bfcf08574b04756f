"""Fixtures for the FINN flow tests: exported test models (built once per session)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import finn_flow_models as models


def pytest_collection_modifyitems(config, items):
    if os.environ.get("XILINX_VIVADO"):
        return
    skip = pytest.mark.skip(reason="needs Xilinx Vivado/Vitis HLS: XILINX_VIVADO is not set")
    for item in items:
        if "vivado" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("finn_flow_models")


@pytest.fixture(scope="session")
def mlp_model(model_dir):
    return models.make_mlp(model_dir / "mlp.onnx")


@pytest.fixture(scope="session")
def transformer_model(model_dir):
    return models.make_transformer(model_dir / "transformer.onnx")


@pytest.fixture(scope="session")
def transformer_zp_model(model_dir):
    return models.make_transformer(model_dir / "transformer_zp.onnx", zero_points=True)
