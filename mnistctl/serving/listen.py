"""Serving over a socket: binding it, uvicorn's settings (the headers deadline, the connection
limit, the C parser), and one process or several forked ones sharing the socket. The app
itself, its routes and their limits, is :mod:`mnistctl.serving.serve`'s."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from mnistctl.errors import MnistctlError
from mnistctl.serving.serve import Batching, create_app

MAX_CONNECTIONS = 512  # beyond this, uvicorn answers 503 at once
DEFAULT_BATCHING = Batching()  # None: every request runs alone


def _freeze_garbage() -> None:
    # TensorFlow leaves millions of Python objects behind; a full garbage collection walks them
    # all (~0.2 s here), a pause that every request waiting at that moment would see. Freezing
    # them out of the collector's view keeps collections small (p99 latency 267 -> 68 ms with
    # 32 clients, docs/BENCHMARKS.md).
    gc.collect()
    gc.freeze()


class ServeError(MnistctlError):
    """An address the server cannot listen on."""


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, before anything is loaded or announced.

    Raises:
        ServeError: the host is unknown or the port is taken, in one line.
    """
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise ServeError(
            f"--host {host}: no such address ({getattr(err, 'strerror', None) or err})"
        ) from None
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise ServeError(f"{host}:{port}: cannot listen there ({err.strerror})") from None
    return sock


HEADERS_TIMEOUT_S = 10.0  # from a request's first byte to the end of its headers
STOP_WITHIN_S = 3  # a signal lets the requests in flight finish for this long, then stops them


def uvicorn_config(app: FastAPI, headers_timeout_s: float = HEADERS_TIMEOUT_S, **where: Any) -> Any:
    """The server's settings: bounded connections, slow senders timed out (``where``: host, port).

    httptools (a C HTTP parser) and uvloop when installed - with 32 clients they serve 1.3x the
    requests of the pure-Python h11 parser (docs/BENCHMARKS.md) - else h11 and asyncio.
    """
    import uvicorn

    fast = importlib.util.find_spec("httptools") is not None
    uvloop = importlib.util.find_spec("uvloop") is not None
    return uvicorn.Config(
        app,
        http=_headers_deadline_protocol(headers_timeout_s, "httptools" if fast else "h11"),
        loop="uvloop" if uvloop else "asyncio",
        log_level="warning",
        access_log=False,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=STOP_WITHIN_S,
        **where,
    )


def _headers_deadline_protocol(timeout_s: float, parser: str) -> type:
    """uvicorn's HTTP protocol (``httptools`` or ``h11``) with a deadline for a request's headers.

    uvicorn times out a connection only while it idles after a response: one that opens and
    sends nothing, or half its headers, is held for ever (slowloris). The body has its own
    deadline (:func:`_read_body`); this covers the time before the app sees the request.
    """
    if parser == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    class HeadersDeadline(Base):  # type: ignore[misc, valid-type]
        _deadline: asyncio.TimerHandle | None = None
        _awaiting_headers = True  # httptools: from a request's first byte until its headers are in

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()  # a connection that never sends a byte is timed out too

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        # h11: after each chunk, is the request still short of its headers?
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if parser == "h11" and self._waiting():
                self._arm()
            elif parser == "h11":
                self._disarm()

        # httptools: it says when a request begins and when its headers are complete.
        def on_message_begin(self) -> None:
            self._awaiting_headers = True
            self._arm()
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._awaiting_headers = False
            self._disarm()
            super().on_headers_complete()

        def _waiting(self) -> bool:
            if parser == "h11":
                import h11

                return self.conn.their_state is h11.IDLE  # h11 leaves IDLE once the headers are in
            return self._awaiting_headers

        def _arm(self) -> None:
            if self._deadline is None and not self.transport.is_closing():
                self._deadline = self.loop.call_later(timeout_s, self._give_up)

        def _give_up(self) -> None:
            self._deadline = None
            if self._waiting() and not self.transport.is_closing():
                self.transport.close()

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

    return HeadersDeadline


def serve(
    predictor: Any,
    sock: socket.socket,
    batching: Batching | None = DEFAULT_BATCHING,
    log: Callable[[str], None] | None = None,
) -> None:
    """Serve on a socket from :func:`bind` until interrupted (``log``: one line per request)."""
    app = create_app(predictor, batching=batching, log=log)
    _freeze_garbage()
    run_server(app, sock)


def run_server(app: FastAPI, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until a signal. The requests in flight then have
    ``STOP_WITHIN_S`` to finish before uvicorn cancels them, quietly: a request cut short by a
    stop asked for is not the server's error. (A request's thread still computing - a listing of
    10,000 runs - goes on; ``mnistctl.cli.app`` does not wait for it after Ctrl-C.)"""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
            super().handle_exit(sig, frame)

    Server(uvicorn_config(app)).run(sockets=[sock])


RESTART_GIVE_UP = 3  # workers in a row that die within QUICK_S of their start: stop serving
QUICK_S = 10.0


def serve_forked(
    load: Callable[[], Any],
    sock: socket.socket,
    batching: Batching | None,
    workers: int,
    log: Callable[[str], None] | None = None,
) -> None:
    """Serve from ``workers`` processes that share the listening socket, each with a model of its
    own (``load`` runs in each of them). Each process's Python - HTTP, JSON, the hand-over to the
    model - then runs on a core of its own; the kernel hands each new connection to one of them.

    A worker that dies (killed, out of memory) is replaced, after a back-off that doubles while
    replacements die soon after they start, and the others serve meanwhile; after
    ``RESTART_GIVE_UP`` such quick deaths in a row (a model that cannot load) serving stops.

    Call it before TensorFlow is imported: the processes are forked, and TensorFlow's threads do
    not survive a fork. Ctrl-C reaches every process (one process group); SIGTERM to this one is
    passed on, and this process then ends by SIGTERM too, as a single server does.

    Raises:
        ServeError: workers that could not start, or kept dying as soon as they started.
    """
    alive: dict[int, float] = {}  # pid -> when it started
    stopping: signal.Signals | None = None

    def pass_on(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = stopping or signal.Signals(signum)
        for child in list(alive):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    def start() -> None:
        pid = os.fork()
        if pid == 0:  # a worker: load, serve, and never return into the parent's code
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # uvicorn installs its own
            code = 0
            try:
                serve(load(), sock, batching, log)
            except KeyboardInterrupt:
                pass
            except BaseException as err:  # reported; then this process ends, whatever it was
                print(f"error: serving process {os.getpid()}: {err}", file=sys.stderr, flush=True)
                code = 1
            os._exit(code)
        alive[pid] = time.monotonic()

    sys.stdout.flush()  # nothing buffered is written twice
    sys.stderr.flush()
    previous = signal.signal(signal.SIGTERM, pass_on)  # before the first fork: no orphans
    failed: list[str] = []
    quick_deaths = 0
    try:
        try:
            for _ in range(workers):
                start()
        except OSError as err:  # fork failed: stop the ones started
            pass_on(signal.SIGTERM, None)
            for child in list(alive):
                os.waitpid(child, 0)
            raise ServeError(f"cannot start {workers} serving processes: {err.strerror or err}") from None
        while alive:
            try:
                pid, status = os.wait()
            except KeyboardInterrupt:  # Ctrl-C: the workers got it too and are shutting down
                stopping = stopping or signal.SIGINT
                continue
            started = alive.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            if started is None or stopping or code in (0, -signal.SIGTERM, -signal.SIGINT):
                continue  # uvicorn re-raises SIGTERM and SIGINT after stopping
            quick_deaths = quick_deaths + 1 if time.monotonic() - started < QUICK_S else 0
            if quick_deaths >= RESTART_GIVE_UP:
                failed.append(f"{quick_deaths} serving processes in a row exited within {QUICK_S:.0f} s "
                              f"of starting (the last, {pid}, with {code})")  # fmt: skip
                pass_on(signal.SIGTERM, None)
                continue
            delay = 0.5 * 2**quick_deaths
            print(f"serving process {pid} exited with {code}; starting another in {delay:g} s "
                  f"({len(alive)} still serving)", file=sys.stderr, flush=True)  # fmt: skip
            time.sleep(delay)
            if not stopping:
                start()
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    if failed:
        raise ServeError(f"serving stopped: {'; '.join(failed)}")
    if stopping is signal.SIGTERM:  # end as a single server ends on SIGTERM: exit status 143
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
