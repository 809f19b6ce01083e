"""The official files of the real datasets, read without torch: CelebA's attribute and partition
lists, UTKFace's file names, FairFace's label CSVs, and the schema that turns each into the
``target`` / sensitive-attribute / ``group`` columns ``datasets.FaceDataset`` holds."""
from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from manifest import outside_reason

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

CELEBA_NAMED_SENSITIVE = {
    "Male": ("gender", "Male", "Female"),
    "Young": ("age", "Young", "Old"),
}
CELEBA_ALIASES = {"gender": "Male", "age": "Young"}

DATASET_SOURCES = {
    "celeba": "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
    "utkface": "https://susanqq.github.io/UTKFace/",
    "fairface": "https://github.com/joojs/fairface",
}
NOT_UTF8 = ("{path}, line {line}: byte {byte} is not UTF-8 text, so the file is damaged or was "
            "saved in another encoding. Re-download it from {source}, or convert it to UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8 FILE)")
OUTSIDE_DATASET = ("{path}, line {line}: image {name!r} {how}; a listed image must lie inside the "
                   "dataset's image folder {folder} (the file was not opened). Fix that line or "
                   "re-download the file from {source}; to keep a dataset on another disk, link "
                   "or point data.root at the whole folder, not image by image "
                   "(docs/reliability.md)")
OUTSIDE_DATASET_FILE = ("image {name!r} under {folder} {how}; an image of the dataset must lie "
                        "inside its folder (the file was not opened). Remove the link, or put the "
                        "real file there; to keep a dataset on another disk, link or point "
                        "data.root at the whole folder (docs/reliability.md)")
DUPLICATE_ROW = ("{path}, line {line}: {name!r} is already listed on line {first}; each image "
                 "must appear once. Remove the repeated line or re-download the file from "
                 "{source}")

# --------------------------------------------------------------------------- CelebA files

CELEBA_FILES = ("img_align_celeba/", "list_attr_celeba.txt", "list_eval_partition.txt")


def _missing_dataset_error(name: str, folder: Path, expected) -> FileNotFoundError:
    return FileNotFoundError(
        f"Dataset '{name}' not found: expected {', '.join(expected)} under '{folder}'. "
        f"Download it from {DATASET_SOURCES[name]} and place the files there, or use the "
        f"dataset 'synthetic', which runs with no download."
    )


def _require(name: str, folder: Path, expected) -> None:
    if not all((folder / entry).exists() for entry in expected):
        raise _missing_dataset_error(name, folder, expected)


def read_celeba_attributes(path: str | Path, images: str | None = None) -> pd.DataFrame:
    """Parse ``list_attr_celeba.txt`` -> DataFrame (index: file name, columns: 0/1 ints).

    Raises ValueError with the file and line number on a malformed line, and (``images``: the
    resolved image folder) on a file name that leads out of it (``OUTSIDE_DATASET``).
    """
    inside = _Inside(Path(path), images, DATASET_SOURCES["celeba"])
    path = Path(path)
    lines = _read_text(path, DATASET_SOURCES["celeba"]).splitlines()

    def fail(lineno: int, problem: str) -> ValueError:
        return ValueError(f"Malformed CelebA attribute file {path}, line {lineno}: {problem}. "
                          f"Re-download list_attr_celeba.txt from {DATASET_SOURCES['celeba']}.")

    if not lines or not lines[0].strip().isdigit():
        raise fail(1, f"expected the number of images, found {lines[0] if lines else ''!r}")
    names = lines[1].split() if len(lines) > 1 else []
    if not names or len(set(names)) != len(names):
        raise fail(2, "expected the attribute names, distinct and whitespace separated")
    files, values, first_line = [], [], {}
    for lineno, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(names) + 1 or not set(fields[1:]) <= {"1", "-1"}:
            raise fail(lineno, f"expected a file name and {len(names)} values of -1 or 1, "
                               f"found {line.strip()[:80]!r}")
        _check_unique(first_line, fields[0], path, lineno, DATASET_SOURCES["celeba"])
        inside.check(fields[0], lineno)
        files.append(fields[0])
        values.append(bytes(v == "1" for v in fields[1:]))  # compact: 1 byte per value
    if len(files) != int(lines[0]):
        raise fail(1, f"header announces {int(lines[0])} images but {len(files)} lines follow")
    table = np.frombuffer(b"".join(values), dtype=np.uint8).reshape(len(files), len(names))
    return pd.DataFrame(table, index=pd.Index(files, name="file"), columns=names)


def read_celeba_partition(path: str | Path, images: str | None = None) -> pd.Series:
    """Parse ``list_eval_partition.txt`` -> Series file name -> split name (``images``: as for
    ``read_celeba_attributes``)."""
    path = Path(path)
    inside = _Inside(path, images, DATASET_SOURCES["celeba"])
    files, splits, first_line = [], [], {}
    for lineno, line in enumerate(_read_text(path, DATASET_SOURCES["celeba"]).splitlines(),
                                  start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(
                f"Malformed CelebA partition file {path}, line {lineno}: expected "
                f"'<file> 0|1|2', found {line.strip()[:80]!r}. Re-download "
                f"list_eval_partition.txt from {DATASET_SOURCES['celeba']}.")
        _check_unique(first_line, fields[0], path, lineno, DATASET_SOURCES["celeba"])
        inside.check(fields[0], lineno)
        files.append(fields[0])
        splits.append(SPLITS[int(fields[1])])
    return pd.Series(splits, index=pd.Index(files, name="file"), name="split")


def _read_text(path: Path, source: str) -> str:
    """The file decoded as UTF-8, or a ValueError naming the file, the line and the fix."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(NOT_UTF8.format(path=path, line=data.count(b"\n", 0, error.start) + 1,
                                         byte=hex(data[error.start]), source=source)) from None


class _Inside:
    """Checks that each file name listed in ``path`` stays inside the resolved folder ``images``
    (``manifest.outside_reason``: as written, then with symlinks resolved; nothing is opened)
    and remembers the resolved file. ``images=None``: no check (a listing read on its own)."""

    def __init__(self, path: Path, images: str | None, source: str):
        self.path, self.images, self.source = path, images, source
        self.parents: dict = {}
        self.resolved: dict[str, str] = {}

    def check(self, name: str, line: int) -> None:
        if self.images is None:
            return
        how, resolved = outside_reason(self.images, name, self.parents)
        if how is not None:
            raise ValueError(OUTSIDE_DATASET.format(path=self.path, line=line, name=name, how=how,
                                                    folder=self.images, source=self.source))
        self.resolved[name] = resolved


def image_folder(folder: Path) -> str:
    """``folder`` as an absolute path with every symlink resolved: the containment folder of the
    images a dataset lists. The folder itself may be a link (a dataset on another disk); links
    below it may not lead out (docs/reliability.md)."""
    return os.path.realpath(folder)


def _check_unique(first_line: dict, name: str, path: Path, lineno: int, source: str) -> None:
    """Remember where ``name`` was first listed; a second listing is a ValueError."""
    if name in first_line:
        raise ValueError(DUPLICATE_ROW.format(path=path, line=lineno, name=name,
                                              first=first_line[name], source=source))
    first_line[name] = lineno


def _read_celeba(folder: Path, name: str = "celeba") -> tuple[pd.DataFrame, "_Schema"]:
    _require(name, folder, CELEBA_FILES)
    images = image_folder(folder / "img_align_celeba")
    attributes = read_celeba_attributes(folder / "list_attr_celeba.txt", images)
    partition = read_celeba_partition(folder / "list_eval_partition.txt", images)
    unassigned = attributes.index.difference(partition.index)
    if len(unassigned):
        raise ValueError(
            f"{len(unassigned)} image(s) of {folder / 'list_attr_celeba.txt'} have no split in "
            f"{folder / 'list_eval_partition.txt'}, e.g. '{unassigned[0]}'. Use the official "
            f"files together.")
    frame = attributes.reset_index().rename(columns={"file": "sample_id"})
    frame["split"] = partition.reindex(attributes.index).to_numpy()
    frame["path"] = [os.path.join(images, f) for f in frame["sample_id"]]
    return frame, _celeba_schema(list(attributes.columns))


# --------------------------------------------------------------------------- schemas

@dataclass(frozen=True)
class _Schema:
    """How a dataset's raw columns become a binary target and string sensitive columns.

    ``targets``: name -> (source, function(frame) -> 0/1 array); ``sensitives``: name ->
    (source, column name, function(frame) -> string array). A target and a sensitive attribute
    from the same source (e.g. gender) cannot be combined.
    """

    default_target: str
    default_sensitive: tuple[str, ...]
    targets: dict
    sensitives: dict


def _celeba_schema(attributes: list[str]) -> _Schema:
    def target(attr):
        return attr, lambda frame: frame[attr].to_numpy()

    def sensitive(attr):
        column, yes, no = CELEBA_NAMED_SENSITIVE.get(attr, (attr, attr, f"not {attr}"))
        return attr, column, lambda frame: np.where(frame[attr] == 1, yes, no)

    names = {a: a for a in attributes}
    names.update({alias: a for alias, a in CELEBA_ALIASES.items() if a in attributes})
    return _Schema("Smiling", ("Male", "Young"),
                   {n: target(a) for n, a in names.items()},
                   {n: sensitive(a) for n, a in names.items()})


def _derive_columns(frame: pd.DataFrame, schema: _Schema, dataset: str, target, sensitive):
    """metadata (sample_id, split, target, sensitive columns, group) + (target, columns)."""
    target = schema.default_target if target is None else target
    if sensitive is None:
        sensitive = list(schema.default_sensitive)
    elif isinstance(sensitive, str):
        sensitive = [sensitive]
    sensitive = list(sensitive)
    _check_known(dataset, "target", [target], schema.targets)
    _check_known(dataset, "sensitive", sensitive, schema.sensitives)
    if not sensitive:
        raise ValueError(f"No sensitive attribute given for '{dataset}'; name at least one of "
                         f"{sorted(schema.sensitives)} (default {list(schema.default_sensitive)}).")
    sources = [schema.targets[target][0]] + [schema.sensitives[s][0] for s in sensitive]
    if len(set(sources)) != len(sources):
        raise ValueError(f"Target '{target}' and sensitive attributes {sensitive} overlap (they "
                         f"read the same underlying attribute). Name each attribute once and "
                         f"keep the target out of the sensitive list.")
    metadata = pd.DataFrame({
        "sample_id": frame["sample_id"].astype(str).to_numpy(),
        "split": frame["split"].to_numpy() if "split" in frame else "unsplit",
        "target": np.asarray(schema.targets[target][1](frame), dtype=np.int64),
    })
    columns = []
    for name in sensitive:
        _, column, values = schema.sensitives[name]
        metadata[column] = np.asarray(values(frame), dtype=str)
        columns.append(column)
    metadata["group"] = metadata[columns[0]].str.cat(
        [metadata[c] for c in columns[1:]], sep="/") if len(columns) > 1 else metadata[columns[0]]
    return metadata, target, columns


def _check_known(dataset: str, kind: str, names, available: dict) -> None:
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"Unknown {kind} attribute(s) {unknown} for dataset '{dataset}'; "
                         f"available: {sorted(available)}.")


# --------------------------------------------------------------------------- UTKFace, FairFace

AGE_GROUPS = ("0-19", "20-39", "40-59", "60+")
UTK_RACES = ("White", "Black", "Asian", "Indian", "Others")
UTK_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)\.jpg(\.chip\.jpg)?$")
FAIRFACE_FILES = ("fairface_label_train.csv", "fairface_label_val.csv")
FAIRFACE_RACES = ("White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian",
                  "Indian", "Middle Eastern")
FAIRFACE_AGE_GROUPS = {"0-2": "0-19", "3-9": "0-19", "10-19": "0-19", "20-29": "20-39",
                       "30-39": "20-39", "40-49": "40-59", "50-59": "40-59", "60-69": "60+",
                       "more than 70": "60+"}
# UTKFace and FairFace share one schema over the columns gender, race, age_group, age_ge_40.
DEMOGRAPHIC_SCHEMA = _Schema(
    default_target="gender",
    default_sensitive=("race", "age_group"),
    targets={"gender": ("gender", lambda f: (f["gender"] == "Female").to_numpy()),
             "age_ge_40": ("age", lambda f: f["age_ge_40"].to_numpy())},
    sensitives={"gender": ("gender", "gender", lambda f: f["gender"].to_numpy()),
                "race": ("race", "race", lambda f: f["race"].to_numpy()),
                "age_group": ("age", "age_group", lambda f: f["age_group"].to_numpy())},
)


def _age_group(age: int) -> str:
    return AGE_GROUPS[min(age // 20, len(AGE_GROUPS) - 1)]


def parse_utkface_name(file_name: str) -> dict | None:
    """``[age]_[gender]_[race]_[datetime].jpg[.chip.jpg]`` -> fields, or None if broken."""
    match = UTK_NAME.match(file_name)
    if match is None:
        return None
    age, gender, race = (int(v) for v in match.groups()[:3])
    if age > 120 or gender > 1 or race >= len(UTK_RACES):
        return None
    return {"gender": ("Male", "Female")[gender], "race": UTK_RACES[race],
            "age_group": _age_group(age), "age_ge_40": int(age >= 40)}


def _read_utkface(folder: Path) -> tuple[pd.DataFrame, _Schema]:
    files = sorted(folder.rglob("*.jpg")) if folder.is_dir() else []
    if not files:
        raise _missing_dataset_error("utkface", folder, ["[age]_[gender]_[race]_[datetime].jpg"
                                                         " image files"])
    records, broken = [], []
    images, parents = image_folder(folder), {}
    for path in files:
        name = path.relative_to(folder).as_posix()
        how, _ = outside_reason(images, name, parents)
        if how is not None:
            raise ValueError(OUTSIDE_DATASET_FILE.format(name=name, folder=images, how=how))
        fields = parse_utkface_name(path.name)
        if fields is None:
            broken.append(path.name)
        else:
            records.append({"sample_id": name, "path": os.path.join(images, name), **fields})
    if broken:
        logger.warning("Skipped %d UTKFace file(s) with missing or broken name fields, e.g. %s",
                       len(broken), broken[:3])
    if not records:
        raise ValueError(f"No UTKFace file under '{folder}' has a valid name "
                         f"[age]_[gender]_[race]_[datetime].jpg (e.g. {broken[0]}).")
    return pd.DataFrame.from_records(records), DEMOGRAPHIC_SCHEMA


def _read_fairface(folder: Path) -> tuple[pd.DataFrame, _Schema]:
    _require("fairface", folder, FAIRFACE_FILES)
    train = _read_fairface_labels(folder, FAIRFACE_FILES[0], split="trainval")
    test = _read_fairface_labels(folder, FAIRFACE_FILES[1], split="test")
    return pd.concat([train, test], ignore_index=True), DEMOGRAPHIC_SCHEMA


def _read_fairface_labels(folder: Path, file_name: str, split: str) -> pd.DataFrame:
    path = folder / file_name
    text = _read_text(path, DATASET_SOURCES["fairface"])
    try:
        labels = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.ParserError as exc:
        raise ValueError(f"Malformed FairFace label file {path}: {exc}") from exc
    missing = sorted({"file", "age", "gender", "race"} - set(labels.columns))
    if missing:
        raise ValueError(f"Malformed FairFace label file {path}, line 1: missing column(s) "
                         f"{missing}; expected header file,age,gender,race,service_test.")
    allowed = {"age": FAIRFACE_AGE_GROUPS, "gender": ("Male", "Female"),
               "race": FAIRFACE_RACES, "file": None}
    for column, values in allowed.items():
        bad = (labels[column] == "") if values is None else ~labels[column].isin(list(values))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"Malformed FairFace label file {path}, line {row + 2}: {column}="
                             f"{labels[column].iloc[row]!r}; expected one of {list(values or [])}"
                             f"{' (a non-empty relative image path)' if values is None else ''}.")
    first_line = {}
    images = image_folder(folder)
    inside = _Inside(path, images, DATASET_SOURCES["fairface"])
    for row, name in enumerate(labels["file"]):
        _check_unique(first_line, name, path, row + 2, DATASET_SOURCES["fairface"])
        inside.check(name, row + 2)
    age_group = labels["age"].map(FAIRFACE_AGE_GROUPS)
    return pd.DataFrame({
        "sample_id": labels["file"], "path": [os.path.join(images, f) for f in labels["file"]],
        "split": split, "gender": labels["gender"], "race": labels["race"],
        "age_group": age_group, "age_ge_40": age_group.isin(["40-59", "60+"]).astype(np.int64),
    })


