"""Run an experiment's independent tasks in this process, in local processes, or on a Dask cluster.

``run_tasks(module, config, tasks)`` calls ``module.run_task(config, task)`` for every task and
concatenates the DataFrames **in task order**, so the result (and the stored parquet) is the same
whichever way the tasks ran. Every task runs with one torch thread and deterministic algorithms,
in-process and in each worker alike (a task's numbers must not depend on where it ran).

- ``workers=1``: in this process, one task after the other;
- ``workers=N``: a pool of N local processes, started with ``spawn`` (a fresh interpreter each,
  nothing inherited from this one but the import path and environment) and reused by later calls;
- ``scheduler="tcp://HOST:PORT"``: an existing Dask distributed cluster (``distributed.Client``).
  Its workers must run the same code: before submitting, each worker's digest of the ``analysis``
  and ``dice_impls`` sources, the experiment module and the torch/numpy/pandas versions
  (:func:`code_identity`) is compared with this process's, and a mismatch is refused.

Progress counts tasks (``analysis.progress.track``: a tqdm bar on a terminal, plain lines otherwise).

With a ``cache`` folder, each task's DataFrame is pickled there (``<key>.pkl``) by this process as
soon as the task finishes, wherever it ran; the key digests the experiment module, the task, the
config and :func:`code_identity`, so changed code or settings never match an old entry. With
``resume=True`` the tasks found there are read instead of run, so an interrupted run continues
from its finished tasks with the same result.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, List, Optional, Sequence

import pandas as pd
import torch

from .progress import track


class TaskError(RuntimeError):
    """A task raised; the message names the experiment and the task."""


def check_tasks(module: ModuleType, tasks: Sequence[dict]) -> List[dict]:
    """The tasks as a list, each checked to be a dict that survives JSON unchanged."""
    tasks = list(tasks)
    for task in tasks:
        if not isinstance(task, dict) or json.loads(json.dumps(task)) != task:
            raise ValueError(f"{module.__name__}: every task must be a JSON-serialisable dict of plain values "
                             f"(lists, not tuples), got {task!r}")
    return tasks


def run_task(module_name: str, config, task: dict) -> pd.DataFrame:
    """One task of experiment module ``module_name``, on one torch thread, deterministically.

    Module-level (and given the module by name) so that worker processes can unpickle it.
    """
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    module = import_module(module_name)
    try:
        frame = module.run_task(config, task)
    except Exception as error:
        raise TaskError(f"{module_name} task {task!r} failed: {type(error).__name__}: {error}") from error
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{module_name}.run_task must return a pandas DataFrame, got {type(frame).__name__}")
    return frame


def run_tasks(module: ModuleType, config, tasks: Sequence[dict], *, workers: int = 1,
              scheduler: Optional[str] = None, progress: bool = True, cache: Optional[Path] = None,
              resume: bool = False) -> pd.DataFrame:
    """``module.run_task(config, task)`` for every task, concatenated in task order; each finished
    task's frame is kept in ``cache`` and, with ``resume``, read from it (see the module docstring)."""
    tasks = check_tasks(module, tasks)
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if scheduler is not None and workers != 1:
        raise ValueError("give either workers (local processes) or scheduler (a Dask cluster), not both")
    if scheduler is not None and "://" not in scheduler:
        raise ValueError(f"scheduler must be an address such as tcp://HOST:PORT, got {scheduler!r}")
    if resume and cache is None:
        raise ValueError("resume needs a cache folder")
    frames: Dict[int, pd.DataFrame] = {}
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        identity = code_identity(module.__name__)
        paths = [cache / f"{task_key(module.__name__, config, task, identity)}.pkl" for task in tasks]
        if resume:
            frames = {i: pd.read_pickle(path) for i, path in enumerate(paths) if path.is_file()}
    todo = [i for i in range(len(tasks)) if i not in frames]
    bar = track(total=len(tasks), desc=module.__name__.rsplit(".", 1)[-1], unit="task", disable=not progress)
    bar.update(len(frames))  # the cached tasks count as done up front

    def finished(position: int, frame: pd.DataFrame) -> None:
        """Task ``todo[position]`` is done: keep it, and cache it now so an interruption keeps it too."""
        frames[todo[position]] = frame
        if cache is not None:
            _write_atomically(paths[todo[position]], frame)
        bar.update()

    try:
        pending = [tasks[i] for i in todo]
        if scheduler is not None:
            _on_dask(module, config, pending, scheduler, finished)
        elif workers > 1 and len(pending) > 1:
            _in_processes(module, config, pending, workers, finished)
        else:
            _in_process(module, config, pending, finished)
    finally:
        bar.close()
    ordered = [frames[i] for i in range(len(tasks)) if len(frames[i])]
    return pd.concat(ordered, ignore_index=True) if ordered else pd.DataFrame()


def task_key(module_name: str, config, task: dict, identity: str) -> str:
    """The cache key of a task: what its frame is determined by (configs are frozen dataclasses,
    whose repr lists every field; ``identity`` is :func:`code_identity`)."""
    parts = (module_name, json.dumps(task, sort_keys=True), repr(config), identity)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _write_atomically(path: Path, frame: pd.DataFrame) -> None:
    # Pickle, not parquet: parquet turns object columns into typed ones (all-bool objects into bool,
    # ints and None into float), so a cached task would not concatenate to the same bytes.
    # Write then rename, so a kill never leaves a half file that a resume would read.
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    frame.to_pickle(partial)
    os.replace(partial, path)


Finished = Callable[[int, pd.DataFrame], None]


def _in_process(module, config, tasks, finished: Finished) -> None:
    previous = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        for position, task in enumerate(tasks):
            finished(position, run_task(module.__name__, config, task))
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])


_POOLS: Dict[int, ProcessPoolExecutor] = {}


def local_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes, kept for the rest of this process: starting one
    (torch import, extension load) costs seconds, so ``dicebench experiment all`` starts it once."""
    pool = _POOLS.get(workers)
    if pool is None:
        pool = _POOLS[workers] = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    return pool


def _in_processes(module, config, tasks, workers, finished: Finished) -> None:
    pool = local_pool(workers)
    futures = {pool.submit(run_task, module.__name__, config, task): position
               for position, task in enumerate(tasks)}
    pending = set(futures)
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            # Successes first, so that a failure (raised here) does not keep them out of the cache.
            for future in sorted(done, key=lambda f: f.exception() is not None):
                finished(futures[future], future.result())
    except BrokenProcessPool:
        del _POOLS[workers]  # a worker died; the next call starts a fresh pool
        raise
    finally:
        for future in pending:
            future.cancel()


def code_identity(module_name: str) -> str:
    """A digest of what a task's numbers depend on besides its inputs: the source of ``analysis``,
    ``dice_impls`` and the experiment module, and the torch, numpy and pandas versions."""
    import dice_impls
    import numpy

    digest = hashlib.sha256(f"{torch.__version__} {numpy.__version__} {pd.__version__}".encode())
    module_file = Path(import_module(module_name).__file__)
    files = [(Path(package.__file__).parent, sorted(Path(package.__file__).parent.rglob("*.py")))
             for package in (sys.modules[__package__], dice_impls)] + [(module_file.parent, [module_file])]
    for root, paths in files:
        for path in paths:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _on_dask(module, config, tasks, scheduler, finished: Finished) -> None:
    try:
        from distributed import Client, as_completed
    except ImportError as error:
        raise ImportError("--scheduler needs the Dask distributed package: pip install 'dicebench[experiments]'") from error

    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError) as error:
        raise ConnectionError(f"could not reach the Dask scheduler at {scheduler}: {error}") from error
    with client:
        ours = code_identity(module.__name__)
        theirs = client.run(code_identity, module.__name__)
        if not theirs:
            raise ConnectionError(f"the Dask cluster at {scheduler} has no workers")
        stale = sorted(worker for worker, identity in theirs.items() if identity != ours)
        if stale:
            raise RuntimeError(f"Dask workers {stale} run different code or library versions than this checkout; "
                               "start them from the same commit and environment")
        futures = {client.submit(run_task, module.__name__, config, task, pure=False): position
                   for position, task in enumerate(tasks)}
        try:
            for future in as_completed(futures):
                finished(futures[future], future.result())  # raises the task's error here
        finally:
            client.cancel(list(futures))
