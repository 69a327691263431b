"""Ray for mnistctl: started on 127.0.0.1 only, or joined at ``--address`` (on loopback when the
address is), its output kept in a log file, and Ctrl-C or SIGTERM during a search turned into
Tune's graceful stop, remembered so the caller can say so.

Nothing here imports Ray until a command trains on it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistctl.many.reaper import start as reaper_for_driver
from mnistctl.many.sweep import SweepError

_reaper: subprocess.Popen | None = None  # kept for the driver's life: its pipe closes with it

CONNECT_TIMEOUT_S = 5.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")
RAY_LOG = "ray.log"  # Ray's own lines (tracebacks, advice), in the sweep or runs directory

# HTTP/2's client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS is one) answers
# with a SETTINGS frame of its own; anything else answers otherwise, or not at all.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_H2_SETTINGS = 0x04


def check_address(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A cluster address where a Ray head answers, or one line saying it does not, within
    seconds: a closed port, and a port where something other than Ray listens (which Ray itself
    would wait on for ever)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(
            f"--address {address}: expected HOST:PORT of a Ray cluster's head (e.g. 127.0.0.1:6379)"
        )
    hint = "start one with 'ray start --head --node-ip-address=127.0.0.1', or leave --address out"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as conn:
            conn.sendall(_H2_PREFACE)
            frame = conn.recv(9)
    except TimeoutError:
        frame = b""
    except OSError as err:
        raise SweepError(
            f"--address {address}: no Ray cluster answers there ({err.strerror or err}); {hint}"
        ) from None
    if len(frame) < 4 or frame[3] != _H2_SETTINGS:
        raise SweepError(f"--address {address}: something listens there, not a Ray cluster's head; {hint}")


def start_ray(address: str | None) -> None:
    """Join the cluster at ``address``, or start Ray on this machine bound to 127.0.0.1 only.

    Call it before anything else imports Ray: Ray decides at import whether a machine-local Ray
    listens on the machine's network address (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER).
    """
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the sweep prints its own progress
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    loopback = address is None or address.rpartition(":")[0].strip("[]") in LOOPBACK
    if address is not None:
        check_address(address)  # before importing Ray: an unreachable address answers at once
    if loopback:
        # Without this, Ray 2.60 binds its services to the machine's network address (and some
        # to every address) even when told 127.0.0.1, and a driver joining a loopback cluster
        # dials the network address instead; with it, every Ray process started from here, or
        # joining from here, stays on loopback.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    token = os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").is_file()
    if address is None or token:
        # Token authentication on, as Ray 2.60 makes it for a new cluster, and as `ray start`
        # does where a token exists (~/.ray/auth_token): said outright so that Ray does not
        # print a warning about choosing it, and a driver joining a cluster started here shows
        # the token the cluster expects. RAY_AUTH_MODE=disabled opts out.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        return
    if loopback and ray_constants.ENABLE_RAY_CLUSTER:  # Ray was imported before the variable was set
        raise SweepError("Ray was imported before mnistctl could keep it on 127.0.0.1; start the sweep first")
    where = {"_node_ip_address": "127.0.0.1"} if loopback else {}
    if address is not None:
        _join(address, where)
        return
    # address="local": a Ray of its own, never a cluster that `ray start` left on this machine
    context = ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                       log_to_driver=False, logging_level=logging.WARNING, **where)  # fmt: skip
    session = context.address_info.get("session_dir")
    if session:  # Ray's processes end with this driver, however it ends (see many/reaper)
        global _reaper
        _reaper = _reaper or reaper_for_driver()
        _reaper.stdin.write(f"{session}\n".encode())
        _reaper.stdin.flush()


def _join(address: str, where: dict[str, str]) -> None:
    """``ray.init`` at a cluster's address, which :func:`check_address` found answering: Ray's
    client retries a refused handshake once a second (5 times here, not 20: the head is known to
    answer), printing a line each time; those lines are kept from the terminal and read for the
    reason (the driver's own log in the cluster's session has them too)."""
    import ray

    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "5")  # a joining driver's retries
    with tempfile.TemporaryFile() as said, _stderr_into(said):
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, **where)
            return
        except (ConnectionError, RuntimeError) as err:  # AuthenticationError is a RuntimeError
            reason = str(err).splitlines()[0]
        said.seek(0)
        lines = said.read().decode("utf-8", "replace")
    mode = os.environ.get("RAY_AUTH_MODE", "disabled")
    refused = "InvalidAuthToken" in lines or "Unauthenticated" in lines
    raise SweepError(
        f"--address {address}: cannot join the cluster ("
        + ("it refuses this driver: its authentication token is missing or wrong" if refused else reason)
        + f"); this driver's RAY_AUTH_MODE is {mode}: it must match the cluster's (token: with its "
        "token in ~/.ray/auth_token or RAY_AUTH_TOKEN)"
    )


@contextlib.contextmanager
def _stderr_into(file: Any) -> Iterator[None]:
    """File descriptor 2 (where Ray's C++ code writes) into ``file`` for a while."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def stop_ray() -> None:
    """Shut Ray down now, deaf to Ctrl-C meanwhile: left to its exit hook, a second Ctrl-C
    during the shutdown prints Ray's traceback (its hook sleeps)."""
    if "ray" not in sys.modules:
        return
    import ray

    if not ray.is_initialized():
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ray.shutdown()
    finally:
        signal.signal(signal.SIGINT, previous)


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 0))


@dataclass
class Fit:
    """How a search under :func:`fitting` went: whether it was interrupted (Ctrl-C or SIGTERM,
    once or twice) and by which signal."""

    log: Path
    signal: signal.Signals | None = None
    full_disk: bool = False  # a trial found the disk full: the search was stopped for it

    @property
    def interrupted(self) -> bool:
        return self.signal is not None


_fit: Fit | None = None  # the search under way in this driver


def stop_for_full_disk() -> None:
    """Stop the search under way as Ctrl-C does (its state saved, the trials told), to be said
    as a full disk when it has stopped: a retry, or the next trial, would fail the same way."""
    if _fit is not None and not _fit.full_disk:
        _fit.full_disk = True
        os.kill(os.getpid(), signal.SIGINT)


class _LogFile(logging.FileHandler):
    """ray.log, which a full disk must not turn into tracebacks on the terminal (logging's
    "--- Logging error ---"): a line that cannot be written is dropped, and the sweep says why
    through its own errors (the trial's file that could not be written)."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass

    def close(self) -> None:
        with contextlib.suppress(OSError):  # the last lines' flush, on a full disk
            super().close()


FULL_BYTES = 1 << 20  # less free than this, and a write that failed is put down to a full disk


@contextlib.contextmanager
def full_disk_said(folder: Path, again: str) -> Iterator[None]:
    """Around a search and what it writes after: a full disk is one line naming the folder, the
    file it cut short, and how to go on once there is room. (Tune itself then fails in its own
    ways: an EOFError reading back a trial's error file it could not write.)"""
    try:
        yield
    except (OSError, EOFError) as err:
        enospc = isinstance(err, OSError) and err.errno == errno.ENOSPC
        try:
            disk = os.statvfs(folder)
            full = min(disk.f_bavail, disk.f_bfree) * disk.f_frsize < FULL_BYTES
        except OSError:
            full = False
        if not (enospc or full):
            raise
        what = f" writing {err.filename}" if isinstance(err, OSError) and err.filename else ""
        raise SweepError(f"{folder}: the disk is full{what}; free some space, then {again}") from None


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Around a search and the few writes after it (the trials' statuses, trials.csv,
    best.json): Ctrl-C and SIGTERM do nothing once the search has ended (:func:`fitting` takes
    them over during it), so a second Ctrl-C just after Tune stopped cannot cut those writes
    short and lose the line saying how to continue."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


class _Noticed(logging.Handler):
    """Notices Tune's line on the first Ctrl-C (Tune handles that one itself)."""

    def __init__(self, fit: Fit) -> None:
        super().__init__(logging.WARNING)
        self.fit = fit

    def emit(self, record: logging.LogRecord) -> None:
        if "Stop signal received" in record.getMessage() and self.fit.signal is None:
            self.fit.signal = signal.SIGINT


@contextlib.contextmanager
def fitting(log_dir: Path) -> Iterator[Fit]:
    """Around ``Tuner.fit()``: Ray's log lines go to ``log_dir/ray.log`` only (mnistctl says what
    happened, in its own words); SIGTERM is Ctrl-C (Tune's graceful stop: the state saved, the
    trials told); a second signal stops at once, as Tune's does. ``Fit.signal`` says which came.
    A search stopped for a full disk ends in ``OSError(ENOSPC)`` (:func:`full_disk_said` says it).
    """
    global _fit
    fit = _fit = Fit(log_dir / RAY_LOG)
    ray_logger = logging.getLogger("ray")
    handlers, propagate = list(ray_logger.handlers), ray_logger.propagate
    to_file = _LogFile(fit.log, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    noticed = _Noticed(fit)
    for handler in handlers:
        ray_logger.removeHandler(handler)
    ray_logger.addHandler(to_file)
    ray_logger.addHandler(noticed)
    ray_logger.propagate = False

    def second(signum: int, frame: object) -> None:  # Tune puts this back after the first
        fit.signal = fit.signal or signal.Signals(signum)
        raise KeyboardInterrupt

    def term(signum: int, frame: object) -> None:  # SIGTERM: as Ctrl-C, whoever handles that now
        fit.signal = fit.signal or signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, second), signal.signal(signal.SIGTERM, term)
    try:
        yield fit
        if fit.full_disk:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except KeyboardInterrupt:  # the second signal: Tune stopped without its last save
        fit.signal = fit.signal or signal.SIGINT
    finally:
        _fit = None
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
        for handler in (to_file, noticed):
            ray_logger.removeHandler(handler)
        to_file.close()
        for handler in handlers:
            ray_logger.addHandler(handler)
        ray_logger.propagate = propagate
