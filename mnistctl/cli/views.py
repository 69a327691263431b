"""What a terminal shows while training: a live progress view (a hook), the ``--watch``
dashboard redraw (a hook), and the guard that turns Ctrl-C into a clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from mnistctl.cli.app import err, out
from mnistctl.errors import MnistctlError
from mnistctl.status import Status
from mnistctl.train.events import EvalEvent, Hook, TrainContext

SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 16) -> str:
    """A tiny unicode chart of the last ``width`` values."""
    values = [v for v in values[-width:] if v == v]  # drop NaN
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, int((v - low) / span * len(SPARKS)))] for v in values)


def run_label(directory: str) -> str:
    """A run's name as the user gave it (``--name``, or the config's): its directory's name
    without the time stamp in front (``20261129T150746Z-name``)."""
    stamp, dash, name = directory.partition("-")
    return name if dash and len(stamp) == 16 and stamp[8] == "T" and stamp.endswith("Z") else directory


class ProgressView(Hook):
    """A live progress bar with the latest metrics and sparklines, or one line per evaluation
    when the output is not a terminal (CI, pipes). ``quiet`` silences both."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self.progress: Progress | None = None
        self.screen: Live | None = None
        self.task = None
        self.accuracies: list[float] = []
        self.losses: list[float] = []

    def begin(self, ctx: TrainContext) -> None:
        if not self.live:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=None),
            MofNCompleteColumn(),
            TextColumn("lr {task.fields[lr]:.5f}  {task.fields[speed]} img/s"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.progress.add_task(
            run_label(ctx.run_dir.name) if ctx.run_dir else ctx.experiment.name,
            total=ctx.total_steps,
            completed=ctx.step,
            lr=ctx.experiment.schedule(ctx.step),
            speed="-",
        )
        self.metrics = Text("waiting for the first evaluation", style="dim", overflow="fold")
        self.screen = Live(Group(self.progress, self.metrics), console=self.console, refresh_per_second=4)
        self.screen.start()

    def after_step(self, ctx: TrainContext) -> None:
        if self.progress is not None and (ctx.step % 10 == 0 or ctx.step == ctx.total_steps):
            self.progress.update(self.task, completed=ctx.step, lr=ctx.experiment.schedule(ctx.step))

    def after_eval(self, ctx: TrainContext, event: EvalEvent) -> None:
        record = event.record
        which = "best val" if ctx.experiment.data.validation else "best"
        best = f"{which} {ctx.best_accuracy:.4f}@{ctx.best_step}"
        self.accuracies.append(record.test_accuracy)
        self.losses.append(record.test_loss)
        if self.progress is not None:
            self.metrics.plain = ""
            self.metrics.style = ""
            self.metrics.append(f"train acc {record.train_accuracy:.4f} loss {record.train_loss:.4f}   ")
            self.metrics.append(f"test acc {record.test_accuracy:.4f} ")
            self.metrics.append(sparkline(self.accuracies), style="green")
            self.metrics.append(f" loss {record.test_loss:.4f} ")
            self.metrics.append(sparkline(self.losses), style="red")
            self.metrics.append(f"   {best}", style="bold")
            self.progress.update(self.task, speed=f"{record.images_per_s:,.0f}")
        elif not self.quiet:
            self.console.print(
                f"step {record.step}/{ctx.total_steps}  lr {record.learning_rate:.5f}  "
                f"train acc {record.train_accuracy:.4f} loss {record.train_loss:.4f}  "
                f"test acc {record.test_accuracy:.4f} loss {record.test_loss:.4f}  "
                f"{best}  {record.images_per_s:,.0f} img/s"
            )

    def end(self, ctx: TrainContext, status: Status) -> None:
        if self.screen is not None:
            self.screen.stop()


class RedrawView(Hook):
    """Redraws RUN_DIR/dashboard.png every ``every`` evaluations (``train --watch N``).

    Drawing (about half a second) happens on a thread of its own, from the files the run has
    written, so the training never waits for it: a redraw asked for while one is under way is
    folded into the next. The digit panels show the latest evaluation's digits.
    """

    def __init__(self, every: int) -> None:
        self.every = every
        self.evaluations = 0
        self._wanted = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.drawn = 0  # dashboards written (for tests)
        self.error: str | None = None

    def begin(self, ctx: TrainContext) -> None:
        self._thread = threading.Thread(target=self._draw_when_asked, args=(ctx.run_dir,), daemon=True)
        self._thread.start()

    def after_eval(self, ctx: TrainContext, event: EvalEvent) -> None:
        self.evaluations += 1
        if self.evaluations % self.every == 0:
            self._wanted.set()

    def end(self, ctx: TrainContext, status: Status) -> None:
        if status.checkpointed_at_end:
            self._wanted.set()  # the final picture, with the end's predictions
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _draw_when_asked(self, run_dir: Path) -> None:
        from mnistctl.report import plots
        from mnistctl.run.directory import load_run

        while True:
            self._wanted.wait(timeout=0.2)
            if self._wanted.is_set():
                self._wanted.clear()
                try:
                    plots.save(plots.dashboard(load_run(run_dir)), run_dir / "dashboard.png")
                    self.drawn += 1
                except MnistctlError as err:  # a picture is not worth stopping the training for
                    self.error = str(err)
            elif self._done.is_set():
                return


class LivePage(Hook):
    """``train --live``: ``mnistctl watch RUN_DIR`` in a process of its own, so that serving the
    page takes nothing from the training process. It outlives the training on purpose (the page
    shows the finished run until Ctrl-C: ``keep_serving``), never the training's process: it
    exits by itself when this process is gone (``--exit-with``), however that ends."""

    def __init__(self, port: int, console: Console) -> None:
        self.port, self.console = port, console
        self.process: subprocess.Popen | None = None

    def begin(self, ctx: TrainContext) -> None:
        if self.process is None and ctx.run_dir is not None:
            self.start(ctx.run_dir)

    def start(self, path: Path) -> None:
        """Serve the page of ``path``: a run, or a folder (a lesson's, started before its runs)."""
        command = [sys.executable, "-m", "mnistctl", "watch", str(path), "--port", str(self.port),
                   "--quiet", "--exit-with", str(os.getpid())]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        self.console.print(f"live page: http://127.0.0.1:{self.port}/")

    def keep_serving(self, status: Status) -> None:
        """After training: the page goes on showing the finished run until Ctrl-C."""
        if self.process is None or self.process.poll() is not None:
            return
        self.console.print(
            f"training {status}; the live page still shows it at http://127.0.0.1:{self.port}/ "
            "(Ctrl-C stops it)"
        )
        try:
            self.process.wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


class StopOnSignal:
    """First Ctrl-C or SIGTERM: finish the step, checkpoint, stop. A second Ctrl-C: stop now."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __enter__(self) -> StopOnSignal:
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        err.print(
            f"[yellow]{signal.Signals(signum).name}[/]: stopping after this step and saving a checkpoint"
        )

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """What the shell expects of a process stopped by this signal (130 for Ctrl-C)."""
        return 128 + (self.signum or signal.SIGINT)


# -- tables of many rows (compare) ----------------------------------------------------------


def column_texts(rows: list[dict], column: str, cell: Callable[[Any, str], str]) -> list[str]:
    """A column's cells as text, each distinct value formatted once."""
    done: dict[Any, str] = {}
    texts = []
    for row in rows:
        value = row.get(column)
        try:
            text = done[value]
        except KeyError:
            text = done[value] = cell(value, column)
        except TypeError:  # a list: unhashable
            text = cell(value, column)
        texts.append(text)
    return texts


def print_columns(headers: list[str], columns: list[list[str]], right: list[bool]) -> None:
    """Columns two spaces apart, the header in bold, numbers aligned right; written as plain
    text, so ten thousand rows print in a blink (a rich Table takes seconds), and never cut:
    a line wider than the terminal wraps."""
    widths = [max(len(h), *map(len, texts)) for h, texts in zip(headers, columns, strict=True)]
    aligned = [
        [t.rjust(w) if r else t.ljust(w) for t in texts]
        for texts, w, r in zip(columns, widths, right, strict=True)
    ]
    head = "  ".join(h.rjust(w) if r else h.ljust(w) for h, w, r in zip(headers, widths, right, strict=True))
    out.print(f"[bold]{escape(head.rstrip())}[/]", soft_wrap=True, highlight=False)
    out.file.write("".join("  ".join(line).rstrip() + "\n" for line in zip(*aligned, strict=True)))
    out.file.flush()


def is_numeric(rows: list[dict], column: str) -> bool:
    """Whether a column holds numbers (aligned right)."""
    values = [row.get(column) for row in rows if row.get(column) is not None]
    return bool(values) and all(isinstance(v, (int, float)) for v in values)
