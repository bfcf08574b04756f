"""Fixtures for the FINN flow tests: exported test models (built once per session)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import finn_flow_models as models


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


@pytest.fixture(scope="session")
def hls_dir() -> Path:
    """The HLS C++ sources for cppsim: ``$APQ_HLS_DIR``, else ``../shared/hls`` beside the
    project (CI provides it); skips only where they or g++ are truly absent."""
    folder = Path(os.environ.get("APQ_HLS_DIR") or Path(__file__).parents[3] / "shared" / "hls")
    if not (folder / "finn-hlslib").is_dir():
        pytest.skip(f"HLS sources not found at {folder} (set APQ_HLS_DIR)")
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed (apt-get install g++)")
    return folder


@pytest.fixture(scope="session", autouse=True)
def kernel_cache(tmp_path_factory):
    """One cppsim/Verilator cache for the test session (not the user's ~/.cache), unless
    APQ_CACHE_DIR is set: identical kernels compile once per session."""
    if os.environ.get("APQ_CACHE_DIR"):
        yield Path(os.environ["APQ_CACHE_DIR"])
        return
    folder = tmp_path_factory.mktemp("apq_cache")
    os.environ["APQ_CACHE_DIR"] = str(folder)
    try:
        yield folder
    finally:
        os.environ.pop("APQ_CACHE_DIR", None)
