"""Result storage: atomic writes, one record per finished configuration, resumable sweeps.

A phase appends each finished configuration's record at once, so a killed run loses at most the
configuration in flight and a rerun skips what is done. Records live in ``<name>.json`` (the
source of truth, a list of records) and a ``<name>.csv`` mirror; per-sample predictions live in
``predictions/<config_id>.csv.gz``; per-group numbers in ``group_metrics.csv``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; results are shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_frame(path: str | Path, frame: pd.DataFrame) -> Path:
    """Write a DataFrame as CSV (gzip when the name ends in .gz) atomically."""
    return atomic_write(path, lambda tmp: frame.to_csv(
        tmp, index=False, compression="gzip" if Path(path).suffix == ".gz" else None))


def predictions_path(run_dir: str | Path, config_id: str) -> Path:
    return Path(run_dir) / "predictions" / f"{config_id}.csv.gz"


def save_predictions(run_dir: str | Path, config_id: str, table: pd.DataFrame) -> Path:
    return atomic_write_frame(predictions_path(run_dir, config_id), table)


def load_predictions(run_dir: str | Path, config_id: str) -> pd.DataFrame:
    path = predictions_path(run_dir, config_id)
    if not path.is_file():
        raise FileNotFoundError(f"no predictions for {config_id!r} at {path}: run the phase that "
                                "makes this configuration first (e.g. --phase baseline)")
    return pd.read_csv(path, dtype={"sample_id": str})


class ResultStore:
    """Records of one phase: ``<run_dir>/<name>.json`` plus a CSV mirror and a group table."""

    def __init__(self, run_dir: str | Path, name: str):
        self.run_dir = Path(run_dir)
        self.json_path = self.run_dir / f"{name}.json"
        self.csv_path = self.run_dir / f"{name}.csv"
        self.groups_path = self.run_dir / "group_metrics.csv"

    def records(self) -> list[dict]:
        if not self.json_path.is_file():
            return []
        return json.loads(self.json_path.read_text())

    def done_ids(self) -> set[str]:
        """Ids of configurations that finished (failed ones are retried on the next run)."""
        return {r["config_id"] for r in self.records() if r.get("status") == "ok"}

    def add(self, record: dict, per_group: pd.DataFrame | None = None) -> None:
        """Replace any earlier record with the same id, then rewrite both files atomically."""
        records = [r for r in self.records() if r["config_id"] != record["config_id"]]
        records.append(_json_safe(record))
        atomic_write_text(self.json_path, json.dumps(records, indent=1))
        atomic_write_frame(self.csv_path, pd.DataFrame(records))
        if per_group is not None:
            self._add_groups(record["config_id"], per_group)

    def _add_groups(self, config_id: str, per_group: pd.DataFrame) -> None:
        rows = per_group.assign(config_id=config_id)[["config_id", "group", "metric", "value"]]
        if self.groups_path.is_file():
            old = pd.read_csv(self.groups_path)
            rows = pd.concat([old[old["config_id"] != config_id], rows], ignore_index=True)
        atomic_write_frame(self.groups_path, rows)


@dataclass(frozen=True)
class WorkUnit:
    """One configuration: its id, the static fields of its record, and the work to run it.

    ``run()`` returns ``(record, predictions, per_group)``; the record is merged over ``fields``.
    """

    config_id: str
    fields: dict
    run: Callable[[], tuple[dict, pd.DataFrame | None, pd.DataFrame | None]]


def run_sweep(store: ResultStore, units: Iterable[WorkUnit], *, force: bool = False,
              desc: str = "configurations", progress: bool = True) -> dict:
    """Run every unit not yet done, storing each result as soon as it finishes.

    A unit that raises is recorded with ``status='failed'`` and its error, and the sweep goes
    on. Returns counts of ``ran``, ``skipped`` and ``failed`` units.
    """
    units = list(units)
    done = set() if force else store.done_ids()
    counts = {"ran": 0, "skipped": 0, "failed": 0}
    bar = tqdm(units, desc=desc, unit="config", disable=not progress)
    for unit in bar:
        if unit.config_id in done:
            counts["skipped"] += 1
            continue
        bar.set_postfix_str(unit.config_id, refresh=True)
        counts["ran" if _run_unit(store, unit) else "failed"] += 1
    log.info("%s: %d ran, %d skipped (already done), %d failed", desc, counts["ran"],
             counts["skipped"], counts["failed"])
    return counts


def _run_unit(store: ResultStore, unit: WorkUnit) -> bool:
    start = time.perf_counter()
    try:
        record, predictions, per_group = unit.run()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:  # a failing configuration must not stop the sweep
        log.error("configuration %s failed: %s", unit.config_id, error)
        log.debug("%s", traceback.format_exc())
        store.add({"config_id": unit.config_id, **unit.fields, "status": "failed",
                   "error": f"{type(error).__name__}: {error}"})
        return False
    if predictions is not None:
        save_predictions(store.run_dir, unit.config_id, predictions)
    store.add({"config_id": unit.config_id, **unit.fields, **record, "status": "ok", "error": "",
               "wall_s": round(time.perf_counter() - start, 3)}, per_group)
    return True


def _json_safe(value):
    """NaN/inf → None and numpy scalars → Python, so the JSON file stays standard."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
