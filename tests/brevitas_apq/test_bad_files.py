"""Bad files and run directories (issue 13): corrupt or truncated run files and data files,
output paths that are files, interrupted `--overwrite`, and the temporary files of atomic
writes. Every bad input gives one line naming the file, what is wrong and what to do, exit
code 2 from the CLI, and never a traceback or torch's advice to retry with weights_only=False.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from brevitas_apq import io
from brevitas_apq.cli import app
from brevitas_apq.errors import APQError, FileError, RunError
from brevitas_apq.experiments import reproduce
from brevitas_apq.plans import BitPlan
from brevitas_apq.rundir import (
    CHECKPOINT,
    MODEL_FILE,
    check_finished,
    load_float_state,
    load_run,
)
from brevitas_apq.training import TrainConfig, train_run
from tests.helpers import csv_data

TINY = TrainConfig(float_epochs=2, qat_epochs=2, max_batches=6, batch_size=32, patience=5)
PLAN = BitPlan.from_presets("all-8", "all-sq")
runner = CliRunner()


def squeeze(text: str) -> str:
    """``text`` without white space and panel borders: rich wraps (and boxes) at 80 columns."""
    return re.sub(r"[\s│╭╮╰╯─]", "", text)


def assert_clean_error(result, *needles: str) -> None:
    """Exit code 2, one error message (no traceback, no torch advice) holding ``needles``."""
    text = squeeze(result.output)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "weights_only=False" not in text, result.output
    for needle in needles:
        assert squeeze(needle) in text, (needle, result.output)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, small_csv):
    out = tmp_path_factory.mktemp("finished") / "run"
    train_run(out, data=csv_data(small_csv), plan=PLAN, train=TINY, progress=False)
    return out


@pytest.fixture
def run(finished, tmp_path):
    """A copy of the finished run to damage."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


def cli_train(small_csv, out: Path, *extra: str) -> list[str]:
    data = ["--data", small_csv, "--target", "load", "--timestamp", "time"]
    budget = ["--epochs", "2", "--qat-epochs", "2", "--max-batches", "6", "--batch-size", "32"]
    rest = ["--patience", "5", "--no-progress"]
    return ["train", *data, "--out", str(out), "--plan", "all-8/all-sq", *budget, *rest, *extra]


class _NotAllowed:  # pickled into a .pt file: weights_only=True must refuse to load it
    pass


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(os.urandom(600))
    elif how == "text":
        path.write_text("this is not a model\n")
    elif how == "foreign pickle":
        torch.save({"x": _NotAllowed()}, path)


DAMAGE = ["truncated", "empty", "garbage", "text", "foreign pickle"]


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_model_pt(run, how):
    _damage(run / MODEL_FILE, how)
    with pytest.raises(FileError, match=re.escape("model.pt is not a usable PyTorch file")):
        load_run(run)
    with pytest.raises(FileError, match=re.escape("model.pt")):
        load_float_state(run)
    for command in ("show", "analyze", "export"):
        result = runner.invoke(app, [command, str(run)])
        assert_clean_error(result, f"{run / MODEL_FILE} is not a usable PyTorch file", "--resume")
    if how == "foreign pickle":
        assert squeeze("not written by brevitas-apq") in squeeze(result.output)


def test_model_pt_of_another_format(run):
    saved = torch.load(run / MODEL_FILE, weights_only=True)
    torch.save({k: v for k, v in saved.items() if k != "state_dict"}, run / MODEL_FILE)
    assert_clean_error(runner.invoke(app, ["analyze", str(run)]), "not a model written by")
    saved["state_dict"] = {"nonsense": torch.zeros(2)}
    torch.save(saved, run / MODEL_FILE)
    assert_clean_error(
        runner.invoke(app, ["analyze", str(run)]), "does not fit this version", "--overwrite"
    )


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
def test_damaged_checkpoint(run, small_csv, how):
    _damage(run / CHECKPOINT, how)
    result = runner.invoke(app, cli_train(small_csv, run, "--resume"))
    assert_clean_error(result, f"{run / CHECKPOINT} is not a usable PyTorch file", "--overwrite")
    # a finished run whose checkpoint is damaged cannot be checked: say so, do not guess
    assert_clean_error(runner.invoke(app, ["show", str(run)]), "checkpoint.pt")


@pytest.mark.parametrize("how", ["truncated", "empty", "not JSON"])
def test_damaged_metrics_json(run, how):
    path = run / "metrics.json"
    text = path.read_text()
    path.write_text({"truncated": text[: len(text) // 2], "empty": "", "not JSON": "{'a': 1"}[how])
    for command in ("show", "export"):
        result = runner.invoke(app, [command, str(run)])
        assert_clean_error(result, f"{path} is", "invalid JSON at line", "--resume")


def _gzip_variants(tmp_path: Path, small_csv: str) -> dict[str, Path]:
    raw = gzip.compress(Path(small_csv.removeprefix("csv:")).read_bytes())
    variants = {
        "truncated": raw[: len(raw) // 2],
        "corrupt": raw[:20] + bytes(b ^ 0x5A for b in raw[20:220]) + raw[220:],
        "not gzip": Path(small_csv.removeprefix("csv:")).read_bytes(),
    }
    paths = {}
    for name, content in variants.items():
        paths[name] = tmp_path / f"{name.replace(' ', '_')}.csv.gz"
        paths[name].write_bytes(content)
    return paths


def test_damaged_compressed_csv(tmp_path, small_csv):
    for name, path in _gzip_variants(tmp_path, small_csv).items():
        args = ["train", "--data", f"csv:{path}", "--target", "load", "--timestamp", "time"]
        result = runner.invoke(app, [*args, "--out", str(tmp_path / "out"), "--no-progress"])
        assert_clean_error(result, str(path), "cannot read the data")
        assert "Aborted" not in result.output, name
        if name != "not gzip":
            assert_clean_error(result, "truncated or corrupt compressed file")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_output_path_that_is_a_file(tmp_path, small_csv):
    blocker = tmp_path / "a_file"
    blocker.write_text("mine\n")
    result = runner.invoke(app, cli_train(small_csv, blocker))
    assert_clean_error(result, f"--out {blocker} is a file")
    result = runner.invoke(app, cli_train(small_csv, blocker / "sub"))
    assert_clean_error(result, f"{blocker} is a file")
    result = runner.invoke(app, ["reproduce", "--out", str(blocker), "--seeds", "1"])
    assert_clean_error(result, f"{blocker} is a file")
    result = runner.invoke(app, ["build", str(tmp_path / "m.onnx"), "--out", str(blocker)])
    assert_clean_error(result, f"--out {blocker} is a file")
    assert blocker.read_text() == "mine\n"


def test_damaged_grid_settings(tmp_path):
    (tmp_path / "settings.json").write_text('{"data": ')
    with pytest.raises(FileError, match=re.escape("settings.json is truncated or corrupt")):
        reproduce(tmp_path, bits=["all-8"], schemes=["all-sq"], seeds=1)
    assert not (tmp_path / "runs").exists()


# --- run directories: never finished-looking with mixed contents -----------------------------


def _kill_mid_write(path: Path) -> None:
    """A process killed (SIGKILL) in the middle of an atomic write of ``path``."""
    code = (
        "import os, signal, sys\n"
        "from brevitas_apq import io\n"
        "with io.atomic_path(sys.argv[1]) as tmp:\n"
        '    tmp.write_text(\'{"rmse": 1.0, "trunc\')\n'
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], cwd=Path(__file__).parents[2])
    assert proc.returncode == -signal.SIGKILL


def _leftovers(folder: Path) -> list[Path]:
    return list(folder.glob(f".*{io.TEMP_MARK}*"))


def test_interrupted_overwrite_leaves_no_finished_looking_run(run, small_csv):
    old = json.loads((run / "metrics.json").read_text())
    (run / "model.onnx").write_text("an export of the old run")
    (run / "finn").mkdir()
    (run / "finn" / "summary.json").write_text('{"LUT": 1}')
    (run / "sensitivity").mkdir()
    (run / "sensitivity" / "notes.txt").write_text("not ours: kept")  # no sensitivity marker
    _kill_mid_write(run / "history.csv")
    assert len(_leftovers(run)) == 1

    def interrupt(row):
        raise KeyboardInterrupt

    other = BitPlan.from_presets("all-4", "all-sq")
    with pytest.raises(KeyboardInterrupt):
        train_run(
            run,
            data=csv_data(small_csv),
            plan=other,
            train=TINY,
            overwrite=True,
            progress=False,
            on_epoch=interrupt,
        )
    for name in ("metrics.json", MODEL_FILE, "plan.yaml", "history.csv", "forecast.png"):
        assert not (run / name).exists(), name
    assert not (run / "model.onnx").exists() and not (run / "finn").exists()
    assert (run / "sensitivity" / "notes.txt").exists()
    assert _leftovers(run) == []
    with pytest.raises(RunError, match=re.escape("unfinished run")):
        check_finished(run)
    for command in ("show", "export", "analyze"):
        result = runner.invoke(app, [command, str(run)])
        assert_clean_error(result, "holds an unfinished run", "--resume")
    assert old["plan"] == "all-8/all-sq"


def test_checkpoint_of_an_unfinished_or_other_run_beside_old_results(run):
    """A directory as an interrupted `--overwrite` left it before this was fixed."""
    state = torch.load(run / CHECKPOINT, weights_only=True)
    state["phases"]["qat"]["done"] = False
    torch.save(state, run / CHECKPOINT)
    assert_clean_error(runner.invoke(app, ["show", str(run)]), "holds an unfinished run")
    state["phases"]["qat"]["done"] = True
    state["run"]["data"]["window"] = 48
    torch.save(state, run / CHECKPOINT)
    with pytest.raises(RunError, match=re.escape("mixes files of different runs")):
        load_run(run)
    assert_clean_error(runner.invoke(app, ["export", str(run)]), "checkpoint.pt data differ")


def test_results_without_checkpoint_are_not_silently_replaced(run, small_csv):
    (run / CHECKPOINT).unlink()
    before = (run / "metrics.json").read_text()
    with pytest.raises(
        RunError, match=re.escape("no checkpoint.pt to continue from; pass --overwrite")
    ):
        train_run(run, data=csv_data(small_csv), plan=PLAN, train=TINY, progress=False)
    assert (run / "metrics.json").read_text() == before


def test_finished_marker_required(run):
    (run / "metrics.json").unlink()
    assert_clean_error(runner.invoke(app, ["analyze", str(run)]), "has no metrics.json")
    with pytest.raises(RunError, match=re.escape("no such file or finished run directory")):
        load_float_state(run)


# --- atomic writes --------------------------------------------------------------------------


@pytest.mark.parametrize("exc", [KeyboardInterrupt, ValueError])
def test_atomic_write_interrupted_keeps_the_old_file_and_no_temp(tmp_path, exc):
    path = tmp_path / "table.csv"
    path.write_text("old\n")
    with pytest.raises(exc), io.atomic_path(path) as tmp:
        tmp.write_text("half of the new")
        raise exc
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_killed_write_is_never_read_and_is_cleared(tmp_path):
    run = tmp_path / "run"
    _kill_mid_write(run / "metrics.json")
    (stale,) = _leftovers(run)
    assert stale.name.startswith(".metrics.json.")
    assert not (run / "metrics.json").exists()
    with pytest.raises(RunError, match=re.escape("has no metrics.json")):
        check_finished(run)
    assert io.remove_stale_temps(run) == [stale] and _leftovers(run) == []


def test_errors_share_one_base():
    from brevitas_apq.data import DataError
    from brevitas_apq.experiments import GridError
    from brevitas_apq.plans import PlanError
    from brevitas_apq.search import SearchError

    for error in (DataError, GridError, PlanError, SearchError, RunError, FileError):
        assert issubclass(error, APQError) and issubclass(error, ValueError)


def test_atomic_writes_get_the_permissions_of_a_new_file(tmp_path):
    """mkstemp's 0600 does not leak into results: 0666 minus the umask, like open() would."""
    import os

    from brevitas_apq import io

    old = os.umask(0o022)
    try:
        path = io.write_json(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
