"""``mnistctl lesson``: the walk-through's models in the talk's order on the live page, each
step an ordinary run of the lesson's folder, trained by the one driver."""

from __future__ import annotations

import select
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from mnistctl.cli.app import err, loading_tensorflow, logger, main, out, quiet_option, set_option
from mnistctl.cli.views import LivePage, ProgressView, StopOnSignal
from mnistctl.train.events import Hook, TrainContext


@main.command()
@click.option(
    "--quick",
    is_flag=True,
    help="Fewer steps a model (2,000-3,000, not the talk's 10,000): the lesson within an hour on 2 cores.",
)
@click.option("--pause", is_flag=True, help="Wait for Enter before each step after the first.")
@click.option("--from", "start", metavar="STEP", help="Begin at this step: its number (1-8) or config name.")
@click.option(
    "--runs-dir",
    type=click.Path(path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="The lesson's runs go to RUNS_DIR/lesson (RUNS_DIR/lesson-quick with --quick).",
)
@click.option("--live/--no-live", default=True, show_default=True, help="Show the lesson on the live page.")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=8502, show_default=True, help="The page's port."
)
@set_option
@quiet_option
def lesson(
    quick: bool,
    pause: bool,
    start: str | None,
    runs_dir: Path,
    live: bool,
    port: int,
    overrides: tuple[str, ...],
    quiet: bool,
) -> None:
    """Train the walk-through's models one after another, as the talk does: softmax, five
    layers with sigmoid, ReLU, a decaying rate, dropout, convolutional, bigger with dropout,
    batch norm. Each step is headed by what changed and the talk's figure; a table of results
    grows step by step. Run the same command again to continue an interrupted lesson."""
    from mnistctl.many.driver import run_jobs
    from mnistctl.many.jobs import job_state
    from mnistctl.many.lesson import LessonProgress, find_step, plan, write_state

    planned = plan(quick, overrides)
    first = find_step(planned, start) if start else planned[0]
    todo = [p for p in planned if p.n >= first.n]
    folder = runs_dir / ("lesson-quick" if quick else "lesson")
    if live:
        from mnistctl.cli.train import check_port

        check_port(port)
    write_state(folder, planned, quick=quick, current=first.n)
    again = shlex.join(
        ["mnistctl", "lesson", *(["--quick"] if quick else []), *(f"--set={o}" for o in overrides)]
    )
    out.print(f"[bold]The walk-through in {len(planned)} steps[/], each a run in {escape(str(folder))}/")
    if quick:
        out.print("quick: each model trains 2,000-3,000 steps, not the talk's 10,000; its figures come lower")
    page = LivePage(port, err) if live else None
    if page:
        page.start(folder)
    with loading_tensorflow():
        import mnistctl.run.experiment  # noqa: F401  (TensorFlow, before the first step's header)
    finished: list = []
    by_name = {p.job.name: p for p in planned}

    def between(job, run) -> None:  # the driver calls it as each step's run finishes
        finished.append((by_name[job.name], run))
        out.print(_results(finished))
        rest = [p for p in todo if p.n > by_name[job.name].n]
        if pause and rest and job_state(rest[0].job, folder) != "done":
            nxt = rest[0]
            write_state(folder, planned, quick=quick, current=nxt.n, waiting_step=nxt.n,
                        waiting=f"paused before step {nxt.n}: press Enter in the terminal")  # fmt: skip
            out.print(f"next: step {nxt.n}, {escape(nxt.step.change)}. [bold]Press Enter[/] to start it")
            if not _wait_for_enter(stop):
                return
            write_state(folder, planned, quick=quick, current=nxt.n)

    hooks: list[Hook] = [StepHeader(by_name, len(planned)), LessonProgress(folder, planned, quick)]
    hooks.append(ProgressView(out, quiet))
    with StopOnSignal() as stop:
        runs = run_jobs([p.job for p in todo], folder, extra_hooks=hooks, log=logger(quiet), should_stop=stop,
                        on_finished=between)  # fmt: skip
    unfinished = [r for r in runs if not r.record.status.finished]
    if unfinished or stop():
        if page:
            page.stop()
        where = unfinished[0] if unfinished else None
        at = f" at step {where.record.steps_done} of {escape(where.path.name)}" if where else ""
        err.print(f"[yellow]lesson interrupted[/]{at}; continue with: {again}")
        sys.exit(stop.exit_code if stop() else 1)
    write_state(folder, planned, quick=quick, current=todo[-1].n)
    out.print(f"lesson finished: {len(finished)} steps, runs in {escape(str(folder))}/")
    if page:
        page.keep_serving(runs[-1].record.status)


class StepHeader(Hook):
    """Each step's heading on the terminal as its run starts: what changed, the talk's figure."""

    def __init__(self, by_name: dict, count: int) -> None:
        self.by_name, self.count = by_name, count

    def begin(self, ctx: TrainContext) -> None:
        from mnistctl.config.shipped import PUBLISHED

        p = self.by_name.get(ctx.run_dir.name if ctx.run_dir else "")
        if p is None:
            return
        talk = PUBLISHED[p.step.config][1]
        out.rule(f"step {p.n} of {self.count}: {escape(p.step.title)}")
        out.print(f"[bold]{escape(p.step.change)}[/]  (the talk: {talk}; {p.steps:,} steps here)")


def _results(finished: list) -> Table:
    """The lesson's results so far, one row a step, beside the talk's."""
    from mnistctl.config.shipped import PUBLISHED

    table = Table(title="the lesson so far", title_justify="left")
    for column in ("step", "model", "the talk", "this run", "at step", "time"):
        table.add_column(column, justify="left" if column in ("step", "model") else "right")
    for p, run in finished:
        record = run.record
        best = record.best_test_accuracy
        table.add_row(str(p.n), escape(p.step.short), f"{PUBLISHED[p.step.config][0]:.4g}",
                      f"{best:.4f}" if best is not None else "-", f"{record.best_step or 0:,}",
                      f"{record.wall_s or 0:.0f} s")  # fmt: skip
    return table


def _wait_for_enter(stop: Callable[[], bool]) -> bool:
    """Until Enter (True) or Ctrl-C (False); at once where stdin is not a terminal."""
    if not sys.stdin.isatty():
        return True
    while not stop():
        ready, _, _ = select.select([sys.stdin], [], [], 0.3)
        if ready:
            sys.stdin.readline()
            return True
    return False
