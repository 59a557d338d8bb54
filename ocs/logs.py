"""structlog set-up: JSON lines in production, console in development."""

from __future__ import annotations

import logging
import os
import sys

import structlog

LEVEL_ENV = "OCS_LOG_LEVEL"
"""The server's log level (debug, info, warning, error), for all of its processes."""


_level = [logging.INFO]
"""The level in force (a list: set_level changes it for loggers already cached)."""
_NUMBER = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "warn": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL,
           "exception": logging.ERROR, "fatal": logging.CRITICAL}


def set_level(name: str) -> None:
    """Change the level now, also for loggers already in use (a config reload)."""
    _level[0] = logging.getLevelNamesMapping().get(name.upper(), logging.INFO)


def _filter(_logger: object, method: str, event: structlog.typing.EventDict,
            ) -> structlog.typing.EventDict:
    if _NUMBER.get(method, logging.INFO) < _level[0]:
        raise structlog.DropEvent
    return event


def configure(fmt: str = "auto", level: int | None = None) -> None:
    """``fmt``: auto (console on a TTY, JSON otherwise), json or console. ``level``:
    default ``$OCS_LOG_LEVEL`` (as ``ocs serve`` sets it), else info; :func:`set_level`
    changes it later."""
    if level is None:
        set_level(os.environ.get(LEVEL_ENV, "info"))
    else:
        _level[0] = level
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            _filter,  # first: an event below the level costs nothing more
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
