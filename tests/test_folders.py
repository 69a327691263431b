"""Folders of runs read recursively: a sweep kept in runs/<sweep>/ shows its trials, grouped
under the sweep, in compare and on the live page (no TensorFlow)."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from mnistctl.cli import main
from mnistctl.run.listing import find_runs

from .test_runs import OLD_RUN


@pytest.fixture
def runs(tmp_path):
    """runs/ holding one run of its own and two sweeps whose trials share their names."""
    root = tmp_path / "runs"
    shutil.copytree(OLD_RUN, root / "20261201T000000Z-tiny")
    for sweep in ("lr-sweep", "seeds"):
        for trial in ("trial-00000", "trial-00001"):
            shutil.copytree(OLD_RUN, root / sweep / trial)
        (root / sweep / "tune").mkdir()  # Ray Tune's state: never looked into
        shutil.copytree(OLD_RUN, root / sweep / "tune" / "not-a-trial")
    shutil.copytree(OLD_RUN, root / ".trash" / "gone")  # hidden folders are skipped
    return root


def test_compare_of_a_runs_folder_includes_the_trials_of_its_sweeps(runs):
    result = CliRunner().invoke(main, ["compare", str(runs), "--format", "csv", "--columns", "run,status"])
    assert result.exit_code == 0, result.output
    assert result.output.split()[1:] == [
        "20261201T000000Z-tiny,completed",
        "lr-sweep/trial-00000,completed",
        "lr-sweep/trial-00001,completed",
        "seeds/trial-00000,completed",
        "seeds/trial-00001,completed",
    ]
    flat = CliRunner().invoke(main, ["compare", str(runs), "--flat", "--format", "csv", "--columns", "run"])
    assert flat.output.split()[1:] == ["20261201T000000Z-tiny"]
    only = CliRunner().invoke(main, ["compare", str(runs / "seeds"), "--format", "csv", "--columns", "run"])
    assert only.output.split()[1:] == ["trial-00000", "trial-00001"]  # a sweep named: its trials
    assert [r.name for r in find_runs([runs])] == ["20261201T000000Z-tiny"]  # not recursive unless asked


def test_the_live_page_lists_a_sweeps_trials_and_opens_them_but_nothing_outside(runs):
    from mnistctl.serving import live

    app = live.create_live_app(runs)
    (listing,) = [r.endpoint for r in app.routes if getattr(r, "path", "") == "/api/runs"]
    watched = live.Watched.of(runs)
    names = [r["name"] for r in listing()["runs"]]
    assert names == ["20261201T000000Z-tiny", "lr-sweep/trial-00000", "lr-sweep/trial-00001",
                     "seeds/trial-00000", "seeds/trial-00001"]  # fmt: skip
    opened = watched.run("seeds/trial-00001")
    assert opened.path == runs / "seeds" / "trial-00001" and opened.name == "seeds/trial-00001"
    for outside in ("../runs/seeds/trial-00000", "seeds/../seeds/trial-00000", "/etc", "seeds//trial-00000",
                    "seeds/tune/not-a-trial/../../x", "seeds", ".trash/gone/../gone"):  # fmt: skip
        with pytest.raises(live.LiveError):
            watched.run(outside)
