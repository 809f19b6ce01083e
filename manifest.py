"""A user's own image dataset described by a manifest, read and validated without torch.

The manifest follows Hugging Face ImageFolder's ``metadata.csv``: one row per image, a
``file_name`` column with the image's path relative to the manifest's folder, a target column,
any number of sensitive columns (text, any number of values) and optionally a ``split`` column
(``train``/``val``/``test``). ``read_manifest`` checks every row before any image is touched,
and every image path before the file is looked at: a path that leaves the manifest's folder
(``../x.png``, an absolute path, a symlink resolving outside) is refused and never opened.
``datasets.load_dataset("manifest", path, ...)`` builds the datasets from what it returns;
docs/datasets.md has the format and the rules.

Every error names where (``line N`` of a CSV, the header being line 1; ``row N`` of a parquet
file, the first data row being row 1), the bad value, what was expected and the fix; the message
templates below are module constants so tests and callers can match them.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

FILE_COLUMN = "file_name"
SPLIT_COLUMN = "split"
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
RESERVED_COLUMNS = (FILE_COLUMN, SPLIT_COLUMN, "sample_id", "target", "group")
"""Columns of ``FaceDataset.metadata`` that a sensitive attribute may not be named after."""
MISSING_MARKERS = ("", "nan", "na", "n/a", "<na>", "null", "none")
"""Cell texts (compared lower-cased, spaces stripped) that mean "no value"."""
TRUE_TEXTS = ("1", "1.0", "true")
FALSE_TEXTS = ("0", "0.0", "false")
FORMATS = (".csv", ".parquet")

MANIFEST_NOT_FOUND = ("manifest {path} does not exist. Pass the path of your metadata.csv (config: "
                      "data.manifest), the file listing file_name, the target and the sensitive "
                      "columns; see docs/datasets.md")
MANIFEST_IS_FOLDER = ("manifest {path} is a folder; pass the manifest file itself, e.g. "
                      "{path}/metadata.csv (config: data.manifest)")
MANIFEST_FORMAT = ("manifest {path}: unsupported file type {suffix!r}; expected one of {formats}. "
                   "Save the table as CSV (metadata.csv) with a header line")
PARQUET_NEEDS_PYARROW = ("manifest {path}: reading parquet needs the pyarrow package, which is not "
                         "installed. Install it (pip install pyarrow) or save the table as CSV")
NOT_UTF8 = ("manifest {path}, line {line}: byte {byte} is not UTF-8 text. Save the file as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8 FILE > metadata.csv)")
EMPTY_MANIFEST = ("manifest {path} has no data rows; expected a header line and one row per image, "
                  "e.g. 'file_name,smiling,skin_type' then 'img/0001.png,yes,III'")
BAD_HEADER = ("manifest {path}, line 1: column names {names} are {problem}; expected distinct, "
              "non-empty names. Rename the columns in the header line")
ROW_WIDTH = ("manifest {path}, {where}: {found} field(s), but the header has {expected} "
             "({columns}). Fix the row: quote values that contain commas")
NEED_COLUMNS = ("a manifest dataset needs {argument} (config: data.{argument}): name the "
                "{role} among the manifest's columns {columns}")
MISSING_COLUMN = ("manifest {path}: no column {column!r} (the {role}); the manifest has columns "
                  "{columns}. Name one of them (config: data.{key}) or add the column")
RESERVED_COLUMN = ("manifest {path}: column {column!r} cannot be a {role}: the name is reserved "
                   "({reserved}). Rename the column in the manifest, e.g. to {suggestion!r}")
TARGET_IS_SENSITIVE = ("column {column!r} is both the target and a sensitive attribute "
                       "{sensitive}; name it once: keep it as the target or as a sensitive "
                       "attribute")
REPEATED_SENSITIVE = ("sensitive attributes {sensitive} name {column!r} more than once; name each "
                      "column once")
EMPTY_FILE_NAME = ("manifest {path}, {where}: file_name is empty; expected the image's path "
                   "relative to {folder}. Fill it in or remove the row")
OUTSIDE_FOLDER = ("manifest {path}, {where}: file_name {value!r} {how}; expected a path inside the "
                  "manifest's folder {folder}, where a user's files are read (the file is not "
                  "opened). Move or copy the image into that folder (a copy, not a symlink to "
                  "outside) and list it by its relative path")
DUPLICATE_FILE = ("manifest {path}, {where}: file_name {value!r} is the same image as "
                  "{first_value!r} on {first}; each image must be listed once. Remove one of the "
                  "two rows")
BAD_SPLIT = ("manifest {path}, {where}: split={value!r}; expected one of train, val, test. Fix the "
             "value, or drop the split column for a seeded split stratified by group and label")
EMPTY_VALUE = ("manifest {path}, {where}: {role} column {column!r} is empty (found {value!r}); "
               "expected a value in every row. Fill it in (e.g. 'unknown' as a group of its own) "
               "or remove the row")
SLASH_IN_VALUE = ("manifest {path}, {where}: sensitive column {column!r} holds {value!r}; groups "
                  "are sensitive values joined by '/', so a value cannot contain '/'. Replace it, "
                  "e.g. with {suggestion!r}")
TARGET_NOT_BINARY = ("manifest {path}, {where}: target column {column!r} holds {value!r}, a third "
                     "value after {first_two}; without `positive` the target must be 0/1 (or "
                     "true/false). Pass positive=<the value that means 1> (config: data.positive), "
                     "every other value then counts as 0, or fix the row")
TARGET_NOT_ZERO_ONE = ("manifest {path}, {where}: target column {column!r} holds {value!r}; "
                       "without `positive` the target must be 0/1 (or true/false), its values are "
                       "{values}. Pass positive=<the value that means 1> (config: data.positive), "
                       "e.g. positive={value!r}")
TARGET_ONE_VALUE = ("manifest {path}: target column {column!r} holds only {value!r} (all {n} "
                    "rows); a binary target needs both of its values. Add rows of the other label "
                    "or name another target column")
POSITIVE_NOT_FOUND = ("positive={positive!r} is not a value of target column {column!r} in {path}; "
                      "its values are {values} (compared as text). Pass one of them (config: "
                      "data.positive)")
MISSING_IMAGE = ("manifest {path}, {where}: image {value!r} does not exist ({file}). Add the file, "
                 "fix file_name, or pass skip_bad_images=True (config: data.skip_bad_images) to "
                 "drop and count such rows")
NOT_A_FILE = ("manifest {path}, {where}: {value!r} is not a regular file ({kind}); expected an "
              "image file. Fix file_name, or pass skip_bad_images=True (config: "
              "data.skip_bad_images) to drop and count such rows")
BAD_IMAGE = ("manifest {path}, {where}: image {value!r} cannot be decoded ({reason}); expected an "
             "image file PIL can read. Replace the file, or pass skip_bad_images=True (config: "
             "data.skip_bad_images) to drop and count such rows")
GROUP_NOT_IN_SPLIT = ("manifest {path}: group {group!r} has no rows in the {split} split (its "
                      "rows: {counts}); every group needs samples in train, val and test. {fix}")
FIX_WITH_SPLIT_COLUMN = ("Give some of its rows split={split} in the manifest, or drop the split "
                         "column for a seeded split")
FIX_WITHOUT_SPLIT_COLUMN = ("Add images of that group, raise max_per_split, change "
                            "split_fractions, or merge it with another value of its sensitive "
                            "column")
SMALL_GROUPS = ("{count} group(s) have fewer than min_group_size={min_group_size} test samples: "
                "{groups}; the fairness metrics leave such groups out of the gaps. Add images of "
                "them, give the test split a larger share, or merge values of their sensitive "
                "columns")
MORE_ROWS = " ({count} more row(s) like it: {places})"
"""Appended to a row error when other rows have the same problem."""


@dataclass
class Manifest:
    """A validated manifest: one row per usable image.

    ``table`` has columns ``sample_id`` (file_name as written), ``path`` (the resolved file, inside
    ``folder``), ``where`` (``line N`` / ``row N``), ``split`` (``train``/``val``/``test``, or
    ``unsplit`` without a split column), ``target`` (0/1) and one text column per sensitive
    attribute; ``group_names`` are the sorted groups of every row (before any row is dropped);
    ``dropped`` maps a reason to the places of the rows dropped for it.
    """

    path: Path
    folder: str
    table: pd.DataFrame
    target: str
    sensitive: list[str]
    has_split: bool
    group_names: list[str] = field(default_factory=list)
    dropped: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- reading

def read_manifest(path, *, target: str | None, sensitive, positive=None,
                  skip_bad_images: bool = False) -> Manifest:
    """Read and validate the manifest at ``path`` (CSV, or parquet with pyarrow installed).

    Checks, in order, before any image is opened: the file and its columns, every cell (file
    names, split, target, sensitive values), that every file_name stays inside the manifest's
    folder (resolved with ``os.path.realpath``, symlinks included), duplicates, then that every
    file exists and is a regular file (``os.stat``; with ``skip_bad_images`` such rows are
    dropped and counted in ``Manifest.dropped``). Raises FileNotFoundError for a missing
    manifest and ValueError for everything else, naming the row and the value.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(MANIFEST_IS_FOLDER.format(path=path))
    if not path.is_file():
        raise FileNotFoundError(MANIFEST_NOT_FOUND.format(path=path))
    raw, places = read_table(path)
    sensitive = _check_columns(path, list(raw.columns), target, sensitive)
    table = pd.DataFrame({"sample_id": raw[FILE_COLUMN].to_numpy(), "where": places})
    _check_file_names(path, table)
    table["split"] = _splits(path, raw, places)
    table["target"] = target_codes(path, raw[target].to_numpy(), places, target, positive)
    for column in sensitive:
        table[column] = _sensitive_values(path, raw[column].to_numpy(), places, column)
    folder = os.path.realpath(path.parent)
    table["path"] = resolve_inside(path, folder, table)
    manifest = Manifest(path, folder, table, target, sensitive, SPLIT_COLUMN in raw.columns,
                        group_names=sorted(set(group_labels(table, sensitive))))
    _check_files(manifest, skip_bad_images)
    log_dropped(manifest)
    return manifest


def read_table(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The manifest as a table of stripped text cells (None where a parquet cell is null) and
    each row's place: ``line N`` of a CSV (header = line 1), ``row N`` of parquet (1-based)."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(MANIFEST_FORMAT.format(path=path, suffix=path.suffix,
                                                formats=list(FORMATS)))
    if suffix == ".parquet":
        return _read_parquet(path)
    return _read_csv(path)


def _read_csv(path: Path) -> tuple[pd.DataFrame, list[str]]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(NOT_UTF8.format(path=path, line=data.count(b"\n", 0, error.start) + 1,
                                         byte=hex(data[error.start]))) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [name.strip() for name in next(reader, [])]
    rows, places, end = [], [], reader.line_num
    for fields in reader:
        start, end = end + 1, reader.line_num
        if not any(f.strip() for f in fields):
            continue  # a blank line
        if len(fields) != len(header):
            raise ValueError(ROW_WIDTH.format(path=path, where=f"line {start}", found=len(fields),
                                              expected=len(header), columns=header))
        rows.append([f.strip() for f in fields])
        places.append(f"line {start}")
    _check_header(path, header, rows)
    return pd.DataFrame(rows, columns=header, dtype=object), places


def _read_parquet(path: Path) -> tuple[pd.DataFrame, list[str]]:
    try:
        frame = pd.read_parquet(path)
    except ImportError:
        raise ValueError(PARQUET_NEEDS_PYARROW.format(path=path)) from None
    header = [str(name).strip() for name in frame.columns]
    _check_header(path, header, frame.to_numpy())
    cells = frame.astype(object).where(frame.notna(), None).to_numpy()
    text = [[None if v is None else str(v).strip() for v in row] for row in cells]
    places = [f"row {i + 1}" for i in range(len(frame))]
    return pd.DataFrame(text, columns=header, dtype=object), places


def _check_header(path: Path, header: list[str], rows) -> None:
    if "" in header or len(set(header)) != len(header):
        problem = "empty" if "" in header else "repeated"
        raise ValueError(BAD_HEADER.format(path=path, names=header, problem=problem))
    if len(rows) == 0:
        raise ValueError(EMPTY_MANIFEST.format(path=path))


# --------------------------------------------------------------------------- columns and cells

def _check_columns(path: Path, columns: list[str], target, sensitive) -> list[str]:
    """The sensitive column list, once target, sensitive and file_name are known columns."""
    if sensitive is None or isinstance(sensitive, str):
        sensitive = [] if sensitive is None else [sensitive]
    sensitive = list(sensitive)
    for argument, role, given in (("target", "target column", target),
                                  ("sensitive", "sensitive column(s)", sensitive)):
        if not given:
            raise ValueError(NEED_COLUMNS.format(argument=argument, role=role, columns=columns))
    named = [(FILE_COLUMN, "image paths", "manifest"), (target, "target", "target")]
    for column, role, key in named + [(c, "sensitive attribute", "sensitive") for c in sensitive]:
        if column not in columns:
            raise ValueError(MISSING_COLUMN.format(path=path, column=column, role=role,
                                                   columns=columns, key=key))
    for column, role in [(target, "target")] + [(c, "sensitive attribute") for c in sensitive]:
        reserved = [c for c in RESERVED_COLUMNS if c != "target" or role != "target"]
        if column in reserved:
            raise ValueError(RESERVED_COLUMN.format(path=path, column=column, role=role,
                                                    reserved=", ".join(reserved),
                                                    suggestion=f"{column}_label"))
    if target in sensitive:
        raise ValueError(TARGET_IS_SENSITIVE.format(column=target, sensitive=sensitive))
    repeated = [c for c in sensitive if sensitive.count(c) > 1]
    if repeated:
        raise ValueError(REPEATED_SENSITIVE.format(sensitive=sensitive, column=repeated[0]))
    return sensitive


def is_missing(value) -> bool:
    """True for a null cell and for the texts of ``MISSING_MARKERS``."""
    return value is None or str(value).strip().lower() in MISSING_MARKERS


def _raise_at(template: str, bad: np.ndarray, places, **fields) -> None:
    """Raise ``template`` for the first True position of ``bad`` (fields may hold arrays, read at
    that position), adding how many other rows share the problem."""
    rows = np.flatnonzero(bad)
    if not len(rows):
        return
    first = rows[0]
    values = {k: (v[first] if isinstance(v, np.ndarray) else v) for k, v in fields.items()}
    message = template.format(where=places[first], **values)
    if len(rows) > 1:
        more = [places[i] for i in rows[1:6]]
        message += MORE_ROWS.format(count=len(rows) - 1,
                                    places=", ".join(more) + (", ..." if len(rows) > 6 else ""))
    raise ValueError(message)


def _check_file_names(path: Path, table: pd.DataFrame) -> None:
    names = table["sample_id"].to_numpy()
    empty = np.array([not n for n in names])
    _raise_at(EMPTY_FILE_NAME, empty, table["where"].to_numpy(), path=path, folder=path.parent)


def _splits(path: Path, raw: pd.DataFrame, places) -> np.ndarray:
    if SPLIT_COLUMN not in raw.columns:
        return np.full(len(raw), "unsplit", dtype=object)
    given = raw[SPLIT_COLUMN].to_numpy()
    split = np.array([SPLIT_ALIASES.get(str(v).lower()) if v is not None else None for v in given],
                     dtype=object)
    _raise_at(BAD_SPLIT, np.array([s is None for s in split]), places, path=path, value=given)
    return split


def target_codes(path, values: np.ndarray, places, column: str, positive=None) -> np.ndarray:
    """0/1 codes of a target column's text values (see docs/datasets.md).

    With ``positive``: 1 where the value equals ``str(positive)``, 0 elsewhere (any number of
    other values). Without it every value must read as 0/1 (``TRUE_TEXTS``, ``FALSE_TEXTS``, any
    case). Either way both labels must occur.
    """
    _raise_at(EMPTY_VALUE, np.array([is_missing(v) for v in values]), places, path=path,
              role="target", column=column, value=values)
    distinct = list(dict.fromkeys(values))
    if len(distinct) < 2:
        raise ValueError(TARGET_ONE_VALUE.format(path=path, column=column, value=distinct[0],
                                                 n=len(values)))
    if positive is not None:
        wanted = str(positive).strip()
        if wanted not in distinct:
            raise ValueError(POSITIVE_NOT_FOUND.format(positive=positive, column=column, path=path,
                                                       values=sorted(distinct)))
        return (values == wanted).astype(np.int64)
    lowered = np.array([str(v).lower() for v in values])
    if np.isin(lowered, TRUE_TEXTS + FALSE_TEXTS).all():
        codes = np.isin(lowered, TRUE_TEXTS).astype(np.int64)
        if codes.min() == codes.max():  # e.g. 1 and 1.0 only
            raise ValueError(TARGET_ONE_VALUE.format(path=path, column=column, value=distinct[0],
                                                     n=len(values)))
        return codes
    if len(distinct) > 2:
        _raise_at(TARGET_NOT_BINARY, values == distinct[2], places, path=path, column=column,
                  value=distinct[2], first_two=distinct[:2])
    _raise_at(TARGET_NOT_ZERO_ONE, ~np.isin(lowered, TRUE_TEXTS + FALSE_TEXTS), places, path=path,
              column=column, value=values, values=sorted(distinct))
    raise AssertionError("unreachable: a non-0/1 value was found above")


def _sensitive_values(path: Path, values: np.ndarray, places, column: str) -> np.ndarray:
    _raise_at(EMPTY_VALUE, np.array([is_missing(v) for v in values]), places, path=path,
              role="sensitive", column=column, value=values)
    text = np.array([str(v) for v in values], dtype=object)
    suggestions = np.array([t.replace("/", "-") for t in text], dtype=object)
    _raise_at(SLASH_IN_VALUE, np.array(["/" in t for t in text]), places, path=path,
              column=column, value=text, suggestion=suggestions)
    return text


# --------------------------------------------------------------------------- paths and files

def outside_reason(folder: str, file_name: str,
                   parents: dict | None = None) -> tuple[str | None, str]:
    """(why ``file_name`` leaves ``folder`` or None, its resolved path) — no file is opened or
    stat-ed: an absolute or ``..``-escaping name is refused as written, anything else is
    resolved with ``os.path.realpath`` (symlinks followed) and must stay under ``folder``
    (itself resolved). The one containment check of every listed file (manifest.py and the
    built-in datasets' label files in face_files.py). ``parents``: a cache of resolved parent
    folders, so a long listing costs one ``lstat`` per file (same result as without it)."""
    if not isinstance(file_name, str) or not file_name:
        return "is not a file name", str(file_name)
    if os.path.isabs(file_name):
        return "is an absolute path", file_name
    if os.path.normpath(file_name).split(os.sep)[0] == os.pardir:
        return "leads out of the folder through '..'", file_name
    try:
        resolved = _resolve(os.path.join(folder, file_name), parents)
    except (ValueError, OSError) as error:  # e.g. an embedded NUL byte
        return f"is not a usable path ({error})", file_name
    if os.path.commonpath([resolved, folder]) != folder:
        return f"resolves to {resolved} (through a symlink) outside the folder", resolved
    return None, resolved


def _resolve(joined: str, parents: dict | None) -> str:
    """``os.path.realpath(joined)``, its parent folder looked up in ``parents`` when given."""
    head, tail = os.path.split(joined)
    if parents is None or tail in ("", os.curdir, os.pardir):
        return os.path.realpath(joined)
    parent = parents.get(head)
    if parent is None:
        parent = parents[head] = os.path.realpath(head)
    candidate = os.path.join(parent, tail)
    return os.path.realpath(candidate) if os.path.islink(candidate) else candidate


def resolve_inside(path: Path, folder: str, table: pd.DataFrame) -> np.ndarray:
    """The resolved file of every row; a row leaving ``folder`` or naming the same file as an
    earlier row is a ValueError naming both."""
    parents: dict = {}
    reasons, resolved = zip(*(outside_reason(folder, name, parents) for name in table["sample_id"]))
    places = table["where"].to_numpy()
    _raise_at(OUTSIDE_FOLDER, np.array([r is not None for r in reasons]), places, path=path,
              value=table["sample_id"].to_numpy(), how=np.array(reasons, dtype=object),
              folder=folder)
    first_row: dict[str, int] = {}
    for row, file in enumerate(resolved):
        if file in first_row:
            earlier = first_row[file]
            raise ValueError(DUPLICATE_FILE.format(
                path=path, where=places[row], value=table["sample_id"].iat[row],
                first_value=table["sample_id"].iat[earlier], first=places[earlier]))
        first_row[file] = row
    return np.array(resolved, dtype=object)


def file_problem(resolved: str) -> tuple[str | None, str]:
    """(None, '') for a regular file, else ('missing' | 'not a file', detail), by ``os.stat``
    only (a FIFO or device is never opened)."""
    try:
        mode = os.stat(resolved).st_mode
    except FileNotFoundError:
        return "missing", resolved
    except OSError as error:
        return "missing", f"{resolved}: {error.strerror}"
    kind = special_kind(mode)
    return ("not a file", kind) if kind else (None, "")


def special_kind(mode: int) -> str | None:
    """What a file of ``st_mode`` ``mode`` is when it is not a regular file (``a folder``,
    ``a FIFO``, ``a device or socket``), else None: such a file is never opened as an image."""
    if stat.S_ISREG(mode):
        return None
    return ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a device or socket")


def _check_files(manifest: Manifest, skip: bool) -> None:
    """Rows whose file is missing or not a regular file: a ValueError, or dropped with ``skip``."""
    table = manifest.table
    problems = [file_problem(p) for p in table["path"]]
    kinds = np.array([kind for kind, _ in problems], dtype=object)
    details = np.array([detail for _, detail in problems], dtype=object)
    places, names = table["where"].to_numpy(), table["sample_id"].to_numpy()
    if not skip:
        _raise_at(MISSING_IMAGE, kinds == "missing", places, path=manifest.path, value=names,
                  file=details)
        _raise_at(NOT_A_FILE, kinds == "not a file", places, path=manifest.path, value=names,
                  kind=details)
        return
    drop_rows(manifest, kinds == "missing", "image file missing")
    drop_rows(manifest, kinds == "not a file", "not a regular file")


def drop_rows(manifest: Manifest, bad, reason: str) -> None:
    """Drop the rows where ``bad`` is True, recording their places under ``reason``."""
    bad = np.asarray(bad, dtype=bool)
    if bad.any():
        table = manifest.table
        manifest.dropped.setdefault(reason, []).extend(
            f"{w} {n!r}" for w, n in zip(table["where"][bad], table["sample_id"][bad]))
        manifest.table = table[~bad].reset_index(drop=True)


def log_dropped(manifest: Manifest) -> None:
    """One log line per reason rows were dropped for."""
    for reason, places in manifest.dropped.items():
        logger.warning("Dropped %d row(s) of %s: %s (e.g. %s)", len(places), manifest.path, reason,
                       ", ".join(places[:3]))


# --------------------------------------------------------------------------- groups

def group_labels(table: pd.DataFrame, sensitive) -> pd.Series:
    """The intersectional group of every row: its sensitive values joined by '/' in order."""
    columns = [table[c].astype(str) for c in sensitive]
    return columns[0].str.cat(columns[1:], sep="/") if len(columns) > 1 else columns[0]


def bad_image_rows(path, places, names, bad: dict, skip: bool) -> np.ndarray:
    """Mask of the rows whose image did not decode (``bad``: {position: reason}); without
    ``skip`` the first is a ValueError (``BAD_IMAGE``), with it they are logged as dropped."""
    mask = np.zeros(len(places), dtype=bool)
    mask[list(bad)] = True
    reasons = np.array([bad.get(i, "") for i in range(len(places))], dtype=object)
    if not skip:
        _raise_at(BAD_IMAGE, mask, np.asarray(places), path=path, value=np.asarray(names),
                  reason=reasons)
    if mask.any():
        examples = ", ".join(f"{places[i]} {names[i]!r}" for i in np.flatnonzero(mask)[:3])
        logger.warning("Dropped %d row(s) of %s: image cannot be decoded (e.g. %s)", mask.sum(),
                       path, examples)
    return mask


def check_groups_in_splits(metadata: pd.DataFrame, group_names, manifest: Manifest) -> None:
    """ValueError (``GROUP_NOT_IN_SPLIT``) for the first group with no rows in some split."""
    counts = pd.crosstab(metadata["group"], metadata["split"]).reindex(
        index=list(group_names), columns=list(SPLITS), fill_value=0)
    for group in group_names:
        for split in SPLITS:
            if counts.at[group, split] == 0:
                fix = (FIX_WITH_SPLIT_COLUMN.format(split=split) if manifest.has_split
                       else FIX_WITHOUT_SPLIT_COLUMN)
                raise ValueError(GROUP_NOT_IN_SPLIT.format(
                    path=manifest.path, group=group, split=split,
                    counts={s: int(counts.at[group, s]) for s in SPLITS}, fix=fix))


def warn_small_groups(metadata: pd.DataFrame, group_names, min_group_size: int | None) -> list[str]:
    """The groups with fewer than ``min_group_size`` test samples, flagged in ONE warning."""
    if min_group_size is None:
        return []
    test = metadata.loc[metadata["split"] == "test", "group"].value_counts()
    small = {g: int(test.get(g, 0)) for g in group_names if test.get(g, 0) < min_group_size}
    if small:
        groups = ", ".join(f"{g} (n={n})" for g, n in small.items())
        warnings.warn(SMALL_GROUPS.format(count=len(small), min_group_size=min_group_size,
                                          groups=groups), UserWarning, stacklevel=3)
    return list(small)
