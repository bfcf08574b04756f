"""Tests of the bit-plan search (``apq search``): plans, shared SQLite and PostgreSQL studies."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pandas as pd
import pytest

from brevitas_apq.search import (
    SearchError,
    SearchSpace,
    parse_schemes,
    plan_from_params,
    search,
)
from brevitas_apq.training import TrainConfig
from tests.helpers import csv_data

TINY = TrainConfig(float_epochs=1, qat_epochs=1, max_batches=2, batch_size=32)
TINY_ARGS = ["--epochs", "1", "--qat-epochs", "1", "--max-batches", "2", "--batch-size", "32"]


def test_plan_from_params():
    params = {f"bits_L{i}": i + 1 for i in range(1, 9)}
    params.update(bits_act=3, weight_scheme="apq", act_scheme="aq")
    plan = plan_from_params(params, threshold=0.2)
    assert plan.layers["L1"].weight.bits == 2 and plan.layers["L8"].output.bits == 9
    assert plan.layers["L3"].bias.scheme == "apq" and plan.layers["L3"].weight.threshold == 0.2
    assert plan.layers["L3"].output.scheme == "aq"
    assert plan.activations["scores"].bits == 3 and plan.activations["scores"].scheme == "aq"
    assert plan.activations["input"].bits == 8
    assert plan.activations["softmax"].scheme == "sq"  # unsigned grid, no scheme choice


def test_bad_search_options(tmp_path):
    with pytest.raises(SearchError, match="valid: sq, aq, apq"):
        parse_schemes("sq,xq")
    with pytest.raises(SearchError, match="bit range"):
        SearchSpace(min_bits=1)
    with pytest.raises(SearchError, match="sampler"):
        search(tmp_path, trials=0, sampler="grid")
    with pytest.raises(SearchError, match=r"cannot be used|not installed"):
        search(tmp_path, trials=0, storage="nosuchdb://x/y")


def test_study_with_other_settings_is_refused(tmp_path, small_csv):
    result = search(tmp_path, trials=0, train=TINY, data=csv_data(small_csv))
    assert result["trials"].empty and (tmp_path / "pareto.csv").is_file()
    with pytest.raises(SearchError, match="other settings"):
        search(tmp_path, trials=0, train=TINY, data=csv_data(small_csv), space=SearchSpace(2, 4))


def test_two_workers_share_one_sqlite_study(tmp_path, small_csv):
    out = tmp_path / "search"
    cmd = [sys.executable, "-m", "brevitas_apq.cli", "search", "--out", str(out)]
    cmd += ["--trials", "1", "--sampler", "random", "--min-bits", "3", "--max-bits", "5"]
    cmd += ["--data", small_csv, "--target", "load", "--timestamp", "time", *TINY_ARGS]
    env = {**os.environ, "COLUMNS": "200"}
    workers = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output
    study = optuna.load_study(study_name="apq-search", storage=f"sqlite:///{out / 'study.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2
    assert len({t.user_attrs["worker"] for t in complete}) == 2
    assert len(list((out / "float").iterdir())) == 2  # one float model (and its lock file)
    pareto = pd.read_csv(out / "pareto.csv")
    assert 1 <= len(pareto) <= 2
    assert {"val_rmse", "model_size_bits", "zero_point_ops", "bits_L1", "run_dir"} <= set(pareto)
    # the objective is the validation RMSE of the trial's run; test RMSE is only reported
    for t in complete:
        metrics = json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())
        assert t.values[0] == metrics["val_rmse"] != metrics["rmse"]
        assert t.user_attrs["test_rmse"] == metrics["rmse"]
    assert (out / "pareto.png").is_file() and len(pd.read_csv(out / "trials.csv")) == 2


def test_jobs_split_the_trials_over_worker_processes(tmp_path, small_csv):
    """``search(jobs=2)``: one float model trained here, then two worker processes of the
    shared study with their own sampler seeds, three trials between them."""
    out = tmp_path / "search"
    lines: list[str] = []
    space = SearchSpace(min_bits=3, max_bits=5)
    result = search(
        out, trials=3, jobs=2, train=TINY, data=csv_data(small_csv), space=space,
        sampler="random", sampler_seed=7, log=lines.append,
    )  # fmt: skip
    complete = [t for t in result["study"].trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3 and len(result["trials"]) == 3
    workers = {t.user_attrs["worker"] for t in complete}
    assert len(workers) == 2 and str(os.getpid()) not in " ".join(workers)
    assert len(list((out / "float").iterdir())) == 2  # one float model (and its lock file)
    assert sum("training the float model" in line for line in lines) == 1
    # worker i samples with seed 7 + i: the two workers' first plans differ
    firsts = {}
    for t in sorted(complete, key=lambda t: t.number):
        firsts.setdefault(t.user_attrs["worker"], t.params)
    assert len({json.dumps(p, sort_keys=True) for p in firsts.values()}) == 2
    with pytest.raises(SearchError, match="jobs=0 is invalid"):
        search(out, trials=1, jobs=0, train=TINY, data=csv_data(small_csv), space=space)


# --- PostgreSQL ---------------------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _version_key(path: str) -> tuple[int, ...]:
    part = Path(path).parts[-3]
    return tuple(int(x) for x in part.split(".") if x.isdigit())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def postgres_url(tmp_path):
    """A throw-away PostgreSQL server on loopback, run by the test; its URL."""
    pytest.importorskip(
        "psycopg", reason="the PostgreSQL driver psycopg is not installed (psycopg[binary])"
    )
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb and no "
            "initdb on PATH): install the Debian package 'postgresql' (.ci/run does)"
        )
    prefix: list[str] = []
    cleanup = None
    if os.geteuid() == 0:
        # The server refuses to run as root: run it as the 'postgres' user, in a directory that
        # user owns (pytest's tmp_path lies under a root-only folder).
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root and 'runuser' (util-linux) is missing")
        prefix = [runuser, "-u", "postgres", "--"]
        base = Path(tempfile.mkdtemp(prefix="apq-pg-"))
        os.chown(base, user.pw_uid, user.pw_gid)
        cleanup = base
    else:
        base = tmp_path / "pg"
        base.mkdir()
    datadir, sockdir, log = base / "data", base / "sock", base / "server.log"
    port = _free_port()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*prefix, *args], capture_output=True, text=True, timeout=120, cwd=base
        )

    try:
        if prefix:
            run("mkdir", str(sockdir))
        else:
            sockdir.mkdir()
        init = run(
            str(bindir / "initdb"), "-D", str(datadir), "-U", "apq", "-A", "trust", "--no-sync"
        )
        if init.returncode != 0:
            pytest.skip(f"initdb failed, cannot start PostgreSQL: {init.stderr.strip()[-300:]}")
        options = f"-p {port} -k {sockdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        start = run(
            str(bindir / "pg_ctl"), "-D", str(datadir), "-o", options, "-l", str(log), "-w",
            "start",
        )  # fmt: skip
        if start.returncode != 0:
            server_log = log.read_text()[-500:] if log.exists() else ""
            pytest.skip(f"pg_ctl start failed: {start.stderr.strip()[-300:]} {server_log}")
        yield f"postgresql://apq@127.0.0.1:{port}/postgres"
    finally:
        if datadir.exists():
            run(str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "stop")
        if cleanup is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(cleanup)


def test_workers_share_a_postgresql_study(tmp_path, small_csv, postgres_url):
    data = csv_data(small_csv)
    space = SearchSpace(min_bits=3, max_bits=5)
    # Two "machines": each with its own output directory and its own local float model.
    first = search(tmp_path / "a", storage=postgres_url, trials=1, train=TINY, data=data,
                   space=space, sampler="random", log=lambda _: None)  # fmt: skip
    second = search(tmp_path / "b", storage=postgres_url, trials=1, train=TINY, data=data,
                    space=space, sampler="random", log=lambda _: None)  # fmt: skip
    assert len(first["trials"]) == 1 and len(second["trials"]) == 2
    assert first["storage"].startswith("postgresql://")
    study = optuna.load_study(study_name="apq-search", storage=postgres_url)
    assert len(study.trials) == 2 and study.user_attrs["settings"]["space"]["max_bits"] == 5
    assert (tmp_path / "b" / "pareto.csv").is_file()
    assert not (tmp_path / "a" / "study.db").exists()


def test_search_space_of_some_layers(tmp_path, small_csv):
    from brevitas_apq.search import suggest_params

    space = SearchSpace(2, 6, layers=("L8", "L1", "L8"))
    assert space.layers == ("L8", "L1")
    fixed = {"bits_L1": 3, "bits_L8": 5, "bits_act": 4, "weight_scheme": "sq", "act_scheme": "aq"}
    params = suggest_params(optuna.trial.FixedTrial(fixed), space)
    assert sorted(k for k in params if k.startswith("bits_L")) == ["bits_L1", "bits_L8"]
    plan = plan_from_params(params, 0.1, fixed_bits=space.max_bits)
    assert [plan.layers[n].weight.bits for n in ("L1", "L2", "L7", "L8")] == [3, 6, 6, 5]
    with pytest.raises(SearchError, match=r"layers=\['L9'\]: unknown L9; allowed"):
        SearchSpace(layers=("L9",))
    with pytest.raises(SearchError, match="no layer"):
        SearchSpace(layers=())
    # all eight (the default) is how studies were stored before; a subset is another study
    search(tmp_path, trials=0, train=TINY, data=csv_data(small_csv))
    stored = optuna.load_study(study_name="apq-search", storage=f"sqlite:///{tmp_path}/study.db")
    assert "layers" not in stored.user_attrs["settings"]["space"]
    search(tmp_path, trials=0, train=TINY, data=csv_data(small_csv), space=SearchSpace())
    with pytest.raises(SearchError, match="other settings"):
        search(tmp_path, trials=0, train=TINY, data=csv_data(small_csv), space=space)
