"""Result storage: one commit per configuration, derived tables, resume, the run-folder lock.

The commit point of a configuration is one file, ``records/<table>/<config_id>.json``, written
atomically after the configuration's predictions. Every table is derived from those record files:
``<table>.json`` (a list of records), ``<table>.csv`` (its mirror) and ``group_metrics.csv``
(``config_id, group, metric, value`` over all tables). A derived table is rebuilt whenever it is
stale: after each commit and whenever a sweep starts or ``refresh_tables`` runs. So a process
killed at any point keeps every committed configuration, and a rerun redoes only the one in flight.

``RunLock`` is an OS-level (``fcntl.flock``) lock on ``<run_dir>/.lock``: one writer per run
folder. A second process is refused with ``RunFolderBusy`` naming the holder's PID; a lock left by
a killed process is released by the kernel and taken over by the next run. See docs/reliability.md.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import re
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

RECORDS_DIR = "records"
GROUP_TABLE = "group_metrics.csv"
GROUP_COLUMNS = ["config_id", "group", "metric", "value"]
LOCK_FILE = ".lock"
RESULT_FOLDERS = (RECORDS_DIR, "predictions", "checkpoints")

NOT_A_FOLDER = ("results folder {path} is a file, not a folder: point results_dir at a folder "
                "(--set results_dir=PATH) or move the file away")
UNWRITABLE = ("cannot write to the run folder {run_dir} ({reason}): point results_dir at a "
              "writable folder (--set results_dir=PATH) or fix the folder's permissions")
DISK_FULL = ("no space left to write {path} ({reason}): the file was not written (its temporary "
             "copy is removed, so nothing is half-written) and every configuration committed "
             "before it is kept. Free some space, or point results_dir at another disk (--set "
             "results_dir=PATH), then run the same command again: it resumes where it stopped")
DISK_FULL_ELSEWHERE = ("no space left to write {path} ({reason}); every configuration committed "
                       "before it is kept. Free some space, or point results_dir at another disk "
                       "(--set results_dir=PATH), then run the same command again: it resumes "
                       "where it stopped")
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
RUN_FOLDER_BUSY = ("run folder {run_dir} is in use by process {pid} on {host} (since {since}; lock "
                   "file {path}): wait for that run to finish, or give this one its own folder "
                   "with --set run_name=NEW")
LOCK_NOT_A_FILE = ("the run folder's lock {path} is not a file (a folder or other special file "
                   "stands there); remove it (e.g. rmdir {path}) and run again, or give this run "
                   "its own folder with --set run_name=NEW")
STALE_LOCK = "run folder %s: took over the lock left by process %s, which is no longer running"
CORRUPT_RECORD = ("record file %s is damaged (%s); moved it to %s, and its configuration will be "
                  "run again")
LEGACY_DAMAGED = ("%s is damaged (%s): recovered the %d intact record(s) before the damage, kept "
                  "the damaged file as %s; the other configurations will be run again")
DAMAGED_PREDICTIONS = ("predictions file {path} is damaged ({reason}): delete it, and the next run "
                       "of the phase that made {config_id!r} redoes that configuration")
FORGOT_FAILED = "dropped %d failed record(s) of configurations no longer in this sweep, e.g. %s"


# ----------------------------------------------------------------------------- atomic writes

def atomic_write(path: str | Path, write: Callable[[str], None], *, durable: bool = False) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it into place.

    ``durable`` also flushes the file to disk before the rename (for commit points).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; results are shared
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in FULL_ERRNOS:
            raise DiskFull(DISK_FULL.format(path=path, reason=error.strerror or error)) from None
        raise
    return path


class DiskFull(ValueError):
    """A write found its disk full (or over quota): a clear error for the whole run, not a
    failure of the configuration being written (``DISK_FULL``)."""


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_text(path: str | Path, text: str, *, durable: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text), durable=durable)


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
    try:
        return pd.read_csv(path, dtype={"sample_id": str})
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as error:
        raise ValueError(DAMAGED_PREDICTIONS.format(path=path, reason=error,
                                                    config_id=config_id)) from None


# ----------------------------------------------------------------------------- the store

class ResultStore:
    """Records of one phase: one commit file per configuration, and the tables derived from them.

    ``records()`` lists the records in commit order; ``done_ids()`` the configurations that
    finished (status ok, predictions present); ``add`` commits one record and refreshes the
    derived tables. A run folder written by the old layout (``<name>.json`` only) is imported on
    first use, keeping every intact record of a damaged file.
    """

    def __init__(self, run_dir: str | Path, name: str):
        self.run_dir = Path(run_dir)
        self.name = name
        self.records_dir = self.run_dir / RECORDS_DIR / name
        self.json_path = self.run_dir / f"{name}.json"
        self.csv_path = self.run_dir / f"{name}.csv"
        self.groups_path = self.run_dir / GROUP_TABLE

    def record_path(self, config_id: str) -> Path:
        return self.records_dir / f"{config_id}.json"

    # reading
    def entries(self) -> list[dict]:
        """The intact commit files of this table, oldest commit first (damaged ones set aside)."""
        if not self.records_dir.is_dir():
            self._import_legacy()
        return _read_entries(self.records_dir)

    def records(self) -> list[dict]:
        return [entry["record"] for entry in self.entries()]

    def done_ids(self) -> set[str]:
        """Ids of configurations that finished (failed ones are retried on the next run)."""
        return {entry["record"]["config_id"] for entry in self.entries()
                if entry["record"].get("status") == "ok"
                and _predictions_present(self.run_dir, entry)}

    # writing
    def add(self, record: dict, per_group: pd.DataFrame | None = None, *,
            predictions: bool = False) -> None:
        """Commit one configuration (replacing an earlier commit of its id), then refresh the
        derived tables. ``predictions``: its predictions file was saved before this call."""
        record = _json_safe(record)
        config_id = record["config_id"]
        rows = [] if per_group is None else _json_safe(
            per_group.assign(config_id=config_id)[GROUP_COLUMNS].to_dict("records"))
        entry = {"record": record, "per_group": rows, "committed_ns": time.time_ns(),
                 "predictions": str(predictions_path(".", config_id)) if predictions else None}
        atomic_write_text(self.record_path(config_id), json.dumps(entry, indent=1), durable=True)
        self.refresh()

    def forget(self, config_ids: Iterable[str]) -> None:
        """Remove the commits of ``config_ids`` and refresh the tables."""
        for config_id in config_ids:
            self.record_path(config_id).unlink(missing_ok=True)
        self.refresh()

    def forget_failed_except(self, keep: set[str]) -> None:
        """Drop failed records of configurations not in ``keep`` (e.g. fixed or renamed ones)."""
        stale = [r["config_id"] for r in self.records()
                 if r.get("status") != "ok" and r["config_id"] not in keep]
        if stale:
            log.info(FORGOT_FAILED, len(stale), stale[0])
            self.forget(stale)

    def refresh(self) -> bool:
        """Rebuild the derived tables that differ from the commit files; True if any changed."""
        records = self.records()
        changed = _sync(self.json_path, json.dumps(records, indent=1) if records else None)
        changed |= _sync(self.csv_path,
                         pd.DataFrame(records).to_csv(index=False) if records else None)
        return _refresh_groups(self.run_dir) or changed

    # old layout
    def _import_legacy(self) -> None:
        if not self.json_path.is_file():
            return
        records, error = _intact_records(self.json_path.read_text(errors="replace"))
        groups = _legacy_groups(self.groups_path)
        staging = self.records_dir.with_name(f".{self.name}.import-{os.getpid()}")
        for n, record in enumerate(records):  # staged, then renamed: a kill imports all or none
            config_id = record["config_id"]
            entry = {"record": record, "per_group": groups.get(config_id, []),
                     "committed_ns": n, "predictions": None}
            if predictions_path(self.run_dir, config_id).is_file():
                entry["predictions"] = str(predictions_path(".", config_id))
            atomic_write_text(staging / f"{config_id}.json", json.dumps(entry, indent=1))
        staging.mkdir(parents=True, exist_ok=True)
        os.replace(staging, self.records_dir)
        log.info("imported %d record(s) of %s into %s", len(records), self.json_path,
                 self.records_dir)
        if error is not None:
            kept = self.json_path.with_name(f"{self.json_path.name}.damaged")
            os.replace(self.json_path, kept)
            log.warning(LEGACY_DAMAGED, self.json_path, error, len(records), kept)


def refresh_tables(run_dir: str | Path) -> bool:
    """Rebuild every stale derived table of a run folder from its commit files."""
    run_dir, changed = Path(run_dir), False
    names = {p.name for p in _table_folders(run_dir)}
    names |= {p.stem for p in run_dir.glob("*_results.json")}
    for name in sorted(names):
        changed |= ResultStore(run_dir, name).refresh()
    return changed


def holds_results(run_dir: str | Path) -> bool:
    """True when the run folder holds any result: a record, a prediction, a checkpoint or a
    table."""
    run_dir = Path(run_dir)
    if any(run_dir.glob("*_results.json")) or any(run_dir.glob("*_results.csv")):
        return True
    return any(path.is_file()
               for folder in RESULT_FOLDERS for path in (run_dir / folder).rglob("*"))


def _table_folders(run_dir: Path) -> list[Path]:
    """``records/<table>/`` folders (not the staging folders of an interrupted import)."""
    records = run_dir / RECORDS_DIR
    return sorted(p for p in records.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if records.is_dir() else []


def _read_entries(folder: Path) -> list[dict]:
    entries = []
    for path in sorted(folder.rglob("*.json")) if folder.is_dir() else []:
        try:
            entry = json.loads(path.read_text())
            if not isinstance(entry, dict) or "config_id" not in entry.get("record", {}):
                raise ValueError("no record with a config_id")
        except (ValueError, UnicodeDecodeError) as error:
            aside = path.with_name(path.name + ".damaged")
            os.replace(path, aside)
            log.warning(CORRUPT_RECORD, path, error, aside)
            continue
        entries.append(entry)
    return sorted(entries, key=lambda e: (e.get("committed_ns", 0), e["record"]["config_id"]))


def _predictions_present(run_dir: Path, entry: dict) -> bool:
    return entry.get("predictions") is None or (run_dir / entry["predictions"]).is_file()


def _sync(path: Path, text: str | None) -> bool:
    """Make ``path`` hold ``text`` (None: no file); True when it had to change."""
    if text is None:
        if path.is_file():
            path.unlink()
            return True
        return False
    try:
        if path.read_text() == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)
    return True


def _refresh_groups(run_dir: Path) -> bool:
    for legacy in run_dir.glob("*_results.json"):  # import every old-layout table first, so
        ResultStore(run_dir, legacy.stem).entries()  # its rows in the group table are kept
    folders = _table_folders(run_dir)
    entries = sorted((e for folder in folders for e in _read_entries(folder)),
                     key=lambda e: (e.get("committed_ns", 0), e["record"]["config_id"]))
    rows = [row for entry in entries for row in entry.get("per_group", [])]
    text = pd.DataFrame(rows, columns=GROUP_COLUMNS).to_csv(index=False) if rows else None
    return _sync(run_dir / GROUP_TABLE, text)


def _intact_records(text: str) -> tuple[list[dict], Exception | None]:
    """The records of a JSON list; for a damaged one, every record before the damage."""
    try:
        records = json.loads(text)
        if isinstance(records, list) and all(isinstance(r, dict) and "config_id" in r
                                             for r in records):
            return records, None
        error: Exception = ValueError("expected a list of records with a config_id")
    except ValueError as exc:
        error = exc
    decoder, records = json.JSONDecoder(), []
    start = text.find("[")
    position = start + 1 if start >= 0 else len(text)
    separator = re.compile(r"[\s,]*")
    while position < len(text):
        position = separator.match(text, position).end()
        if position >= len(text) or text[position] == "]":
            break
        try:
            record, position = decoder.raw_decode(text, position)
        except ValueError:
            break
        if isinstance(record, dict) and "config_id" in record:
            records.append(record)
    return records, error


def _legacy_groups(path: Path) -> dict[str, list[dict]]:
    try:
        frame = pd.read_csv(path)[GROUP_COLUMNS]
    except (OSError, ValueError, KeyError, pd.errors.ParserError):
        return {}
    return {config_id: _json_safe(rows.to_dict("records"))
            for config_id, rows in frame.groupby("config_id", sort=False)}


# ----------------------------------------------------------------------------- run-folder lock

class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder's lock."""


def prepare_run_dir(run_dir: str | Path) -> Path:
    """Create the run folder, or raise ValueError saying why it cannot be written."""
    run_dir = Path(run_dir)
    for folder in (run_dir, *run_dir.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise ValueError(NOT_A_FOLDER.format(path=folder))
            break
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as error:
        raise ValueError(UNWRITABLE.format(run_dir=run_dir,
                                           reason=error.strerror or error)) from None
    return run_dir


class RunLock:
    """``with RunLock(run_dir):`` — hold the run folder for this process (see the module doc)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        prepare_run_dir(self.run_dir)
        if self.path.is_dir() or (self.path.exists() and not self.path.is_file()):
            raise ValueError(LOCK_NOT_A_FILE.format(path=self.path, run_dir=self.run_dir))
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o666 & ~_UMASK)
        except OSError as error:
            raise ValueError(UNWRITABLE.format(run_dir=self.run_dir,
                                               reason=f"{self.path}: {error.strerror}")) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _holder(fd)
            os.close(fd)
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise ValueError(UNWRITABLE.format(run_dir=self.run_dir, reason=error)) from None
            raise RunFolderBusy(RUN_FOLDER_BUSY.format(run_dir=self.run_dir, path=self.path,
                                                       **holder)) from None
        previous = _holder(fd)
        if previous["pid"] != "unknown":
            log.warning(STALE_LOCK, self.run_dir, previous["pid"])
        stamp = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        os.ftruncate(fd, 0)
        os.pwrite(fd, stamp.encode() + b"\n", 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # an empty file: released cleanly, nothing to take over
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except ValueError:
        holder = {}
    return {key: holder.get(key, "unknown") for key in ("pid", "host", "since")}


# ----------------------------------------------------------------------------- sweeps

@dataclass(frozen=True)
class WorkUnit:
    """One configuration as plain, picklable data: what to run, never the objects it runs on.

    ``runner`` names a function of ``experiment.RUNNERS`` and ``args`` are its plain keyword
    arguments; it rebuilds the model and data it needs from ``run_dir`` (whose ``config.yaml``
    holds the run's config), so a unit can run in another process or on another machine.
    ``fields`` are the static fields of its record; ``needs`` the files (relative to
    ``run_dir``) that must exist before it can run.
    """

    config_id: str
    fields: dict
    runner: str
    args: dict
    run_dir: str
    phase: str
    needs: tuple = ()


Outcome = tuple  # (record, predictions or None, per_group or None) of one unit
Execute = Callable[[WorkUnit], Outcome]


def run_sweep(store: ResultStore, units: Iterable[WorkUnit], *, execute: Execute,
              force: bool = False, desc: str = "configurations", progress: bool = True) -> dict:
    """Run every unit not yet done with ``execute(unit)``, committing each result as soon as it
    finishes.

    First the derived tables are brought up to date and failed records of configurations no
    longer in ``units`` are dropped. A unit that raises is recorded with ``status='failed'`` and
    its error, and the sweep goes on. Returns counts of ``ran``, ``skipped`` and ``failed``.
    """
    units = list(units)
    store.forget_failed_except({unit.config_id for unit in units})
    store.refresh()
    done = set() if force else store.done_ids()
    counts = {"ran": 0, "skipped": 0, "failed": 0}
    bar = tqdm(units, desc=desc, unit="config", disable=not progress)
    for unit in bar:
        if unit.config_id in done:
            counts["skipped"] += 1
            continue
        bar.set_postfix_str(unit.config_id, refresh=True)
        counts["ran" if _run_unit(store, unit, execute) else "failed"] += 1
    log.info("%s: %d ran, %d skipped (already done), %d failed", desc, counts["ran"],
             counts["skipped"], counts["failed"])
    return counts


def _run_unit(store: ResultStore, unit: WorkUnit, execute: Execute) -> bool:
    start = time.perf_counter()
    try:
        outcome = execute(unit)
    except (KeyboardInterrupt, SystemExit, DiskFull):
        raise
    except Exception as error:  # a failing configuration must not stop the sweep
        log.debug("%s", traceback.format_exc())
        return commit_result(store, unit, error)
    return commit_result(store, unit, outcome, time.perf_counter() - start)


def commit_result(store: ResultStore, unit: WorkUnit, outcome: Outcome | BaseException,
                  wall_s: float = 0.0) -> bool:
    """The one way a unit's result enters the store: its predictions first, then its record
    (so a commit implies its predictions), or a ``failed`` record with the error. Returns
    whether the unit succeeded."""
    if isinstance(outcome, BaseException):
        log.error("configuration %s failed: %s", unit.config_id, outcome)
        store.add({"config_id": unit.config_id, **unit.fields, "status": "failed",
                   "error": f"{type(outcome).__name__}: {outcome}"})
        return False
    record, predictions, per_group = outcome
    if predictions is not None:
        save_predictions(store.run_dir, unit.config_id, predictions)
    store.add({"config_id": unit.config_id, **unit.fields, **record, "status": "ok", "error": "",
               "wall_s": round(wall_s, 3)}, per_group, predictions=predictions is not None)
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
