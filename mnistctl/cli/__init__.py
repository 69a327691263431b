"""The command line, by family: ``train`` (train, reproduce), ``inspect`` (validate, eval,
compare, plot), ``manage`` (show, diff, tag, note, rm, restore, gc), ``queue``, ``serving``
(export, predict, serve), ``lesson`` and ``data``; ``views`` holds the terminal views (progress, watch) and
the signal guard; ``app`` the group and the shared options."""

from mnistctl.cli import data, inspect, lesson, manage, queue, serving, train  # noqa: F401  (registers the commands)
from mnistctl.cli.app import main
from mnistctl.cli.views import sparkline

__all__ = ["main", "sparkline"]
