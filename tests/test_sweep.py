"""Sweeps: the sweep file's checks (no Ray), then real sweeps on a local Ray and on a two-node
Ray cluster on this machine, all on 127.0.0.1: early stopping, a killed trial that resumes
exactly, an interrupted sweep that continues."""

from __future__ import annotations

import csv
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mnistctl.cli import main
from mnistctl.config import ConfigError
from mnistctl.many.sweep import load_sweep
from mnistctl.run.directory import load_run
from mnistctl.run.writers import read_metrics
from mnistctl.status import Status

from .conftest import CONFIGS, ROOT

TINY = CONFIGS / "tiny.yaml"

GOOD = f"""\
base: {TINY}
set: {{train.steps: 60, train.eval_every: 10, train.checkpoint_every: 20, data.validation: 200}}
space:
  schedule.lr0: {{loguniform: [0.001, 0.01]}}
  model.layers[1].dropout: {{choice: [0.0, 0.25]}}
search: random
samples: 4
"""

# (what to change in GOOD, the message after "<file>: ")
BAD = [
    ("samples: 4", "samples: 4\nsampels: 3",
     "sampels: unknown key; expected one of: base, name, description,"),
    ("{loguniform: [0.001, 0.01]}", "{loguniform: [0.01, 0.001]}",
     "space.schedule.lr0.loguniform: expected low < high, got [0.01, 0.001]"),
    ("{loguniform: [0.001, 0.01]}", "{loguniform: [0, 0.01]}",
     "space.schedule.lr0.loguniform: expected 0 < low for a log scale, got 0"),
    ("{choice: [0.0, 0.25]}", "{grid: []}",
     "space.model.layers[1].dropout.grid: expected at least one value, got none"),
    ("{choice: [0.0, 0.25]}", "{normal: [0, 1]}",
     "space.model.layers[1].dropout.normal: unknown domain 'normal'; expected one of: grid, choice,"),
    ("schedule.lr0:", "schedule.lr_zero:",
     "space.schedule.lr_zero=0.001: schedule.lr_zero: unknown key; expected one of: name, lr0,"),
    ("model.layers[1].dropout:", "model.layers[7].dropout:",
     "space.model.layers[7].dropout=0.0: model.layers has 3 entries"),
    ("{choice: [0.0, 0.25]}", "{choice: [0.0, 1.5]}",
     "space.model.layers[1].dropout=1.5: model.layers[1].dropout: expected a number >= 0 and < 1, got 1.5"),
    ("search: random", "search: random\nmetric: loss",
     "metric: unknown metric 'loss'; expected one of: validation_accuracy, test_accuracy"),
    ("search: random", "search: random\nmetric: test_accuracy",
     "metric: test_accuracy would let the test set choose the best trial;"),
    (", data.validation: 200}", "}", "metric: validation_accuracy needs images held out for validation;"),
    ("search: random", "search: grid",
     "search: grid needs grid or choice values; space.schedule.lr0 is loguniform"),
    ("{choice: [0.0, 0.25]}\nsearch: random", "{grid: [0.0, 0.25]}\nsearch: optuna",
     "search: optuna draws every value; space.model.layers[1].dropout is a grid: use choice instead"),
    (f"base: {TINY}", "base: no/such/config.yaml", "no such config file"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new", "message"), BAD, ids=[f"{m.split(':')[0]}-{i}" for i, (_, _, m) in enumerate(BAD)]
)
def test_a_bad_sweep_file_is_one_line(tmp_path, old, new, message):
    assert old in GOOD
    path = tmp_path / "sweep.yaml"
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as caught:
        load_sweep(path)
    text = str(caught.value)
    assert "\n" not in text and message in text, text


def test_a_good_sweep_file_resolves(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(GOOD)
    sweep = load_sweep(path)
    assert sweep.name == "s" and sweep.trials == 4 and sweep.base.train.steps == 60
    assert sweep.experiment({"schedule.lr0": 0.005, "model.layers[1].dropout": 0.25}).schedule.lr0 == 0.005


def test_validate_checks_a_sweep_file_as_sweep_does(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(GOOD)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    last = " ".join(result.output.split())  # rich wraps long lines
    assert "sweep s: 4 trials of the config above, schedule.lr0: loguniform [0.001, 0.01];" in last
    assert "60 steps of" in last  # the base config with the file's set:
    path.write_text(GOOD.replace("{choice: [0.0, 0.25]}", "{choice: [0.0, 1.5]}"))
    result = CliRunner().invoke(main, ["validate", str(path)])
    message = "space.model.layers[1].dropout=1.5: model.layers[1].dropout"
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--address", "127.0.0.1:9"], "--address 127.0.0.1:9: no Ray cluster answers there"),
        (["--set", "train.steps=0"], "--set train.steps=0: train.steps: expected an integer >= 1"),
        (["--grid", "schedule.lr0=0.1"], "--grid is for a config; a sweep file has its space: in the file"),
    ],
)
def test_bad_sweep_commands_exit_2_and_create_nothing(tmp_path, args, message):
    path = tmp_path / "s.yaml"
    path.write_text(GOOD)
    started = time.monotonic()
    result = CliRunner().invoke(main, ["sweep", str(path), "--runs-dir", str(tmp_path / "runs"), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert time.monotonic() - started < 10  # never a hang on an unreachable cluster
    assert not (tmp_path / "runs").exists()


def test_more_cores_per_trial_than_the_machine_has(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(GOOD + "resources: {cpus_per_trial: 64}\n")
    result = CliRunner().invoke(main, ["sweep", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert (
        f"resources.cpus_per_trial: 64 is more than the {os.cpu_count()} CPUs of this machine"
        in result.output
    )
    assert not (tmp_path / "runs").exists()


# -- real sweeps ------------------------------------------------------------------------------


def sweep_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mnistctl", "sweep", *args]


def run_sweep_process(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    result = subprocess.run(sweep_command(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def trials_csv(sweep_dir: Path) -> list[dict[str, str]]:
    with (sweep_dir / "trials.csv").open() as f:
        return list(csv.DictReader(f))


def test_the_workers_of_a_sweep_stay_up_from_trial_to_trial(mnist_cache, tmp_path):
    """Six trials two at a time: trained by two worker processes, not six (TensorFlow is
    imported and the data read once per worker), each trial an ordinary complete run."""
    small = ["--set", "train.steps=40", "--set", "train.eval_every=20"]
    run_sweep_process(TINY, "--grid", "train.seed=0,1,2,3,4,5", *small, "--runs-dir", str(tmp_path),
                      "--max-concurrent", "2", "-q")  # fmt: skip
    runs = [load_run(p) for p in sorted((tmp_path / "tiny-grid").glob("trial-*"))]
    assert len(runs) == 6 and {r.record.status for r in runs} == {Status.COMPLETED}
    assert len({r.record.pid for r in runs}) <= 2
    assert sorted(r.experiment().train.seed for r in runs) == [0, 1, 2, 3, 4, 5]


def test_asha_stops_the_worse_trials_early_and_every_trial_is_a_run(mnist_cache, tmp_path):
    path = tmp_path / "asha.yaml"
    path.write_text(
        f"base: {TINY}\n"
        "set: {train.steps: 60, train.eval_every: 10, train.checkpoint_every: 20, data.validation: 200}\n"
        "space: {schedule.lr0: {grid: [0.01, 0.003, 0.0003, 0.0001]}}\n"
        "search: grid\n"
        "scheduler: {asha: {grace_steps: 20, reduction_factor: 2}}\n"
    )
    result = run_sweep_process(str(path), "--runs-dir", str(tmp_path / "runs"), "--max-concurrent", "2")
    assert "4 trials at most, 2 at a time, 1 CPU each" in result.stderr
    sweep_dir = tmp_path / "runs" / "asha"
    rows = trials_csv(sweep_dir)
    assert sorted(float(r["schedule.lr0"]) for r in rows) == [0.0001, 0.0003, 0.003, 0.01]
    statuses = {r["status"] for r in rows}
    assert statuses <= {"completed", "stopped"} and "stopped" in statuses and "completed" in statuses
    stopped = [r for r in rows if r["status"] == "stopped"]
    assert all(int(r["steps"]) < 60 for r in stopped)
    best = json.loads((sweep_dir / "best.json").read_text())
    assert best["trial"] == rows[0]["trial"] and float(best["validation_accuracy"]) == max(
        float(r["validation_accuracy"]) for r in rows
    )
    run = load_run(sweep_dir / rows[0]["trial"])  # an ordinary run directory
    assert run.record.sweep == "asha" and run.record.node and run.record.trial.endswith(rows[0]["trial"][-5:])
    compared = json.loads(CliRunner().invoke(main, ["compare", str(sweep_dir), "--format", "json"]).output)
    assert [c["run"] for c in compared] == [r["trial"] for r in rows]  # ranked by the sweep's metric
    # one meaning of "best": the sweep's table and compare name the same evaluation of each trial
    assert [float(r["best_test_accuracy"]) for r in rows] == [c["best_test_accuracy"] for c in compared]
    assert [int(r["best_step"]) for r in rows] == [c["best_step"] for c in compared]
    assert CliRunner().invoke(main, ["plot", str(sweep_dir)]).exit_code == 0
    assert (sweep_dir / "sweep.png").stat().st_size > 10_000


def _kill_when(path: Path, rows: int, timeout: float = 120) -> tuple[int, str]:
    """Wait until the run at ``path`` has ``rows`` evaluations; kill -9 its process.

    Returns:
        The killed pid and the Ray node the run was on.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = path / "metrics.csv"
        if metrics.exists() and len(read_metrics(metrics)) >= rows:
            record = load_run(path).record
            os.kill(record.pid, signal.SIGKILL)
            return record.pid, record.node
        time.sleep(0.02)
    raise AssertionError(f"{path} made no progress")


def test_a_sweep_on_a_two_node_cluster_survives_a_killed_trial(mnist_cache, tmp_path, monkeypatch):
    """Two Ray nodes on this machine (127.0.0.1), one core each: two identical trials run one
    per node; one trial's worker is killed mid-run, Tune retries it, and it resumes exactly."""
    monkeypatch.setenv(
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"
    )  # loopback only (see mnistctl.many.ray_session)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # Ray's test cluster has no token: the driver neither
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # if Ray was imported before
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        assert_loopback_only(listening(os.getpid()))
        runs = tmp_path / "runs"
        settings = [
            "--set",
            "train.steps=600",
            "--set",
            "train.eval_every=20",
            "--set",
            "train.checkpoint_every=60",
        ]
        process = subprocess.Popen(
            sweep_command(str(TINY), "--grid", "description=a,b", *settings, "--runs-dir", str(runs),
                          "--address", cluster.address, "--name", "two-nodes"),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        sweep_dir = runs / "two-nodes"
        killed, node = _kill_when(sweep_dir / "trial-00000", rows=8)
        _, stderr = process.communicate(timeout=240)
        assert process.returncode == 0, stderr[-3000:]
    finally:
        cluster.shutdown()
    a, b = load_run(sweep_dir / "trial-00000"), load_run(sweep_dir / "trial-00001")
    assert a.record.status is Status.COMPLETED and b.record.status is Status.COMPLETED
    assert a.record.pid != killed and len(a.record.resumes) == 1  # retried, and resumed in place
    assert node != b.record.node  # the two trials ran side by side, one on each node
    rows_a = read_metrics(sweep_dir / "trial-00000" / "metrics.csv")
    rows_b = read_metrics(sweep_dir / "trial-00001" / "metrics.csv")
    assert [int(r["step"]) for r in rows_a] == list(range(20, 601, 20))  # each evaluation once
    columns = ("step", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "validation_accuracy")
    assert [[r[c] for c in columns] for r in rows_a] == [[r[c] for c in columns] for r in rows_b]


def _descendants(pid: int) -> set[int]:
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        todo += parents.get(p, [])
    return found


def _address(hex_ip: str) -> str:
    raw = bytes.fromhex(hex_ip)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))


def listening(pid: int) -> list[tuple[str, int]]:
    """The TCP ports that ``pid`` and its descendants listen on, from Linux's /proc."""
    inodes = set()
    for p in _descendants(pid):
        for fd in Path(f"/proc/{p}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN, and ours
                ip, port = fields[1].split(":")
                found.append((_address(ip), int(port, 16)))
    return found


def assert_loopback_only(sockets: list[tuple[str, int]]) -> None:
    assert len(sockets) >= 3, sockets  # the GCS, the raylet, the object manager...
    for ip, _ in sockets:
        address = ipaddress.ip_address(ip)
        address = getattr(address, "ipv4_mapped", None) or address  # ::ffff:127.0.0.1 is 127.0.0.1
        assert address.is_loopback, sockets


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc")
def test_a_local_ray_listens_on_loopback_only():
    """Every port the local Ray of a sweep opens is on 127.0.0.1, none on the network."""
    code = (
        "from mnistctl.many.ray_session import start_ray\nstart_ray(None)\nprint('up', flush=True)\ninput()\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().strip() == "up"
        assert_loopback_only(listening(process.pid))
    finally:
        process.communicate("\n", timeout=60)


def test_set_on_the_command_line_wins_over_the_sweep_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(GOOD + "scheduler: {asha: {grace_steps: 20}}\n")
    assert load_sweep(path, ("train.steps=80",)).base.train.steps == 80  # the file says 60
    with pytest.raises(ConfigError, match=r"grace_steps: 20 is not below train\.steps \(20\)"):
        load_sweep(path, ("train.steps=20",))


def test_key_labels_are_short_and_unambiguous():
    from mnistctl.many.trials import short_keys

    keys = ["model.layers[0].filters", "model.layers[1].filters", "schedule.decay_steps"]
    assert short_keys(keys) == {
        "model.layers[0].filters": "layers[0].filters",
        "model.layers[1].filters": "layers[1].filters",
        "schedule.decay_steps": "decay_steps",
    }
