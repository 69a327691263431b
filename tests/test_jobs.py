"""One driver for many runs: a reproduction's runs, a sweep's trials and an ensemble's members
are jobs trained by the same ``run_job``, with one resume decision."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from mnistctl.config import Experiment, load_config
from mnistctl.many import jobs as jobs_module
from mnistctl.many.driver import run_jobs
from mnistctl.many.ensemble import members_of
from mnistctl.many.jobs import Job, job_state
from mnistctl.many.reproduce import Seeded, config_sha
from mnistctl.many.sweep import grid_sweep, load_sweep
from mnistctl.many.trial import TrialPlan
from mnistctl.run.directory import load_run
from mnistctl.status import Status
from mnistctl.train.events import Hook, TrainContext

from .conftest import CONFIGS

SMALL = ("train.steps=40", "train.eval_every=10", "train.checkpoint_every=10", "data.train_size=1000",
         "data.test_size=500")  # fmt: skip
# The record network's layers, narrowed: its shape (convolutions with batch norm, dropout) as shipped.
NARROW = ("model.layers[0].filters=4", "model.layers[1].filters=4", "model.layers[2].filters=4",
          "model.layers[3].units=16")  # fmt: skip


class StopAt(Hook):
    """Asks the run to stop (as Ctrl-C does) once it has trained ``step`` steps."""

    def __init__(self, step: int) -> None:
        self.step, self.seen = step, 0

    def after_step(self, ctx: TrainContext) -> None:
        self.seen = ctx.step

    def __call__(self) -> bool:
        return self.seen >= self.step


def reproduction_job() -> Job:
    exp = load_config(CONFIGS / "tiny.yaml", [*SMALL, "train.seed=0"])
    return Seeded(CONFIGS / "tiny.yaml", 0, exp, config_sha(exp)).job


def sweep_job() -> Job:
    """A trial of ``sweep tiny --grid train.batch_size=50,100``."""
    sweep = grid_sweep(
        CONFIGS / "tiny.yaml", ("train.batch_size=50,100",), (*SMALL, "data.validation=200"), print
    )
    return TrialPlan("unused", 1, sweep=sweep).job({"train.batch_size": 50}, "ab12c_00003")


def ensemble_member_job() -> Job:
    """A member of the shipped ensemble sweep (the record network, one seed), made small."""
    sweep = load_sweep(CONFIGS / "sweeps" / "record_ensemble.yaml", (*SMALL, *NARROW, "data.validation=200"))
    return TrialPlan("unused", 1, sweep=sweep).job({"train.seed": 2}, "ab12c_00002")


def test_a_sweep_trial_keeps_its_config_typed_on_the_way_to_the_worker():
    job = sweep_job()
    plan = pickle.loads(
        pickle.dumps(TrialPlan("runs", 1, sweep=load_sweep(CONFIGS / "sweeps" / "record_ensemble.yaml")))
    )
    shipped = plan.job({"train.seed": 4}, "x_00004")
    assert isinstance(shipped.experiment, Experiment) and shipped.experiment.train.seed == 4
    assert shipped.name == "trial-00004" and shipped.record == {"sweep": plan.sweep.name}
    assert job.name == "trial-00003" and isinstance(job.experiment, Experiment)


@pytest.mark.parametrize("make", [reproduction_job, sweep_job, ensemble_member_job])
def test_every_kind_of_job_resumes_through_the_one_driver(make, mnist_cache, tmp_path, monkeypatch):
    job = make()
    runs = tmp_path / "runs"
    calls: list[str] = []
    real = jobs_module.run_job
    monkeypatch.setattr(
        jobs_module, "run_job", lambda job, *a, **k: calls.append(job.name) or real(job, *a, **k)
    )
    finished: list[str] = []

    def record(job: Job, run) -> None:
        finished.append(run.name)

    assert job_state(job, runs) == "new"
    stop = StopAt(15)
    (first,) = run_jobs([job], runs, extra_hooks=[stop], should_stop=stop, on_finished=record)
    assert first.path == runs / job.name and first.record.status is Status.INTERRUPTED
    assert job_state(job, runs) == "resume" and finished == []

    (second,) = run_jobs([job], runs, on_finished=record)  # the same directory, continued
    assert second.path == first.path and second.record.status is Status.COMPLETED
    assert [r.from_step for r in second.record.resumes] == [15]  # from where it stopped (checkpointed)
    assert finished == [job.name] and job_state(job, runs) == "done"

    before = (runs / job.name / "run.json").read_bytes()
    (third,) = run_jobs([job], runs, on_finished=record)  # finished: nothing trains
    assert (runs / job.name / "run.json").read_bytes() == before
    assert third.record.status is Status.COMPLETED and finished == [job.name, job.name]
    assert calls == [job.name] * 3 and sorted(p.name for p in runs.iterdir()) == [job.name]


def test_the_members_a_sweep_trained_make_an_ensemble(mnist_cache, tmp_path):
    runs = tmp_path / "ensemble"
    settings = (*SMALL, *NARROW, "data.validation=200", "train.steps=20")
    sweep = load_sweep(CONFIGS / "sweeps" / "record_ensemble.yaml", settings)
    plan = TrialPlan(str(runs), 1, sweep=sweep)
    jobs = [plan.job({"train.seed": seed}, f"ab12c_0000{seed}") for seed in (0, 1)]
    ran = run_jobs(jobs, runs)
    assert [r.record.status for r in ran] == [Status.COMPLETED] * 2
    members = members_of([runs], split="validation")
    assert sorted(m.run.name for m in members) == ["trial-00000", "trial-00001"]
    assert {load_run(m.run.path).record.seed for m in members} == {0, 1}


def test_a_reproduction_trains_each_run_through_run_job(mnist_cache, tmp_path, monkeypatch):
    from mnistctl.many.reproduce import reproduce

    names: list[str] = []
    real = jobs_module.run_job
    monkeypatch.setattr(
        jobs_module, "run_job", lambda job, *a, **k: names.append(job.name) or real(job, *a, **k)
    )
    rows = reproduce([CONFIGS / "tiny.yaml"], seeds=2, runs_dir=tmp_path / "runs", docs_dir=tmp_path / "docs",
                     overrides=SMALL)  # fmt: skip
    assert [r["seed"] for r in rows] == ["0", "1"]
    assert names == [f"tiny-seed{s}-{rows[0]['config_sha']}" for s in (0, 1)]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(names)
    assert [r["run"] for r in rows] == names


def test_a_changed_config_is_a_new_job_not_a_resume(tmp_path):
    a = reproduction_job()
    exp = load_config(CONFIGS / "tiny.yaml", [*SMALL, "train.seed=0", "train.steps=50"])
    b = Seeded(CONFIGS / "tiny.yaml", 0, exp, config_sha(exp)).job
    assert a.name != b.name and Path(a.name).name.startswith("tiny-seed0-")
