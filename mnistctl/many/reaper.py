"""Ray's processes end with the driver that started them, even a driver killed with SIGKILL.

On Linux Ray ties the processes it starts itself (its GCS, its raylet) to the driver: the kernel
kills them when it dies. Not the agents its raylet starts: after a SIGKILLed driver they try
for a minute to tell the dead cluster why, then exit. So beside a driver that starts Ray on this
machine runs a small process, in a session of its own, told the Ray session's directory. It
waits for the driver to end (its stdin closes, however the driver ended), then kills every
process that still has a file open in that directory: each Ray process keeps its logs there.

Run as ``python -m mnistctl.many.reaper``; it imports nothing of mnistctl.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator


def start() -> subprocess.Popen:
    """The reaper of this driver's Ray: write each Ray session directory to its stdin, and keep
    the Popen (the driver's end of the pipe) for the driver's life."""
    return subprocess.Popen(
        [sys.executable, "-m", "mnistctl.many.reaper"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # neither a Ctrl-C in the terminal nor a kill of the driver's group
    )


def holding(folder: str, besides: set[int]) -> Iterator[int]:
    """The processes with a file open under ``folder``, but ``besides`` (those of other users
    are not read)."""
    prefix = folder.rstrip("/") + "/"
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in besides:
            continue
        try:
            fds = os.listdir(f"/proc/{entry.name}/fd")
            if any(os.readlink(f"/proc/{entry.name}/fd/{fd}").startswith(prefix) for fd in fds):
                yield int(entry.name)
        except OSError:  # gone meanwhile, or not ours to read
            continue


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides what a Ctrl-C does
    driver = os.getppid()
    told = sys.stdin.buffer.read()  # until EOF: the driver's end
    # The driver's own exit closes the pipe too, before it has quite ended: it is left to end.
    besides = {os.getpid(), driver}
    for folder in told.decode("utf-8", "replace").splitlines():
        if folder.startswith("/"):
            for pid in holding(folder, besides):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    continue


if __name__ == "__main__":
    main()
