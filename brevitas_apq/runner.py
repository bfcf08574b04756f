"""One parallel runner for independent pieces of work: :func:`run_tasks`.

``apq reproduce`` (one task per grid run) and ``apq sensitivity`` (one task per configuration)
run their work through it. A task is a top-level (picklable) function and its arguments, with
an optional task it must wait for (a QAT run waits for its seed's float model). With
``jobs == 1`` tasks run in this process, in order; otherwise in ``jobs`` spawned worker processes
with one torch thread each (spawn, not fork: torch's thread pools do not survive a fork).

Failures follow one of two policies:

* ``keep_going=False`` (sensitivity): the first failure stops the work; tasks not yet started
  are cancelled, running ones finish, and the exception is raised.
* ``keep_going=True`` (reproduce): a failure is recorded (``{key: traceback}``) and the work
  goes on; tasks that wait for a failed task fail without running.

An interrupt (Ctrl-C) never starts the tasks still queued: the pool is shut down with its
queued futures cancelled, and ``KeyboardInterrupt`` propagates.

Example::

    tasks = [Task("float/0", train_float, (0,)), Task("qat/0", train_qat, (0,), after="float/0")]
    failed = run_tasks(tasks, jobs=2, on_done=lambda task, result: print(task.key, result))
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any


@dataclass(frozen=True)
class Task:
    """``fn(*args)`` under the name ``key``, started only after the task ``after`` succeeded."""

    key: str
    fn: Callable[..., Any]
    args: tuple = ()
    after: str | None = None


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def run_tasks(
    tasks: Sequence[Task],
    jobs: int,
    *,
    on_done: Callable[[Task, Any], None] | None = None,
    on_error: Callable[[Task, str], None] | None = None,
    keep_going: bool = False,
) -> dict[str, str]:
    """Run ``tasks`` (module docstring); return ``{key: error text}`` of the failed ones.

    ``on_done(task, result)`` is called in this process as each task finishes, in completion
    order; ``on_error(task, text)`` for each failure when ``keep_going`` (the text is the
    traceback, or why the task did not run).
    """
    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):
        raise ValueError("run_tasks: task keys must be unique")
    unknown = {t.after for t in tasks if t.after is not None} - set(keys)
    if unknown:
        raise ValueError(f"run_tasks: tasks wait for unknown tasks {sorted(unknown)}")
    done: set[str] = set()
    failed: dict[str, str] = {}

    def finished(task: Task, result: Any) -> None:
        done.add(task.key)
        if on_done is not None:
            on_done(task, result)

    def failure(task: Task, text: str) -> None:
        failed[task.key] = text
        if on_error is not None:
            on_error(task, text)

    def skip_blocked(pending: list[Task]) -> None:
        for task in [t for t in pending if t.after in failed]:
            pending.remove(task)
            failure(task, f"it waits for {task.after}, which failed")

    def left_waiting(pending: list[Task]) -> dict[str, str]:
        """Fail the tasks still waiting (a cycle of ``after``); all failures."""
        for task in pending:
            failure(task, f"it waits for {task.after}, which never ran (a cycle of tasks)")
        return failed

    def ready(pending: list[Task]) -> list[Task]:
        skip_blocked(pending)
        return [t for t in pending if t.after is None or t.after in done]

    pending = list(tasks)
    if jobs <= 1:
        while next_tasks := ready(pending):
            task = next_tasks[0]
            pending.remove(task)
            try:
                result = task.fn(*task.args)
            except Exception:
                if not keep_going:
                    raise
                failure(task, traceback.format_exc())
                continue
            finished(task, result)
        return left_waiting(pending)

    pool = ProcessPoolExecutor(
        max_workers=jobs, mp_context=get_context("spawn"), initializer=_one_thread
    )
    try:
        running: dict[Future, Task] = {}
        while pending or running:
            for task in ready(pending):
                pending.remove(task)
                running[pool.submit(task.fn, *task.args)] = task
            if not running:
                break  # what is left waits for tasks that never finished
            completed, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in completed:
                task = running.pop(future)
                try:
                    result = future.result()
                except Exception as err:
                    if not keep_going:
                        raise
                    failure(task, "".join(traceback.format_exception(err)))
                    continue
                finished(task, result)
    finally:  # on an error or an interrupt, do not start what is still queued
        pool.shutdown(wait=True, cancel_futures=True)
    return left_waiting(pending)
