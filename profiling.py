"""Seconds per step type in this process: a step timer cheap enough to leave on.

    with profiling.step("training_step"):
        ...
    profiling.log_table()          # or profiling.table() for the rows

Totals are inclusive: a step timed inside another counts in both. When the environment names a
file in ``BNQ_PROFILE`` the table is also written there as JSON when the process exits, which is
how ``python -m benchmarks.bench_phases --profile`` collects it from each phase's process.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import time

PROFILE_ENV = "BNQ_PROFILE"
logger = logging.getLogger(__name__)

_totals: dict[str, list] = {}  # step name -> [seconds, count]


@contextlib.contextmanager
def step(name: str):
    """Add the block's wall seconds (and one call) to the total of ``name``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        entry = _totals.setdefault(name, [0.0, 0])
        entry[0] += time.perf_counter() - start
        entry[1] += 1


def table() -> list[dict]:
    """``{"step", "seconds", "count"}`` per step type, most seconds first."""
    rows = [{"step": name, "seconds": seconds, "count": count}
            for name, (seconds, count) in _totals.items()]
    return sorted(rows, key=lambda row: -row["seconds"])


def format_table(rows: list[dict]) -> str:
    """The rows of ``table()`` as aligned text lines."""
    width = max([len(row["step"]) for row in rows] + [4])
    return "\n".join(f"{row['step']:<{width}} {row['seconds']:9.1f} s {row['count']:7d} calls"
                     for row in rows)


def log_table(title: str = "time per step type") -> str:
    """Log (INFO) and return this process's table."""
    text = format_table(table())
    logger.info("%s:\n%s", title, text or "(nothing timed)")
    return text


def reset() -> None:
    _totals.clear()


def _write_on_exit() -> None:
    path = os.environ.get(PROFILE_ENV)
    if path and _totals:
        with open(path, "w") as handle:
            json.dump(table(), handle, indent=1)


atexit.register(_write_on_exit)
