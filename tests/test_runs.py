"""The run record: a typed run.json, the status and its questions, runs from before the redesign."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mnistctl.run.directory import RunRecord, Timing, load_run
from mnistctl.status import Status
from mnistctl.train.events import EvalRecord

from .conftest import CONFIGS

OLD_RUN = Path(__file__).parent / "data" / "run-before-redesign"  # written by mnistctl 1c78572


def test_a_run_from_before_the_redesign_loads_as_a_typed_record():
    run = load_run(OLD_RUN)
    record = run.record
    assert record.status is Status.COMPLETED and run.status is Status.COMPLETED
    assert record.name == "tiny" and record.seed == 0 and record.parameters == 12770
    assert record.steps_total == record.steps_done == 20 and record.best_step == 20
    assert isinstance(record.final, EvalRecord) and record.final.step == 20
    assert record.final.validation_accuracy == pytest.approx(0.325)
    assert isinstance(record.timing, Timing) and record.timing.images_per_s == pytest.approx(3981.4)
    assert record.selected_by == "validation" and record.best_validation_accuracy is None  # not kept then
    assert run.experiment().selection_metric == "validation_accuracy"


def test_the_record_round_trips_and_keeps_keys_it_does_not_know(tmp_path):
    data = json.loads((OLD_RUN / "run.json").read_text())
    data["from_the_future"] = {"x": 1}
    record = RunRecord.from_json(data)
    assert record.extra == {"from_the_future": {"x": 1}}
    written = record.to_json()
    assert written["from_the_future"] == {"x": 1} and written["status"] == "completed"
    assert RunRecord.from_json(written) == record
    assert json.loads(json.dumps(written)) == written  # plain JSON: no enums or dataclasses left


def test_update_writes_run_json_and_refuses_unknown_fields(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(OLD_RUN, run_dir)
    run = load_run(run_dir)
    assert run.record.status is Status.COMPLETED
    run.update(status=Status.RESUMING, steps_done=12)
    again = json.loads((run_dir / "run.json").read_text())
    assert again["status"] == "resuming" and again["steps_done"] == 12 and again["heartbeat"] > 0
    with pytest.raises(TypeError, match="no field 'stauts'"):
        run.update(stauts="completed")


@pytest.mark.parametrize("status", ["created", "resuming", "running"])
def test_a_claimed_run_whose_process_is_gone_is_crashed(tmp_path, status):
    run_dir = tmp_path / "run"
    shutil.copytree(OLD_RUN, run_dir)
    data = json.loads((run_dir / "run.json").read_text())
    data.update(status=status, pid=2**22 + 12345, heartbeat=0)  # a pid that does not exist
    (run_dir / "run.json").write_text(json.dumps(data))
    run = load_run(run_dir)
    assert run.record.status == status and run.status is Status.CRASHED and run.status.resumable


def test_status_questions():
    assert [s.value for s in Status if s.claimed] == ["created", "resuming", "running"]
    assert [s.value for s in Status if s.resumable] == ["interrupted", "crashed"]
    assert [s.value for s in Status if s.finished] == ["completed", "target_reached", "early_stopped"]
    assert [s.value for s in Status if s.ended_by_rule] == ["target_reached", "early_stopped"]
    assert not Status.FAILED.resumable and not Status.STOPPED.resumable  # neither is retried by itself
    assert Status.parse("no such status") is Status.UNKNOWN and str(Status.RUNNING) == "running"


def test_a_run_json_that_is_not_a_record_is_one_error(tmp_path):
    from mnistctl.run.directory import RunError

    run_dir = tmp_path / "run"
    shutil.copytree(OLD_RUN, run_dir)
    (run_dir / "run.json").write_text('{"steps_done": "many", "final": {"step": "x"}}')
    with pytest.raises(RunError, match=r"run\.json: not a run record"):
        load_run(run_dir)


def test_cpu_lookups_read_cpuinfo_and_fall_back(tmp_path, monkeypatch):
    from mnistctl import machine

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 amx_bf16\n")
    monkeypatch.setattr(machine, "CPUINFO", info)
    assert machine.cpu_model() == "Some CPU" and machine.cpu_has_bfloat16()
    info.write_text("model name\t: Other\nflags\t\t: fpu avx2 avx512f\n")
    assert not machine.cpu_has_bfloat16()
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "missing")
    assert machine.cpu_model() and not machine.cpu_has_bfloat16()


def test_a_machine_summary_names_what_decides_the_kernels(tmp_path, monkeypatch):
    from mnistctl import machine

    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(machine, "CPUINFO", info)
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    info.write_text(
        "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n"
    )
    described = machine.describe()
    assert described["vector"] == ["AVX2"] and described["bfloat16"] is False
    assert machine.summary(described).startswith("AMD EPYC (Zen 3), ")  # family 25 without AVX-512
    assert machine.summary(described).endswith(" cores, AVX2, no AMX")
    info.write_text(info.read_text().replace("avx2 fma", "avx2 fma avx512f avx512_bf16"))
    assert machine.describe()["family"] == "Zen 4"
    info.write_text(
        "vendor_id\t: GenuineIntel\nmodel name\t: Xeon\nflags\t: avx2 avx512f avx512_bf16 amx_bf16\n"
    )
    assert machine.vector_extensions() == ["AMX", "AVX512_BF16", "AVX-512", "AVX2"]
    assert machine.bfloat16_takes_effect()
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert not machine.bfloat16_takes_effect() and machine.summary().endswith("oneDNN off")


def _damaged_copies(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    names = ("fine", "junk-metrics", "bad-heartbeat", "junk-distributions", "cut-predictions", "bad-yaml")
    for name in names:
        shutil.copytree(OLD_RUN, runs / name)
    (runs / "bad-yaml" / "config.yaml").write_text("model:\n  layers: [\n  - {a: 1\n")
    (runs / "junk-metrics" / "metrics.csv").write_bytes(b"\x89PNG\x00\xff\xfe" * 100)
    data = json.loads((runs / "bad-heartbeat" / "run.json").read_text())
    (runs / "bad-heartbeat" / "run.json").write_text(json.dumps({**data, "heartbeat": "x"}))
    (runs / "junk-distributions" / "distributions.csv").write_bytes(b"\xff\x00" * 50)
    predictions = runs / "cut-predictions" / "predictions.npz"
    predictions.write_bytes(predictions.read_bytes()[:300])
    return runs


def test_compare_shows_damaged_runs_as_damaged_and_lists_the_rest(tmp_path):
    from click.testing import CliRunner

    from mnistctl.cli import main

    runs = _damaged_copies(tmp_path)
    result = CliRunner().invoke(main, ["compare", str(runs), "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output[result.output.index("[") :])
    status = {row["run"]: row["status"] for row in rows}
    assert status == {"cut-predictions": "completed", "fine": "completed", "junk-distributions": "completed",
                      "junk-metrics": "damaged", "bad-yaml": "completed"}  # fmt: skip
    assert (
        f"{runs / 'bad-heartbeat' / 'run.json'}: not a run record (heartbeat is 'x', not a number)"
        in result.output
    )
    assert f"{runs / 'junk-metrics' / 'metrics.csv'}: damaged: not a CSV text file" in result.output


@pytest.mark.parametrize(
    ("run", "args", "message"),
    [
        ("junk-metrics", ["plot"], "metrics.csv: damaged: not a CSV text file (UnicodeDecodeError)"),
        (
            "junk-distributions",
            ["plot"],
            "distributions.csv: damaged: not a CSV text file (UnicodeDecodeError)",
        ),
        ("cut-predictions", ["plot"], "predictions.npz: damaged: not a readable archive of arrays"),
        ("bad-heartbeat", ["plot"], "run.json: not a run record (heartbeat is 'x', not a number)"),
        ("junk-metrics", ["train", "--resume"], "metrics.csv: damaged: not a CSV text file"),
        ("bad-yaml", ["eval"], "config.yaml: line 3, column 3: invalid YAML: expected the node content"),
        ("bad-yaml", ["train", "--resume"], "config.yaml: line 3, column 3: invalid YAML"),
    ],
)
def test_a_damaged_run_file_is_one_line_naming_it(tmp_path, run, args, message):
    from click.testing import CliRunner

    from mnistctl.cli import main

    runs = _damaged_copies(tmp_path)
    before = (runs / run / "run.json").read_bytes()
    result = CliRunner().invoke(main, [*args, str(runs / run)])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert runs / run in [Path(word.rstrip(":")).parent for word in line.split()], line  # names the file
    assert line.startswith("error: ") and message in line, line
    assert (runs / run / "run.json").read_bytes() == before  # nothing changed


def test_training_time_adds_up_the_processes_of_a_resumed_run():
    from mnistctl.run.writers import training_time

    def rows(*elapsed):
        return [{"step": 10.0 * (i + 1), "elapsed_s": e} for i, e in enumerate(elapsed)]

    assert training_time(rows(5.0, 10.0, 15.0)) == 15.0  # one process, or a clock that went on
    assert training_time(rows(5.0, 10.0, 4.0, 9.0)) == 19.0  # an older run: the clock restarted
    assert training_time([]) == 0.0


ALLOWED = {
    ("created", "running"), ("created", "resuming"), ("created", "interrupted"), ("created", "failed"),
    ("resuming", "running"), ("resuming", "interrupted"), ("resuming", "failed"),
    ("running", "completed"), ("running", "interrupted"), ("running", "diverged"), ("running", "failed"),
    ("running", "stopped"), ("running", "target_reached"), ("running", "early_stopped"),
    ("running", "resuming"),  # reclaimed: the process that claimed it is gone
    ("completed", "resuming"), ("interrupted", "resuming"), ("diverged", "resuming"),
    ("failed", "resuming"), ("target_reached", "resuming"), ("early_stopped", "resuming"),
    ("stopped", "resuming"), ("stopped", "interrupted"), ("interrupted", "stopped"),  # a sweep's word
}  # fmt: skip


@pytest.mark.parametrize("old", [s for s in Status if s not in (Status.CRASHED, Status.UNKNOWN)])
def test_a_runs_status_changes_only_as_its_life_allows(tmp_path, old):
    from mnistctl.config import load_config
    from mnistctl.run.directory import create_run
    from mnistctl.status import StatusError

    run = create_run(tmp_path, load_config(CONFIGS / "tiny.yaml"))
    run.record.status = old
    for new in Status:
        before = (run.path / "run.json").read_text()
        if new == old or (old.value, new.value) in ALLOWED:
            run.update(status=new)
            assert load_run(run.path).record.status is new
            run.record.status = old
        else:
            with pytest.raises(StatusError, match=f"may not go from {old} to {new}"):
                run.update(status=new)
            assert (run.path / "run.json").read_text() == before  # nothing written
