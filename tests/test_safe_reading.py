"""Nothing lost, round three: every file mnistctl reads comes through one guarded door, and odd
inputs are one line naming them (issue 27's reproductions, in miniature; no TensorFlow)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mnistctl.cli import main
from mnistctl.errors import DamagedFileError, MnistctlError
from mnistctl.files import read_json, read_regular

from .conftest import CONFIGS, free_port, serving_in_thread
from .test_runs import OLD_RUN

TINY = CONFIGS / "tiny.yaml"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> str:
    """The CLI's answer to a bad input: exit 2, one 'error:' line naming the problem."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def nested_yaml(depth: int) -> str:
    return "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "leaf: 1\n"


def test_yaml_nested_400_deep_is_one_line_everywhere(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text(nested_yaml(400))
    one_line_error(invoke("validate", deep), str(deep), "nested deeper than 64 levels")
    flow = "[" * 500 + "]" * 500
    one_line_error(invoke("validate", TINY, "--set", f"model={flow}"), "--set model=", "nested deeper")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: {TINY}\nspace:\n  train.seed: {{grid: {flow}}}\n")
    one_line_error(invoke("validate", sweep), str(sweep), "nested deeper")
    one_line_error(invoke("sweep", TINY, "--grid", f"train.seed={flow}"), "nested deeper")


def test_a_runs_deeply_nested_config_does_not_stop_compare(tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(OLD_RUN, runs / "good")
    shutil.copytree(OLD_RUN, runs / "deep")
    (runs / "deep" / "config.yaml").write_text(nested_yaml(400))
    result = invoke("compare", runs, "--format", "csv")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    rows = [line for line in result.output.splitlines() if line.startswith(("good,", "deep,"))]
    assert {line.split(",")[0] for line in rows} == {"good", "deep"}
    (said,) = [line for line in result.output.splitlines() if line.startswith("damaged:")]
    assert str(runs / "deep" / "config.yaml") in said and "nested deeper than 64 levels" in said


def alias_bomb(levels: int = 9) -> str:
    """'Billion laughs': each level a list of nine of the level below (9**9 strings expanded)."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("digest", [False, True], ids=["edited", "with-its-digest"])
def test_an_alias_bomb_in_a_runs_config_is_refused_by_compare_and_the_live_page(tmp_path, digest):
    """A run's config.yaml made a YAML bomb (its digest in run.json too, so it would pass for the
    file training wrote): compare and the live page's listing go on in a second, naming it."""
    import json
    import urllib.error
    import urllib.request

    from mnistctl.run.directory import config_digest
    from mnistctl.serving.live import create_live_app

    runs = tmp_path / "runs"
    shutil.copytree(OLD_RUN, runs / "good")
    shutil.copytree(OLD_RUN, runs / "bomb")
    (runs / "bomb" / "config.yaml").write_text(bomb := alias_bomb())
    if digest:
        record = json.loads((runs / "bomb" / "run.json").read_text())
        (runs / "bomb" / "run.json").write_text(json.dumps({**record, "config_sha256": config_digest(bomb)}))
    started = time.perf_counter()
    result = invoke("compare", runs, "--format", "csv")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "aliases (*name) are not supported" in result.output
    listed = {line.split(",")[0] for line in result.output.splitlines()}
    assert {"good", "bomb"} <= listed, result.output
    with serving_in_thread(create_live_app(runs)) as url:
        with urllib.request.urlopen(url + "/api/runs", timeout=30) as answer:
            assert "good" in {r["name"] for r in json.loads(answer.read())["runs"]}
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "/api/runs/bomb", timeout=30)
        assert refused.value.code == 409 and "aliases" in json.loads(refused.value.read())["error"]
    assert time.perf_counter() - started < 10  # expanded, it would take minutes and gigabytes


def test_a_key_path_of_30000_parts_is_refused_at_once():
    started = time.perf_counter()
    result = invoke("validate", TINY, "--set", "a" + ".a" * 30000 + "=1")
    line = one_line_error(result, "more than 64 parts", "(60,")
    assert len(line) < 200 and time.perf_counter() - started < 5  # was quadratic: > 30 s


@pytest.mark.parametrize("command", ["validate", "train", "sweep", "compare"])
def test_a_fifo_or_a_device_is_refused_not_waited_on(tmp_path, command):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    for target in (fifo, Path("/dev/zero")):
        grid = ["--grid", "train.seed=0,1"] if command == "sweep" else []
        process = subprocess.run(
            [sys.executable, "-m", "mnistctl", command, str(target), *grid],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if command == "compare":  # a run directory is what compare wants: a file is not one
            assert process.returncode == 2 and "Traceback" not in process.stderr, process.stderr
            continue
        assert process.returncode == 2, process.stderr
        assert "not a regular file" in process.stderr and str(target) in process.stderr, process.stderr


def test_a_picture_is_read_only_if_it_is_a_regular_file_within_the_limit(tmp_path):
    sparse = tmp_path / "huge.png"
    with sparse.open("wb") as f:
        f.truncate(3 << 30)  # 3 GB that takes no disk: refused from its size, never read
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for picture, said in (
        (sparse, "at most 10,485,760"),
        (fifo, "a FIFO"),
        (Path("/dev/zero"), "character device"),
    ):
        process = subprocess.run(
            [sys.executable, "-m", "mnistctl", "predict", str(OLD_RUN), str(picture)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert process.returncode != 0 and said in process.stderr and "Traceback" not in process.stderr


def test_the_guarded_reader_refuses_what_is_not_a_small_regular_file(tmp_path):
    big = tmp_path / "big.json"
    big.write_text("[" + "0," * 100 + "0]")
    with pytest.raises(DamagedFileError, match="bytes; a JSON file is at most 10"):
        read_json(big, limit=10)
    with pytest.raises(DamagedFileError, match="expected a JSON object"):
        read_json(big)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DamagedFileError, match="nested too deeply"):
        read_json(deep, expect=list)
    junk = tmp_path / "junk.json"
    junk.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(DamagedFileError, match="not UTF-8"):
        read_json(junk)
    with pytest.raises(DamagedFileError, match="is a directory"):
        read_regular(tmp_path, 10)
    with pytest.raises(DamagedFileError, match="no such"):
        read_regular(tmp_path / "missing", 10)


LEDGER_HEADER = ("config,seed,config_sha,steps,max_test_accuracy,max_step,final_test_accuracy,first_99_step,"
                 "wall_s,images_per_s,cpu,cores,tensorflow,finished_at,run")  # fmt: skip
GOOD_ROW = "tiny,0,abc,20,0.5,20,0.5,,1.0,100,AMD,2,2.21,2026-12-01,r0"


@pytest.mark.parametrize(
    ("ledger", "said"),
    [
        (f"{LEDGER_HEADER}\n{GOOD_ROW.replace(',0,abc', ',x,abc')}\n", "line 2: seed: expected an integer"),
        (f"{LEDGER_HEADER}\n{GOOD_ROW.replace(',1.0,', ',slow,')}\n", "line 2: wall_s: expected a number"),
        (f"{LEDGER_HEADER.replace(',wall_s', '')}\n{GOOD_ROW}\n", "line 1: no column wall_s"),
        (f"{LEDGER_HEADER},seed\n{GOOD_ROW},0\n", "line 1: the column seed is there twice"),
        (f"{LEDGER_HEADER}\n{GOOD_ROW},extra\n", "line 2: more values than columns"),
        ("\x00binary junk\udcff", "not UTF-8"),
    ],
)  # fmt: skip
def test_a_damaged_ledger_is_one_line_before_anything_trains(tmp_path, ledger, said):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "reproduce-runs.csv").write_bytes(ledger.encode("utf-8", "surrogateescape"))  # \udcff: byte 0xff
    result = invoke("reproduce", TINY, "--runs-dir", tmp_path / "runs", "--docs", docs, "--seeds", "1")
    one_line_error(result, str(docs / "reproduce-runs.csv"), said)
    assert not (tmp_path / "runs").exists()  # refused before the first run


@pytest.mark.parametrize("text", ["{not json", '{"e": {"sweep": "s"}}', '{"e": 3}', "[1, 2]"])
def test_a_damaged_ensembles_file_is_one_line(tmp_path, text):
    from mnistctl.many.results import write_tables

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "reproduce-runs.csv").write_text(f"{LEDGER_HEADER}\n{GOOD_ROW}\n")
    (docs / "ensembles.json").write_text(text)
    with pytest.raises(DamagedFileError, match=r"ensembles\.json"):
        write_tables(docs)


@pytest.mark.parametrize("text", ["{torn", '{"classes": "0123456789"}', "[]"])
@pytest.mark.parametrize("command", ["predict", "serve"])
def test_a_damaged_export_description_is_one_line_before_tensorflow(tmp_path, text, command):
    export = tmp_path / "model" / "1"
    export.mkdir(parents=True)
    (export / "saved_model.pb").write_bytes(b"")
    (export / "mnistctl.json").write_text(text)
    picture = tmp_path / "digit.png"
    from PIL import Image

    image = Image.new("L", (28, 28), 255)
    image.paste(0, (10, 6, 16, 22))  # a stroke: a digit to classify
    image.save(picture)
    port = str(free_port())
    args = (
        ["predict", export, picture]
        if command == "predict"
        else ["serve", tmp_path / "model", "--port", port]
    )
    one_line_error(invoke(*args), "mnistctl.json")


def test_names_and_messages_are_shown_as_written(tmp_path):
    emoji = invoke("train", TINY, "--name", "a:smile:b", "--runs-dir", tmp_path)
    assert ":smile:" in emoji.output and "😄" not in emoji.output and emoji.exit_code == 2
    address = invoke("sweep", TINY, "--grid", "train.seed=0,1", "--address", "localhost:abc")
    assert "localhost:abc" in address.output and "🔤" not in address.output
    for name in ("tiny\n", "evil\n"):
        one_line_error(invoke("train", TINY, "--name", name, "--runs-dir", tmp_path), "name")
    assert not any(tmp_path.iterdir())


def sweep_file(write_config, name: str, body: str) -> Path:
    return write_config(f"base: {TINY}\n" + body, name)


def test_sweep_files_are_checked_as_a_whole(write_config):
    from mnistctl.config import ConfigError
    from mnistctl.many.sweep import grid_sweep, load_sweep

    choice = sweep_file(write_config, "s.yaml", """
set: {data.validation: 200}
search: grid
space: {train.seed: {choice: [0, 1]}, train.batch_size: {choice: [50, 100]}}
""")  # fmt: skip
    assert load_sweep(choice).trials == 4  # under grid search a choice is crossed like a grid
    both = sweep_file(write_config, "b.yaml", """
set: {data.train_size: 1000, data.validation: 100}
search: grid
space: {data.validation: {grid: [100, 950]}, train.batch_size: {grid: [50, 60]}}
""")  # fmt: skip
    with pytest.raises(ConfigError, match=r"data\.validation=950, train\.batch_size=60"):
        load_sweep(both)  # each value alone is valid; together they leave too few images
    rungs = sweep_file(write_config, "r.yaml", """
set: {data.validation: 200, train.steps: 100}
space: {train.seed: {grid: [0, 1]}}
scheduler: {asha: {grace_steps: 10, reduction_factor: 1.0000001}}
""")  # fmt: skip
    with pytest.raises(ConfigError, match=r"reduction_factor: 1\.0000001 makes .* rungs"):
        load_sweep(rungs)
    nested = write_config(f"base: {choice}\nspace:\n  train.seed: {{grid: [0, 1]}}\n", "n.yaml")
    with pytest.raises(ConfigError, match=r"is a sweep file; base names the config"):
        load_sweep(nested)
    drawn = sweep_file(write_config, "u.yaml", """
set: {data.validation: 200}
space: {train.batch_size: {uniform: [10, 50]}}
""")  # fmt: skip
    with pytest.raises(ConfigError, match=r"expected an integer.*uniform draws fractions: use randint"):
        load_sweep(drawn)  # its bounds are integers; its draws are not
    budget = sweep_file(write_config, "t.yaml", """
set: {data.validation: 200}
space: {train.seed: {grid: [0, 1]}}
time_budget_minutes: 1e-300
""")  # fmt: skip
    with pytest.raises(ConfigError, match=r"time_budget_minutes: expected a number >= 0\.1"):
        load_sweep(budget)  # no trial could start
    with pytest.raises(ConfigError, match=r"train\.seed is given twice"):
        grid_sweep(TINY, ("train.seed=0,1", "train.seed=2,3"), ("data.validation=200",), print)


def test_validate_says_when_a_sweep_needs_more_cores_than_this_machine(write_config):
    cpus = (os.cpu_count() or 1) + 1
    heavy = sweep_file(write_config, "h.yaml", f"""
set: {{data.validation: 200}}
space: {{train.seed: {{grid: [0, 1]}}}}
resources: {{cpus_per_trial: {cpus}}}
""")  # fmt: skip
    result = invoke("validate", heavy)
    assert result.exit_code == 0 and "is more than the" in result.output and "--address" in result.output


def test_the_live_page_answers_a_long_name_and_keeps_few_datasets(tmp_path, monkeypatch):
    from mnistctl.serving import live

    loaded = []
    monkeypatch.setattr(
        live, "load_experiment_data", lambda exp, data_dir=None: loaded.append(exp) or object()
    )
    monkeypatch.setattr(live, "run_state", lambda run, rows, step, data, tail=None: {"ok": True})
    runs = tmp_path / "runs"
    for size in range(5):  # five runs on five test subsets: five datasets
        shutil.copytree(OLD_RUN, runs / f"r{size}")
        config = runs / f"r{size}" / "config.yaml"
        config.write_text(config.read_text().replace("test_size: 500", f"test_size: {400 + size}"))
    app = live.create_live_app(runs)
    (state,) = [r.endpoint for r in app.routes if getattr(r, "path", "") == "/api/runs/{name:path}"]
    with pytest.raises(live.LiveError, match="5,000 characters"):  # the app answers it 404
        state("x" * 5000)
    shutil.copytree(OLD_RUN, runs / "deep")
    (runs / "deep" / "config.yaml").write_text(nested_yaml(400))
    with pytest.raises(MnistctlError, match="nested deeper than 64 levels"):  # the app answers it 409
        state("deep")
    shutil.rmtree(runs / "deep")
    for size in range(5):
        assert state(f"r{size}") == {"ok": True}
    assert len(loaded) == 5
    state("r4")
    assert len(loaded) == 5  # the latest is kept
    state("r0")
    assert len(loaded) == 6 and live.MAX_DATASETS < 5  # the oldest was let go


def test_the_live_page_asked_again_parses_no_config(tmp_path, monkeypatch):
    """The folder view is asked for every second or so: a run's files are read once per change
    (the issue measured 29-37 s per answer for 2,000 runs, every answer, when they were not)."""
    from mnistctl.run import directory
    from mnistctl.serving.live import create_live_app

    runs = tmp_path / "runs"
    for seed in range(3):
        shutil.copytree(OLD_RUN, runs / f"r{seed}")
        config = runs / f"r{seed}" / "config.yaml"
        config.write_text(config.read_text().replace("seed: 0,", f"seed: {seed},"))
    app = create_live_app(runs)
    (listing,) = [r.endpoint for r in app.routes if getattr(r, "path", "") == "/api/runs"]
    first = listing()
    assert [r["name"] for r in first["runs"]] == ["r0", "r1", "r2"]

    def no_parsing(*args, **kwargs):
        raise AssertionError("a config was parsed again although nothing changed")

    monkeypatch.setattr(directory, "parse_yaml", no_parsing)
    assert listing() == first


@pytest.mark.parametrize("interrupted", [False, True])
def test_a_sweep_that_made_no_trial_directory_says_so_in_one_line(tmp_path, monkeypatch, interrupted):
    from mnistctl.many import engine

    ended = engine.SweepOutcome(tmp_path / "s", [], None, interrupted, 1.0)
    monkeypatch.setattr(engine, "run_sweep", lambda plan, **options: ended)
    result = invoke("sweep", TINY, "--grid", "train.seed=0,1", "--runs-dir", tmp_path)
    assert "Traceback" not in result.output and not isinstance(result.exception, TypeError)
    if interrupted:
        assert result.exit_code == 130 and f"--resume {tmp_path / 's'}" in result.output
    else:
        one_line_error(
            result, "every trial failed before it made a run directory", str(tmp_path / "s" / "tune")
        )


def test_the_live_page_reads_only_what_was_appended_to_a_runs_metrics(tmp_path, monkeypatch):
    from mnistctl.run.tail import MetricsTail
    from mnistctl.run.writers import read_metrics

    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    metrics = run / "metrics.csv"
    original = metrics.read_text()
    header, *lines = original.splitlines(keepends=True)
    tail = MetricsTail(metrics)
    assert tail.read() == read_metrics(metrics) and tail.count() == len(lines)
    read: list[int] = []
    real_open = Path.open

    def counting_open(self, *args, **kwargs):  # how many bytes each poll reads
        handle = real_open(self, *args, **kwargs)
        if self == metrics:
            real_read = handle.read
            handle.read = lambda *a: (data := real_read(*a), read.append(len(data)))[0]  # type: ignore[method-assign]
        return handle

    monkeypatch.setattr(Path, "open", counting_open)
    with metrics.open("a") as f:  # one more evaluation, and half of the next (a torn line)
        f.write(lines[-1].replace(lines[-1].split(",")[0], "999", 1))
        f.write("1000,")
    assert tail.count() == len(lines) + 1 and tail.rows_from(len(lines))[0]["step"] == 999
    assert read and max(read) < len(lines[-1]) + 10  # the appended bytes, not the whole file
    assert [r["step"] for r in tail.read()] == [r["step"] for r in read_metrics(metrics)]
    metrics.write_text(header + lines[0])  # a resume rewrote it shorter: read again
    assert tail.count() == 1 and tail.read() == read_metrics(metrics)


def test_a_config_edited_after_training_is_refused_where_weights_are_loaded(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = run / "config.yaml"
    original = config.read_text()
    assert "relu" in original
    config.write_text(original.replace("relu", "sigmoid", 1))  # the weights were trained with relu
    for args in (["eval", run], ["export", run, "--out", tmp_path / "model"], ["train", "--resume", run]):
        one_line_error(invoke(*args), str(config), "edited since the run was trained")
    assert not (tmp_path / "model").exists()
    config.write_text(original)  # put back: it loads again
    assert invoke("eval", run).exit_code == 0


def test_a_best_checkpoint_missing_its_data_is_named_not_passed_over(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (data,) = (run / "checkpoints" / "best").glob("model-*.data-*")
    data.unlink()
    one_line_error(
        invoke("eval", run), "incomplete checkpoint (its .data file is missing)", "checkpoints/latest"
    )
    (index,) = (run / "checkpoints" / "best").glob("model-*.index")
    index.unlink()
    data.write_bytes(b"")  # a data file without its index
    one_line_error(invoke("eval", run), "incomplete checkpoint (its .index file is missing)")
    assert invoke("eval", run / "checkpoints" / "latest").exit_code == 0  # the other slot, asked for


def test_the_live_folder_view_names_a_run_it_cannot_read(tmp_path):
    from mnistctl.serving import live

    runs = tmp_path / "runs"
    shutil.copytree(OLD_RUN, runs / "good")
    shutil.copytree(OLD_RUN, runs / "torn")
    (runs / "torn" / "run.json").write_text('{"status": "runn')
    app = live.create_live_app(runs)
    (listing,) = [r.endpoint for r in app.routes if getattr(r, "path", "") == "/api/runs"]
    answer = listing()
    assert [r["name"] for r in answer["runs"]] == ["good"]
    (said,) = answer["damaged"]
    assert str(runs / "torn" / "run.json") in said and "not JSON" in said
