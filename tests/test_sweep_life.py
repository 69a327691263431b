"""A sweep directory's life on a real Ray on 127.0.0.1: owned by one driver, stopped by SIGTERM
as by Ctrl-C, continued after its Ray Tune state is damaged or the directory has moved; a
loopback cluster joined with --address, and a port that is not Ray refused in one line."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mnistctl.many.reaper import holding
from mnistctl.run.directory import load_run
from mnistctl.run.writers import read_metrics
from mnistctl.status import Status

from .conftest import CONFIGS, ROOT, fill, free_port
from .test_sweep import run_sweep_process, sweep_command, trials_csv

TINY = str(CONFIGS / "tiny.yaml")
SLOW = ["--set", "train.steps=1200", "--set", "train.eval_every=50", "--set", "train.checkpoint_every=100"]


def wait_for_rows(path: Path, rows: int, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        metrics = path / "metrics.csv"
        if metrics.exists() and len(read_metrics(metrics)) >= rows:
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} made no progress")


def test_a_sweep_directory_is_owned_stopped_by_sigterm_and_continued_wherever_it_is(
    mnist_cache, tmp_path, spawn
):
    """One trial finished and the next part-way: a second driver is refused, SIGTERM stops the
    sweep as Ctrl-C does, and a copy of the sweep directory is continued where it is (the
    original untouched): the finished trial is kept, the other resumed."""
    runs = tmp_path / "runs"
    grid = ["--grid", "schedule.lr0=0.002,0.004"]
    process = spawn(
        sweep_command(TINY, *grid, *SLOW, "--runs-dir", str(runs), "--max-concurrent", "1", "--name", "life"),
        cwd=ROOT,
    )  # fmt: skip
    sweep_dir = runs / "life"
    wait_for_rows(sweep_dir / "trial-00000", 2, process)

    second = subprocess.run(sweep_command("--resume", str(sweep_dir)), cwd=ROOT, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert second.returncode == 2, second.stderr  # the first driver owns it: refused at once
    assert f"{sweep_dir}: in use by pid {process.pid}" in second.stderr and "Traceback" not in second.stderr

    wait_for_rows(sweep_dir / "trial-00001", 3, process)  # the first trial has finished
    process.send_signal(signal.SIGTERM)  # as Ctrl-C: Tune's graceful stop, then mnistctl's word
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert f"continue with: mnistctl sweep --resume {sweep_dir}" in stderr.replace("\n", "")
    assert "Traceback" not in stderr and "Tuner.restore" not in stderr  # Ray's own advice: in ray.log
    assert (sweep_dir / "ray.log").is_file()
    assert load_run(sweep_dir / "trial-00000").record.status is Status.COMPLETED
    stopped = load_run(sweep_dir / "trial-00001")  # its worker stopped by Tune: said so, not "crashed"
    assert stopped.record.status is Status.INTERRUPTED and stopped.status is Status.INTERRUPTED
    finished = (sweep_dir / "trial-00000" / "metrics.csv").read_bytes()

    moved = tmp_path / "elsewhere" / "life"
    shutil.copytree(sweep_dir, moved)  # a copy: resumed where it is, the original never touched
    before = {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("*") if p.is_file()}
    result = run_sweep_process("--resume", str(moved))
    assert "moved or copied here from" in result.stderr and "Traceback" not in result.stderr
    rows = trials_csv(moved)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"completed"}
    assert {Path(r["run"]).parent for r in rows} == {moved}
    kept = load_run(moved / "trial-00000")
    assert not kept.record.resumes and (moved / "trial-00000" / "metrics.csv").read_bytes() == finished
    resumed = load_run(moved / "trial-00001")
    assert len(resumed.record.resumes) == 1  # continued from its checkpoint, not restarted
    steps = [int(r["step"]) for r in read_metrics(moved / "trial-00001" / "metrics.csv")]
    assert steps == list(range(50, 1201, 50))
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("*") if p.is_file()} == before


def test_an_edited_sweep_file_is_refused_on_resume_before_ray_starts(tmp_path, write_config):
    from click.testing import CliRunner

    from mnistctl.cli import main
    from mnistctl.many.sweep import load_sweep
    from mnistctl.many.sweep_dir import make_sweep_dir

    sweep = load_sweep(
        write_config(
            f"base: {TINY}\nset: {{data.validation: 200}}\nspace: {{train.seed: {{grid: [0, 1]}}}}\n",
            "s.yaml",
        )
    )
    sweep_dir = make_sweep_dir(sweep, tmp_path / "runs")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["s"]  # no staging left behind
    text = (sweep_dir / "sweep.yaml").read_text()
    (sweep_dir / "sweep.yaml").write_text(text.replace("samples: 1", "samples: 3"))
    result = CliRunner().invoke(main, ["sweep", "--resume", str(sweep_dir)])
    assert result.exit_code == 2 and "edited since the sweep began" in result.output, result.output
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()


def silent_server() -> tuple[int, threading.Event]:
    """A port where something listens, accepts, and never speaks (not Ray)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    done = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        kept = []
        while not done.is_set():
            try:
                kept.append(sock.accept()[0])
            except TimeoutError:
                continue
        for conn in kept:
            conn.close()
        sock.close()

    threading.Thread(target=accept, daemon=True).start()
    return sock.getsockname()[1], done


def test_an_address_where_ray_does_not_listen_is_refused_within_seconds(tmp_path):
    port, done = silent_server()
    try:
        started = time.monotonic()
        result = subprocess.run(
            sweep_command(TINY, "--grid", "train.seed=0,1", "--address", f"127.0.0.1:{port}",
                          "--runs-dir", str(tmp_path)),
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        done.set()
    assert result.returncode == 2 and time.monotonic() - started < 15, result.stderr
    assert f"--address 127.0.0.1:{port}: something listens there, not a Ray cluster's head" in result.stderr
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def loopback_head():
    """``ray start --head --node-ip-address=127.0.0.1``, as the README tells a user to start one
    (one for the module's tests: a cluster outlives its drivers)."""
    port = free_port()
    temp = Path("/tmp") / f"ray-head-{os.getpid()}"  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    ray = str(Path(sys.executable).parent / "ray")
    start = [ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
             "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"]  # fmt: skip
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}", env
    finally:  # each of its processes keeps its logs under temp (`ray stop --force` takes 8 s)
        for pid in holding(str(temp), {os.getpid()}):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_sweep_joins_a_loopback_only_cluster(mnist_cache, tmp_path, loopback_head):
    address, env = loopback_head
    small = ["--set", "train.steps=40", "--set", "train.eval_every=20"]
    result = subprocess.run(
        sweep_command(TINY, "--grid", "train.seed=0,1", *small, "--address", address,
                      "--runs-dir", str(tmp_path)),
        cwd=ROOT, capture_output=True, text=True, timeout=180,
        env={**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": ""},  # mnistctl keeps it on loopback itself
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = trials_csv(tmp_path / "tiny-grid")
    assert len(rows) == 2 and {r["status"] for r in rows} == {"completed"}


def test_a_driver_the_cluster_refuses_is_one_line_within_seconds(tmp_path, loopback_head):
    """The cluster asks for a token (as `ray start` makes one); a driver with authentication off
    is refused: Ray's client retries and says so on stderr, once a second for 20 s, before."""
    address, env = loopback_head
    started = time.monotonic()
    result = subprocess.run(
        sweep_command(TINY, "--grid", "train.seed=0,1", "--address", address, "--runs-dir", str(tmp_path)),
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**env, "RAY_AUTH_MODE": "disabled"},
    )  # fmt: skip
    assert result.returncode == 2 and time.monotonic() - started < 15, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip() and "holding out" not in line]
    assert line.startswith(f"error: --address {address}: cannot join the cluster (it refuses this driver")
    assert "RAY_AUTH_MODE is disabled" in line


def test_a_signal_just_after_the_search_cannot_cut_its_last_writes_short():
    """A second Ctrl-C that lands after Tune stopped, while the sweep writes the trials'
    statuses: it used to end the driver with a bare "interrupted" and no way to continue."""
    from mnistctl.many.ray_session import signals_held

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with signals_held():
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # delivered by now, and nothing raised
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_damaged_state_is_searched_again_and_a_failed_trial_is_one_line(mnist_cache, tmp_path):
    """A finished sweep continued with its files damaged: Tune's experiment state (no
    traceback); its tuner.pkl (searched again, the damaged state kept aside); then a trial's
    config changed and Tune's state deleted (searched again; the trial fails in one line, the
    sweep says so, Ray's traceback in ray.log)."""
    small = ["--set", "train.steps=40", "--set", "train.eval_every=20"]
    run_sweep_process(TINY, "--grid", "train.seed=0,1", *small, "--runs-dir", str(tmp_path), "-q")
    sweep_dir = tmp_path / "tiny-grid"
    (state,) = (sweep_dir / "tune").glob("experiment_state-*.json")
    state.write_text('{"trial_data": [garbage')
    result = run_sweep_process("--resume", str(sweep_dir))
    assert "Traceback" not in result.stderr and "Tuner.restore" not in result.stderr, result.stderr[-3000:]
    rows = trials_csv(sweep_dir)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"completed"}

    (sweep_dir / "tune" / "tuner.pkl").write_bytes(b"damaged")
    result = run_sweep_process("--resume", str(sweep_dir))
    assert "Ray Tune's saved state is damaged (UnpicklingError); searching again" in result.stderr
    assert list(sweep_dir.glob("tune.before-*")) and "Traceback" not in result.stderr  # kept aside
    assert {r["status"] for r in trials_csv(sweep_dir)} == {"completed"}

    config = sweep_dir / "trial-00000" / "config.yaml"  # its run no longer the trial's config
    config.write_text(config.read_text().replace("seed: 0", "seed: 5"))
    shutil.rmtree(sweep_dir / "tune")  # and Tune's state gone: the search starts again
    result = subprocess.run(sweep_command("--resume", str(sweep_dir)), cwd=ROOT, capture_output=True,
                            text=True, timeout=240)  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Ray Tune saved no state there" in result.stderr
    assert "Traceback" not in result.stderr and "Tuner.restore" not in result.stderr
    assert (
        "trial-00000 failed: " + f"{sweep_dir / 'trial-00000'}: holds a run of another config"
        in result.stderr
    )
    assert "train.seed: 5 there, 0 here" in result.stderr
    assert "error: 1 trial(s) failed after their retries: trial-00000" in result.stderr
    assert "Traceback" in (sweep_dir / "ray.log").read_text()  # the whole story, kept


def test_an_interrupted_reproduction_on_ray_says_so_and_continues(mnist_cache, tmp_path, spawn):
    """`reproduce --max-concurrent 2` trains its seeds as Ray trials: Ctrl-C says so, the same
    command continues them into the same ledger, and once more trains nothing."""
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    command = [sys.executable, "-m", "mnistctl", "reproduce", TINY, "--seeds", "2", "--max-concurrent", "2",
               "--runs-dir", str(runs), "--docs", str(docs), *SLOW, "--set", "train.steps=500"]  # fmt: skip
    process = spawn(command, cwd=ROOT)
    deadline = time.monotonic() + 180
    while not any(len(read_metrics(m)) >= 2 for m in runs.glob("*/metrics.csv")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr and "Tuner.restore" not in stderr and "Traceback" not in stderr
    made = sorted(p for p in runs.iterdir() if not p.name.startswith("."))
    assert made and {load_run(p).record.status for p in made} == {Status.INTERRUPTED}
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 finished runs" in again.stdout
    assert all(len(load_run(p).record.resumes) == 1 for p in made)  # continued, not restarted
    ledger = list(csv.DictReader((docs / "reproduce-runs.csv").open()))  # as `reproduce` in turn writes it
    assert sorted((r["config"], r["seed"]) for r in ledger) == [("tiny", "0"), ("tiny", "1")]
    made = sorted(p for p in runs.iterdir() if not p.name.startswith("."))
    assert [p.name for p in made] == [f"tiny-seed{s}-{ledger[0]['config_sha']}" for s in (0, 1)]
    assert {load_run(p).record.status for p in made} == {Status.COMPLETED}
    before = {p: (p / "metrics.csv").read_bytes() for p in made}
    third = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and len(list(csv.DictReader((docs / "reproduce-runs.csv").open()))) == 2
    assert {p: (p / "metrics.csv").read_bytes() for p in made} == before  # finished: nothing trains


def test_two_sweeps_made_at_the_same_moment_with_one_name_the_second_is_refused(
    tmp_path, write_config, monkeypatch
):
    from mnistctl.many import sweep_dir
    from mnistctl.many.sweep import SweepError, load_sweep

    sweep = load_sweep(
        write_config(
            f"base: {TINY}\nset: {{data.validation: 200}}\nspace: {{train.seed: {{grid: [0, 1]}}}}\n",
            "s.yaml",
        )
    )
    real = os.rename

    def the_other_driver_first(source, target):  # it renamed its own staged directory a moment ago
        Path(target).mkdir()
        (Path(target) / "sweep.yaml").write_text("theirs")
        real(source, target)

    monkeypatch.setattr(sweep_dir.os, "rename", the_other_driver_first)
    with pytest.raises(SweepError, match="made a moment ago by another sweep"):
        sweep_dir.make_sweep_dir(sweep, tmp_path / "runs")
    assert (tmp_path / "runs" / "s" / "sweep.yaml").read_text() == "theirs"  # theirs untouched
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["s"]  # and no staging left


def test_a_double_ctrl_c_leaves_the_trials_interrupted_with_the_way_to_continue(mnist_cache, tmp_path, spawn):
    runs = tmp_path / "runs"
    process = spawn(
        sweep_command(TINY, "--grid", "train.seed=0,1", *SLOW, "--runs-dir", str(runs), "--name", "twice"),
        cwd=ROOT,
    )  # fmt: skip
    sweep_dir = runs / "twice"
    wait_for_rows(sweep_dir / "trial-00000", 2, process)
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)  # the second: stop at once
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert f"continue with: mnistctl sweep --resume {sweep_dir}" in stderr.replace("\n", "")
    assert "Traceback" not in stderr, stderr
    statuses = {load_run(p).record.status for p in sweep_dir.glob("trial-*")}
    assert statuses and statuses <= {Status.INTERRUPTED, Status.COMPLETED}, statuses  # never "stopped"


def test_a_full_disk_during_a_sweep_is_one_line_a_trial_and_the_sweep_goes_on_once_there_is_room(
    mnist_cache, small_disk, spawn
):
    """The sweep on an 8 MB tmpfs filled up while its first trial trains (needs root and mount):
    one line for the trial, the sweep stopped at once, then finished by --resume."""
    disk = small_disk("8m")
    process = spawn(
        sweep_command(TINY, "--grid", "train.seed=0,1", *SLOW, "--max-concurrent", "1",
                      "--runs-dir", str(disk), "--name", "full"),
        cwd=ROOT,
    )  # fmt: skip
    sweep_dir = disk / "full"
    wait_for_rows(sweep_dir / "trial-00000", 2, process)
    filler = fill(disk)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 2 and "the disk is full" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr and "Logging error" not in stderr, stderr[-3000:]
    failed = [line for line in stderr.splitlines() if " failed: " in line]
    assert len(failed) == 1, stderr  # the sweep stops: a retry or the next trial would fail the same way
    assert f"{sweep_dir}/trial-00000" in failed[0] and "No space left on device" in failed[0], stderr
    assert "trying again" not in stderr and not (sweep_dir / "trial-00001").exists(), stderr
    assert f"mnistctl sweep --resume {sweep_dir}" in stderr.replace("\n", ""), stderr[-3000:]

    filler.unlink()  # room again: the same sweep goes on where it was cut short
    run_sweep_process("--resume", str(sweep_dir))
    rows = trials_csv(sweep_dir)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"completed"}
    first = load_run(sweep_dir / "trial-00000")
    assert first.record.resumes  # from its checkpoint, not from the start
    steps = [int(r["step"]) for r in read_metrics(sweep_dir / "trial-00000" / "metrics.csv")]
    assert steps == list(range(50, 1201, 50))


def _descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid``, by pid, with its name (read from /proc)."""
    children: dict[int, list[int]] = {}
    names = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
            names[int(entry.name)] = name
            children.setdefault(int(rest[1]), []).append(int(entry.name))
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = names[child]
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has ended (its parent has not asked yet)


def test_every_ray_process_ends_within_seconds_of_a_driver_killed_with_sigkill(mnist_cache, tmp_path, spawn):
    """Ray's own processes die with the driver; its raylet's agents used to stay a minute more."""
    grid = ["--grid", "train.seed=0,1"]
    process = spawn(
        sweep_command(TINY, *grid, *SLOW, "--runs-dir", str(tmp_path), "--name", "killed"), cwd=ROOT
    )
    wait_for_rows(tmp_path / "killed" / "trial-00000", 2, process)
    ray = _descendants(process.pid)
    assert {"raylet", "gcs_server"} <= set(ray.values()) and len(ray) >= 6, ray  # agents, workers too
    os.kill(process.pid, signal.SIGKILL)  # the driver alone, as the kernel's OOM killer would
    deadline = time.monotonic() + 15
    while (alive := {p: n for p, n in ray.items() if _running(p)}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, f"still running 15 s after the driver was killed: {alive}"


def test_ctrl_c_at_each_moment_of_a_sweeps_start_is_one_line_and_the_sweep_goes_on(
    mnist_cache, tmp_path, spawn
):
    """Ctrl-C while Ray starts, while Tune sets up, as the first trial starts: each time exit
    130 with mnistctl's line (no traceback, no crash: a segmentation fault was seen once), and
    the sweep is then finished by --resume."""
    runs = tmp_path / "runs"
    sweep_dir = runs / "early"
    small = ["--set", "train.steps=100", "--set", "train.eval_every=50"]
    first = sweep_command(
        TINY, "--grid", "train.seed=0,1", *small, "--runs-dir", str(runs), "--name", "early"
    )
    moments = {
        "Ray starting": (first, lambda p: "gcs_server" in _descendants(p.pid).values()),
        "Tune setting up": (first, lambda p: (sweep_dir / "sweep.yaml").exists()),
        "the first trial starting": (
            sweep_command("--resume", str(sweep_dir)),
            lambda p: any(sweep_dir.glob("trial-*")),
        ),
    }
    for moment, (command, ready) in moments.items():
        process = spawn(command, cwd=ROOT)
        deadline = time.monotonic() + 120
        while not ready(process):
            assert process.poll() is None and time.monotonic() < deadline, (moment, process.communicate())
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 130, (moment, process.returncode, stderr[-3000:])
        assert "Traceback" not in stderr and "Tuner.restore" not in stderr, (moment, stderr[-3000:])
        if moment != "Ray starting":  # the sweep directory is made once Ray is up
            assert f"--resume {sweep_dir}" in stderr.replace("\n", ""), (moment, stderr[-3000:])
        else:
            assert not runs.exists() or not any(runs.iterdir()), moment  # nothing half-made left
    run_sweep_process("--resume", str(sweep_dir))
    rows = trials_csv(sweep_dir)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"completed"}
