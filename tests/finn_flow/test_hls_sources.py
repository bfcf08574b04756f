"""`apq hls-fetch`: pinned clones of the HLS sources (local git repositories stand in for
GitHub; no network in tests)."""

from __future__ import annotations

import subprocess

import pytest
from typer.testing import CliRunner

from finn_flow.errors import FinnFlowError
from finn_flow.hls_sources import AP_TYPES, HLS_LIBRARIES, fetch, pinned_sources

pytest.importorskip("finn")


def _repo(path, files: dict[str, str]) -> str:
    """A git repository at ``path`` with one commit of ``files``; its commit hash."""
    path.mkdir()
    env = ["-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    for name, text in files.items():
        (path / name).write_text(text)
    subprocess.run(["git", "add", "."], cwd=path, check=True)
    subprocess.run(["git", *env, "commit", "-qm", "c"], cwd=path, check=True)
    subprocess.run(["git", "config", "uploadpack.allowReachableSHA1InWant", "true"], cwd=path)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_pins_are_finn_plus_own_and_ap_types():
    pins = pinned_sources()
    assert set(pins) == {*HLS_LIBRARIES, AP_TYPES[0]}
    assert pins["finn-hlslib"][1].startswith("8d979e2b")
    assert pins["attention-hlslib"][1].startswith("afc9720f")


def test_fetch_clones_pinned_commits_and_keeps_them(tmp_path):
    commit = _repo(tmp_path / "src", {"a.hpp": "// a"})
    pins = {"finn-hlslib": (f"file://{tmp_path / 'src'}", commit)}
    out = fetch(tmp_path / "deps", pins)
    assert (out["finn-hlslib"] / "a.hpp").read_text() == "// a"
    assert fetch(tmp_path / "deps", pins) == out  # already there: kept
    assert not list((tmp_path / "deps").glob(".*partial"))


def test_fetch_refuses_a_folder_at_another_commit(tmp_path):
    commit = _repo(tmp_path / "src", {"a.hpp": "// a"})
    (tmp_path / "deps" / "finn-hlslib").mkdir(parents=True)
    with pytest.raises(FinnFlowError, match="is not finn-hlslib at"):
        fetch(tmp_path / "deps", {"finn-hlslib": (f"file://{tmp_path / 'src'}", commit)})


def test_fetch_unknown_commit_is_clear_and_leaves_nothing(tmp_path):
    _repo(tmp_path / "src", {"a.hpp": "// a"})
    pins = {"finn-hlslib": (f"file://{tmp_path / 'src'}", "0" * 40)}
    with pytest.raises(FinnFlowError, match="git fetch"):
        fetch(tmp_path / "deps", pins)
    assert list((tmp_path / "deps").iterdir()) == []


def test_cli_hls_fetch_error_is_one_line(tmp_path):
    from brevitas_apq.cli import app

    (tmp_path / "deps" / "finn-hlslib").mkdir(parents=True)
    result = CliRunner().invoke(app, ["hls-fetch", str(tmp_path / "deps")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "is not finn-hlslib at" in " ".join(result.output.split())
