"""Quiet logs: a message that repeats is logged once, and once per run with its count.

``install()`` puts a ``RepeatFilter`` on the root logger's handlers: the first record of each
distinct message (logger, level and the formatted text) passes, later identical ones are counted
and dropped. ``RepeatFilter.finish()`` (``main`` calls it when the run ends) then says of each
repeated message how often it occurred, pointing at the one line that stated it, e.g. "the INFO
message of fairness_metrics first logged at 23:55:00 ('...') occurred 44 times in this run; shown
once". Torch-free.
"""
from __future__ import annotations

import logging
import time
from collections import Counter

logger = logging.getLogger(__name__)
QUOTED = 60
"""Characters of a repeated message quoted in its summary line, so two summaries never read
alike."""


class RepeatFilter(logging.Filter):
    """Passes the first record of each distinct message and counts the rest."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()
        self.first: dict = {}
        self.handlers: list[logging.Handler] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == __name__:
            return True
        decided = getattr(record, "_shown_once", None)  # each handler sees the same record
        if decided is not None:
            return decided
        key = (record.name, record.levelname, record.getMessage())
        self.counts[key] += 1
        if self.counts[key] == 1:
            self.first[key] = record.created
        record._shown_once = self.counts[key] == 1
        return record._shown_once

    def repeated(self) -> list[tuple[tuple[str, str, str], int]]:
        """((logger, level, message), times) of every message seen more than once."""
        return [(key, n) for key, n in self.counts.items() if n > 1]

    def log_summary(self) -> None:
        """Log each repeated message once with its count (at its own level)."""
        for key, n in self.repeated():
            name, level, message = key
            first = time.strftime("%H:%M:%S", time.localtime(self.first[key]))
            quoted = message if len(message) <= QUOTED else message[:QUOTED - 1] + "…"
            logger.log(logging.getLevelName(level), "the %s message of %s first logged at %s "
                       "(%r) occurred %d times in this run; shown once", level, name, first,
                       quoted, n)
        self.counts.clear()
        self.first.clear()

    def finish(self) -> None:
        """The end of a run: ``log_summary``, then take the filter off the handlers again."""
        self.log_summary()
        for handler in self.handlers:
            handler.removeFilter(self)
        self.handlers = []


def install(root: logging.Logger | None = None) -> RepeatFilter:
    """Put one ``RepeatFilter`` on every handler of ``root`` (the root logger by default, after
    ``logging.basicConfig``); returns it."""
    root = root or logging.getLogger()
    repeats = RepeatFilter()
    for handler in root.handlers:
        handler.addFilter(repeats)
        repeats.handlers.append(handler)
    return repeats
