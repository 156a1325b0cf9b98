"""The task runner: in-process, local processes and a Dask cluster give byte-identical stored
results; bad tasks and failing tasks are reported with the task named; progress counts tasks;
the task cache lets an interrupted run resume to the same bytes, and only for the same code and config."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

import fake_experiment
from analysis.experiments import EXPERIMENTS, config_for
from analysis.runner import TaskError, code_identity, run_tasks
from analysis.storage import load_results, run_experiment


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setitem(EXPERIMENTS, "fake", fake_experiment)
    previous = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield fake_experiment
    torch.set_num_threads(previous[0])
    torch.use_deterministic_algorithms(previous[1])


@pytest.fixture(scope="module")
def dask_cluster():
    import distributed  # the experiments extra, in dev: a missing one fails, it is not skipped

    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, host="127.0.0.1",
                                  protocol="tcp", dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        yield cluster.scheduler_address


def test_local_processes_and_dask_store_the_same_bytes_as_in_process(fake, dask_cluster, tmp_path):
    runs = {"in_process": dict(), "processes": dict(workers=2), "dask": dict(scheduler=dask_cluster)}
    for label, where in runs.items():
        df, claims, manifest = run_experiment("fake", tmp_path / label, seed=5, progress=False, **where)
        assert manifest["tasks"] == 6 and manifest["workers"] == where.get("workers", 1)
        assert manifest["scheduler"] == where.get("scheduler")
        assert manifest["code_digest"] == code_identity(fake_experiment.__name__)
    parquet = {label: (tmp_path / label / "fake" / "results.parquet").read_bytes() for label in runs}
    assert parquet["processes"] == parquet["in_process"]
    assert parquet["dask"] == parquet["in_process"]
    claims = {label: (tmp_path / label / "fake" / "claims.json").read_text() for label in runs}
    assert claims["processes"] == claims["in_process"] == claims["dask"]

    stored, _, _ = load_results(tmp_path / "in_process", "fake")
    # In task order: seed-major, then setting, four rows each; and not all the same numbers.
    assert stored["label"].tolist()[:5] == ["t0r0", "t0r1", "t0r2", "t0r3", "t1r0"]
    assert stored["seed"].tolist() == [5] * 8 + [6] * 8 + [7] * 8
    assert stored["value"].nunique() == len(stored)
    other, _, _ = run_experiment("fake", tmp_path / "other", seed=6, progress=False)
    assert not other["value"].equals(stored["value"])


def test_the_parent_keeps_its_torch_settings(fake):
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(False)
    config = config_for(fake, "small")
    run_tasks(fake, config, fake.tasks(config), progress=False)
    assert torch.get_num_threads() == 2 and not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("where", [dict(), dict(workers=2)], ids=["in_process", "processes"])
def test_a_failing_task_is_named(fake, where):
    config = config_for(fake, "small", fail_task=3)
    with pytest.raises(TaskError, match=r"fake_experiment task \{'index': 3, .*this task was told to fail"):
        run_tasks(fake, config, fake.tasks(config), progress=False, **where)


def test_a_failing_task_on_dask_is_named(fake, dask_cluster):
    config = config_for(fake, "small", fail_task=1)
    with pytest.raises(TaskError, match=r"task \{'index': 1, .*told to fail"):
        run_tasks(fake, config, fake.tasks(config), scheduler=dask_cluster, progress=False)


@pytest.mark.parametrize("tasks, message", [
    ([dict(index=0, shape=(1, 2))], "JSON-serialisable"),  # a tuple comes back from JSON as a list
    (["not a dict"], "JSON-serialisable"),
    ([dict(index=0, value=float("nan"))], "JSON-serialisable"),  # NaN != NaN: not a stable task
])
def test_tasks_must_be_plain_json(fake, tasks, message):
    with pytest.raises(ValueError, match=message):
        run_tasks(fake, config_for(fake, "small"), tasks, progress=False)


@pytest.mark.parametrize("kwargs, message", [
    (dict(workers=0), "positive integer"), (dict(workers=2, scheduler="tcp://127.0.0.1:1"), "not both"),
    (dict(scheduler="127.0.0.1:8786"), "tcp://HOST:PORT"), (dict(resume=True), "needs a cache folder"),
])
def test_bad_runner_settings(fake, kwargs, message):
    config = config_for(fake, "small")
    with pytest.raises(ValueError, match=message):
        run_tasks(fake, config, fake.tasks(config), progress=False, **kwargs)


def test_no_tasks_give_an_empty_frame(fake):
    assert run_tasks(fake, config_for(fake, "small"), [], progress=False).equals(pd.DataFrame())


def test_dask_workers_running_other_code_are_refused(fake, dask_cluster, monkeypatch):
    from analysis import runner

    digests = iter(["this checkout", "another checkout"])  # ours first, then the worker's
    monkeypatch.setattr(runner, "code_identity", lambda module_name: next(digests))
    config = config_for(fake, "small")
    with pytest.raises(RuntimeError, match="run different code"):
        run_tasks(fake, config, fake.tasks(config), scheduler=dask_cluster, progress=False)


def test_code_identity_is_a_stable_digest():
    first = code_identity(fake_experiment.__name__)
    assert len(first) == 64 and first == code_identity(fake_experiment.__name__)
    assert first != code_identity("analysis.experiments.p1_precision")


def test_a_real_experiment_stores_the_same_bytes_in_local_processes(tmp_path):
    name = "d1_distributed"  # torch autograd and dice_impls in every task, 8 tasks in ~1 s
    for label, workers in (("one", 1), ("two", 2)):
        run_experiment(name, tmp_path / label, workers=workers, progress=False)
    first, second = ((tmp_path / label / name / "results.parquet").read_bytes() for label in ("one", "two"))
    assert first == second



RUN_TASK = fake_experiment.run_task


def counted_runs(monkeypatch, fail_at: int = -1) -> list:
    """From now on, the indices of the fake tasks run in this process (in order); task ``fail_at`` raises."""
    ran = []

    def run_task(config, task):
        ran.append(task["index"])
        if task["index"] == fail_at:
            raise RuntimeError("interrupted")
        return RUN_TASK(config, task)

    monkeypatch.setattr(fake_experiment, "run_task", run_task)
    return ran


def cache_files(out) -> list:
    return sorted(path.name for path in (out / ".task-cache" / "fake").iterdir())


def test_an_interrupted_experiment_resumes_from_its_finished_tasks(fake, monkeypatch, tmp_path, capsys):
    from analysis.cli import main

    run_experiment("fake", tmp_path / "whole", progress=False)
    ran = counted_runs(monkeypatch, fail_at=3)
    command = ["experiment", "fake", "--out", str(tmp_path / "cut"), "--no-figures"]
    with pytest.raises(TaskError, match="interrupted"):
        main(command)
    assert ran == [0, 1, 2, 3] and len(cache_files(tmp_path / "cut")) == 3
    assert not (tmp_path / "cut" / "fake" / "results.parquet").exists()

    ran = counted_runs(monkeypatch)
    capsys.readouterr()
    assert main(command + ["--resume"]) == 0
    assert ran == [3, 4, 5]
    assert "fake_experiment: 6/6" in capsys.readouterr().err  # the cached tasks count as done
    stored = {label: (tmp_path / label / "fake" / "results.parquet").read_bytes() for label in ("whole", "cut")}
    assert stored["cut"] == stored["whole"]


@pytest.mark.parametrize("where", ["in_process", "processes", "dask"])
def test_every_runner_fills_the_cache_and_a_resume_from_it_stores_the_same_bytes(fake, dask_cluster, monkeypatch,
                                                                                tmp_path, where):
    where = {"in_process": dict(), "processes": dict(workers=2), "dask": dict(scheduler=dask_cluster)}[where]
    computed, _, _ = run_experiment("fake", tmp_path, seed=5, progress=False, **where)
    stored = (tmp_path / "fake" / "results.parquet").read_bytes()
    files = cache_files(tmp_path)
    assert len(files) == 6 and all(name.endswith(".pkl") for name in files)  # no partial file left

    for name in files[1:3]:  # as if those two had not finished: the resume runs them where the first run did
        (tmp_path / ".task-cache" / "fake" / name).unlink()
    run_experiment("fake", tmp_path, seed=5, progress=False, resume=True, **where)
    assert cache_files(tmp_path) == files and (tmp_path / "fake" / "results.parquet").read_bytes() == stored

    ran = counted_runs(monkeypatch)
    cached, _, _ = run_experiment("fake", tmp_path, seed=5, progress=False, resume=True)
    assert ran == []
    pd.testing.assert_frame_equal(cached, computed, check_exact=True)  # the dtypes survive the cache
    assert (tmp_path / "fake" / "results.parquet").read_bytes() == stored


def test_the_cache_is_read_only_on_resume_and_only_for_the_same_code_and_config(fake, monkeypatch, tmp_path):
    from analysis import runner

    ran = counted_runs(monkeypatch)
    run_experiment("fake", tmp_path, progress=False)
    run_experiment("fake", tmp_path, progress=False)
    assert ran == [*range(6)] * 2 and len(cache_files(tmp_path)) == 6  # written, not read, without resume

    del ran[:]
    run_experiment("fake", tmp_path, progress=False, resume=True)
    assert ran == []
    with monkeypatch.context() as patch:
        patch.setattr(runner, "code_identity", lambda module_name: "other code")
        run_experiment("fake", tmp_path, progress=False, resume=True)
    assert ran == [*range(6)]

    del ran[:]
    monkeypatch.setitem(fake.SCALES, "small", dataclasses.replace(fake.SCALES["small"], hypothesis_threshold=-20.0))
    run_experiment("fake", tmp_path, progress=False, resume=True)  # the same tasks, another config
    assert ran == [*range(6)] and len(cache_files(tmp_path)) == 18


def test_object_columns_come_back_from_the_cache_unchanged(fake, monkeypatch, tmp_path):
    # The training experiments keep flags such as `collapsed` as objects (True, False or None); parquet
    # would read a task's all-bool object column back as bool, and the stored bytes would change.
    monkeypatch.setattr(fake_experiment, "run_task", lambda config, task: RUN_TASK(config, task).assign(
        collapsed=pd.Series([task["index"] % 2 == 0] * 4, dtype=object)))
    computed, _, _ = run_experiment("fake", tmp_path, progress=False)
    stored = (tmp_path / "fake" / "results.parquet").read_bytes()
    ran = counted_runs(monkeypatch)
    cached, _, _ = run_experiment("fake", tmp_path, progress=False, resume=True)
    assert ran == [] and cached["collapsed"].dtype == object
    pd.testing.assert_frame_equal(cached, computed, check_exact=True)
    assert (tmp_path / "fake" / "results.parquet").read_bytes() == stored
