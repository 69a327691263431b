"""A folder's index: listed again, only the runs that changed are read, and the listing is the
one a fresh read gives after runs are edited, tagged, resumed, added, removed or claimed by a
training (no TensorFlow)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from mnistctl.cli import main
from mnistctl.run.listing import INDEX_FILE, find_runs

from .conftest import rewrite_config
from .test_runs import OLD_RUN


def compare(folder, *args) -> str:
    result = CliRunner().invoke(main, ["compare", str(folder), "--format", "csv", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def fresh(folder, *args) -> str:
    """What compare says with no index: every run read from its files."""
    (folder / INDEX_FILE).unlink(missing_ok=True)
    return compare(folder, *args)


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for name in ("a", "b", "c", "d"):
        shutil.copytree(OLD_RUN, root / name)
    for trial in ("trial-00000", "trial-00001"):
        shutil.copytree(OLD_RUN, root / "sweep" / trial)
    return root


def test_a_folder_listed_again_is_read_from_its_index(runs, monkeypatch):
    first = compare(runs)
    assert (runs / INDEX_FILE).is_file()
    from mnistctl.run import directory

    def no_parsing(*args):
        raise AssertionError("a config was parsed although nothing changed")

    monkeypatch.setattr(directory, "_parsed_config", no_parsing)
    assert compare(runs) == first  # nothing read again: no config parsed
    listed = find_runs([runs], [], recursive=True, indexed=True)
    assert len(listed) == 6 and all(run.derived is not None for run in listed)
    assert [run.name for run in listed] == ["a", "b", "c", "d", "sweep/trial-00000", "sweep/trial-00001"]


def test_the_listing_after_runs_change_is_what_a_fresh_read_gives(runs):
    compare(runs)
    # a config edited (and its digest), a tag, a resumed run's new evaluation, a run removed
    # and one added, a trial edited inside a sweep
    rewrite_config(runs / "a", lambda text: text.replace("lr0: 0.003", "lr0: 0.007"))
    assert CliRunner().invoke(main, ["tag", str(runs / "b"), "+keep"]).exit_code == 0
    with (runs / "c" / "metrics.csv").open("a") as f:
        f.write("30,1.875,0.0025,2.1,0.3,2.0,0.512,2.0,0.44,0.4,20000,800.2\n")
    shutil.rmtree(runs / "d")
    shutil.copytree(OLD_RUN, runs / "e")
    rewrite_config(runs / "sweep" / "trial-00001", lambda text: text.replace("seed: 0,", "seed: 5,"))
    listed = compare(runs)
    assert listed == fresh(runs)
    table = {line.split(",")[0]: line for line in listed.splitlines()}
    assert set(table) == {"run", "a", "b", "c", "e", "sweep/trial-00000", "sweep/trial-00001"}
    header = table["run"].split(",")
    assert table["a"].split(",")[header.index("schedule.lr0")] == "0.007"
    assert table["b"].split(",")[header.index("tags")] == "keep"
    assert table["c"].split(",")[header.index("best_test_accuracy")] == "0.512"  # the new best
    assert table["sweep/trial-00001"].split(",")[header.index("train.seed")] == "5"
    # the index keeps what is there now and nothing of what is gone
    kept = json.loads((runs / INDEX_FILE).read_text())["runs"]
    assert set(kept) == {"a", "b", "c", "e", "sweep/trial-00000", "sweep/trial-00001"}


def test_a_flat_listing_keeps_the_index_of_what_it_does_not_look_into(runs):
    compare(runs)
    compare(runs, "--flat")
    kept = json.loads((runs / INDEX_FILE).read_text())["runs"]
    assert "sweep/trial-00000" in kept


def test_a_run_claimed_by_a_training_is_always_read_afresh(runs):
    """Its status depends on its process, not only on its files: never taken from the index."""
    record = json.loads((runs / "a" / "run.json").read_text())
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)
    import socket

    record |= {"status": "running", "pid": gone, "host": socket.gethostname()}
    (runs / "a" / "run.json").write_text(json.dumps(record))
    listed = compare(runs, "--columns", "run,status")
    assert "a,crashed" in listed.splitlines()  # its process is gone
    assert "a" not in json.loads((runs / INDEX_FILE).read_text())["runs"]
    assert compare(runs, "--columns", "run,status") == listed


@pytest.mark.parametrize(
    "damage", [b"\x00\xff garbage", b'{"format": 3, "keysets": [], "runs": {"a": 7}}', b"[]"]
)
def test_a_damaged_index_is_ignored_and_rebuilt(runs, damage):
    first = compare(runs)
    (runs / INDEX_FILE).write_bytes(damage)
    assert compare(runs) == first
    assert json.loads((runs / INDEX_FILE).read_text())["format"] == 3


def test_a_folder_that_cannot_be_written_is_listed_without_an_index(runs, monkeypatch):
    from mnistctl.run import listing

    def refused(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(listing, "write_atomic", refused)
    assert compare(runs) == compare(runs)
    assert "a," in compare(runs) and not (runs / INDEX_FILE).exists()


def test_many_runs_read_by_several_processes_list_as_one_process_reads_them(runs, monkeypatch):
    from mnistctl.report import compare as compare_module

    for i in range(6):
        shutil.copytree(OLD_RUN, runs / f"more-{i}")
    alone = fresh(runs)
    monkeypatch.setattr(compare_module, "PARALLEL_FROM", 2)
    assert fresh(runs) == alone
