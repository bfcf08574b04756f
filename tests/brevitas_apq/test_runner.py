"""Tests of the one parallel runner (``brevitas_apq.runner.run_tasks``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from brevitas_apq.runner import Task, run_tasks


def square(x: int) -> int:
    return x * x


def fail(message: str) -> None:
    raise RuntimeError(message)


def mark(path: str, seconds: float = 0.0) -> str:
    time.sleep(seconds)
    Path(path).write_text("ran")
    return path


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


@pytest.mark.parametrize("jobs", [1, 2])
def test_results_dependencies_and_recorded_failures(jobs):
    done, errors = [], {}
    tasks = [
        Task("a", square, (3,)),
        Task("bad", fail, ("boom",)),
        Task("after-a", square, (4,), after="a"),
        Task("after-bad", square, (5,), after="bad"),
        Task("after-after-bad", square, (6,), after="after-bad"),
    ]
    failed = run_tasks(
        tasks,
        jobs,
        on_done=lambda t, r: done.append((t.key, r)),
        on_error=lambda t, e: errors.update({t.key: e}),
        keep_going=True,
    )
    assert sorted(done) == [("a", 9), ("after-a", 16)]
    if jobs == 1:  # in this process: in order, a dependent right after what it waits for
        assert [k for k, _ in done] == ["a", "after-a"]
    assert set(failed) == {"bad", "after-bad", "after-after-bad"} and errors == failed
    assert "RuntimeError: boom" in failed["bad"]  # the traceback, also from a worker
    assert failed["after-bad"] == "it waits for bad, which failed"


def test_the_first_failure_stops_the_work_without_keep_going(tmp_path):
    tasks = [Task("bad", fail, ("boom",))] + [
        Task(f"m{i}", mark, (str(tmp_path / f"m{i}"),)) for i in range(3)
    ]
    with pytest.raises(RuntimeError, match="boom"):
        run_tasks(tasks, 1)
    assert not list(tmp_path.iterdir())  # nothing after the failure ran
    # In workers: the queued tasks are cancelled (at most those already handed to a worker
    # process, one per worker plus one, still run).
    tasks = [Task("bad", fail, ("boom",))] + [
        Task(f"m{i}", mark, (str(tmp_path / f"m{i}"), 0.3)) for i in range(12)
    ]
    with pytest.raises(RuntimeError, match="boom"):
        run_tasks(tasks, 2)
    assert len(list(tmp_path.iterdir())) <= 6


def test_workers_run_one_torch_thread_and_bad_task_lists_are_refused():
    results = {}
    run_tasks(
        [Task(str(i), torch_threads) for i in range(2)],
        2,
        on_done=lambda t, r: results.update({t.key: r}),
    )
    assert results == {"0": 1, "1": 1}
    with pytest.raises(ValueError, match="unique"):
        run_tasks([Task("a", square, (1,)), Task("a", square, (2,))], 1)
    with pytest.raises(ValueError, match="unknown tasks \\['z'\\]"):
        run_tasks([Task("a", square, (1,), after="z")], 1)
    cycle = [Task("a", square, (1,), after="b"), Task("b", square, (2,), after="a")]
    failed = run_tasks(cycle, 1, keep_going=True)
    assert set(failed) == {"a", "b"} and "never ran" in failed["a"]
