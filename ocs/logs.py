"""structlog set-up: JSON lines in production, console in development."""

from __future__ import annotations

import logging
import os
import sys

import structlog

LEVEL_ENV = "OCS_LOG_LEVEL"
"""The server's log level (debug, info, warning, error), for all of its processes."""


def configure(fmt: str = "auto", level: int | None = None) -> None:
    """``fmt``: auto (console on a TTY, JSON otherwise), json or console. ``level``:
    default ``$OCS_LOG_LEVEL`` (as ``ocs serve`` sets it), else info."""
    if level is None:
        name = os.environ.get(LEVEL_ENV, "info").upper()
        level = logging.getLevelNamesMapping().get(name, logging.INFO)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
