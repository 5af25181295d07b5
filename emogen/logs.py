"""Logging, configured once for every entrypoint and Ray worker.

Each line reads `[stage] message`: the logger name after `emogen.` is the stage (`experiment`,
`ser-seed0`, `tune`, ...), so interleaved lines of several trainings stay readable in
`ray job logs`. Lines go to stderr; stdout is kept for the one JSON summary a command prints.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "emogen"
_FORMAT = "[%(stage)s] %(message)s"


class _StageFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.stage = record.name.removeprefix(f"{ROOT}.") if record.name != ROOT else ROOT
        return super().format(record)


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (pytest and Ray swap it after import)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        # not setStream: it flushes the previous stream, which pytest's capture or Ray may
        # have closed by now
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(level: int | str | None = None) -> logging.Logger:
    """Attach the one stderr handler to the `emogen` logger (idempotent). Level: the
    argument, else $EMOGEN_LOG_LEVEL, else INFO. Does not touch the root logger, so Ray's
    and MLflow's own logging stay as they configure it."""
    logger = logging.getLogger(ROOT)
    level = level or os.environ.get("EMOGEN_LOG_LEVEL", "INFO")
    logger.setLevel(level.upper() if isinstance(level, str) else level)
    if not any(isinstance(h, _CurrentStderrHandler) for h in logger.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(_StageFormatter(_FORMAT))
        logger.addHandler(handler)
    logger.propagate = False
    return logger


def get_logger(stage: str) -> logging.Logger:
    """The logger whose lines read `[stage] ...`; configures logging on first use, so a
    Ray worker process that imports the library logs the same way as the driver."""
    if not logging.getLogger(ROOT).handlers:  # an entrypoint may have set its own level already
        configure_logging()
    return logging.getLogger(f"{ROOT}.{stage}")
