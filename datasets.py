"""Face-attribute datasets with group metadata, seeded splits and calibration subsets.

Calibration sets: ``calibration_subset(train, kind, n, seed)`` is the one way they are drawn
(``CALIBRATION_KINDS``: random, balanced, balanced_by_label, minority_enriched), and draw ``d``
of a run seeded ``s`` uses ``calibration_seed(s, d)`` for every kind, so kinds pair by draw.

Every dataset yields ``(image, target, group_code, sample_id)`` and carries a per-sample
``metadata`` table (``sample_id, split, target, <sensitive columns>, group``) that the rest of
the framework uses for groups. Supported datasets (``load_dataset(name, root, ...)``):

* ``synthetic`` (the default of the framework): procedurally drawn faces written in CelebA's
  exact file format into ``<root>/synthetic_celeba/`` on first use and read by the CelebA
  loader, so the real loading code runs on any machine with no download. The generator and
  its knobs live in ``synthetic.py`` (docs/synthetic.md). It is labelled synthetic
  everywhere (``dataset.synthetic``, ``info['synthetic']``, the log line).
* ``celeba``: official files under ``<root>/celeba/``; official train/val/test partition.
  Default target ``Smiling``; default sensitive attributes ``Male`` (column ``gender``:
  ``Male``/``Female``) and ``Young`` (column ``age``: ``Young``/``Old``); the aliases ``gender``
  and ``age`` name the same two attributes. Any other CelebA attribute may be sensitive: its
  column is the attribute name with values ``<Attr>`` / ``not <Attr>`` (e.g. ``Eyeglasses`` /
  ``not Eyeglasses``).
* ``utkface``: image files named ``[age]_[gender]_[race]_[datetime].jpg`` (or ``.jpg.chip.jpg``)
  anywhere under ``<root>/utkface/``; files with missing or broken fields are skipped and
  counted in a warning. No official split: a seeded split stratified by group and target.
* ``fairface``: ``<root>/fairface/fairface_label_{train,val}.csv`` with the images they name;
  the official val file is the test split and a seeded, stratified validation split is carved
  from train (train:val in the ratio of ``split_fractions``).

  UTKFace and FairFace share one schema. Default target ``gender`` (1 = Female) with sensitive
  attributes ``race`` and ``age_group`` (``0-19``, ``20-39``, ``40-59``, ``60+``; FairFace's
  bins are merged into these); the alternative target ``age_ge_40`` (1 if age >= 40) goes with
  sensitive ``gender`` and ``race``. Race values: UTKFace White, Black, Asian, Indian, Others;
  FairFace its seven labels. A target cannot be combined with a sensitive attribute read from
  the same source (``age_ge_40`` with ``age_group``, ``gender`` with ``gender``).

Groups are the sensitive values joined by ``/`` in the order the attributes are given, e.g.
``Female/Old``; ``dataset.group_names`` is their sorted list (the same for every split) and
``group_code`` indexes it. Every group must have samples in every split.

Randomness: ``load_dataset(seed=...)`` drives the splits of UTKFace/FairFace and
``max_per_split``; the synthetic images depend only on the generator's own ``seed`` option
(default 0), so changing the run seed does not redraw the data set.

Images: centre-cropped to a square, resized to ``image_size`` (bilinear, antialiased) and
normalised with mean 0.5 / std 0.5 per channel, i.e. to [-1, 1]. When all decoded images fit in
``cache_limit_gib`` they are cached as a uint8 tensor in shared memory, so later epochs (and
DataLoader workers) do not decode again.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from synthetic import (CELEBA_ATTRIBUTES, SYNTHETIC_DEFAULTS, SYNTHETIC_GROUPS,  # noqa: F401
                       SYNTHETIC_OPTIONS, SYNTHETIC_PARAMS_FILE, check_fractions,
                       ensure_synthetic_celeba, generate_synthetic_celeba, largest_remainder,
                       stored_synthetic_params, stratified_parts)

logger = logging.getLogger(__name__)

KNOWN_DATASETS = ("synthetic", "celeba", "utkface", "fairface")
SPLITS = ("train", "val", "test")
NORMALIZE_MEAN = (0.5, 0.5, 0.5)
NORMALIZE_STD = (0.5, 0.5, 0.5)

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
IMAGE_CHECK_FILE = ".checked_images.json"
"""Per dataset folder: size and mtime of every image that decoded, so a rerun skips decoding it."""

NOT_UTF8 = ("{path}, line {line}: byte {byte} is not UTF-8 text, so the file is damaged or was "
            "saved in another encoding. Re-download it from {source}, or convert it to UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8 FILE)")
DUPLICATE_ROW = ("{path}, line {line}: {name!r} is already listed on line {first}; each image "
                 "must appear once. Remove the repeated line or re-download the file from "
                 "{source}")
SYNTHETIC_UNWRITABLE = ("Cannot write the synthetic dataset under '{root}' ({reason}). Pass a "
                        "writable root folder (config: data.root, e.g. --set data.root=data/datasets)")
BAD_IMAGES = ("{count} image file(s) of {dataset} are empty or cannot be decoded: {examples}. "
              "Replace them (re-download the dataset) or skip them with skip_bad_images=True "
              "(config: data.skip_bad_images: true), which drops and counts them")


# --------------------------------------------------------------------------- images

def decode_image(path: str | Path, image_size: int) -> torch.Tensor:
    """Read an image file as a uint8 tensor [3, image_size, image_size] (centre crop + resize).

    Raises ValueError naming the file when it cannot be decoded.
    """
    try:
        with Image.open(path) as img:
            img.draft("RGB", (image_size, image_size))  # JPEG: decode at a reduced scale
            img = img.convert("RGB")
            side = min(img.size)
            left, top = (img.width - side) // 2, (img.height - side) // 2
            img = img.crop((left, top, left + side, top + side))
            img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(
            f"Cannot read image '{path}': {exc}. Replace the file (re-download the dataset) "
            f"or pass skip_bad_images=True to skip unreadable images."
        ) from exc
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


def normalize_image(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [3,H,W] -> float [3,H,W] in [-1, 1] (mean 0.5, std 0.5)."""
    return pixels.float().div_(127.5).sub_(1.0)


class _ImageStore:
    """Image paths plus an optional shared-memory cache of decoded uint8 pixels."""

    def __init__(self, paths, image_size: int, cache: bool):
        self.paths = np.asarray([str(p) for p in paths], dtype=str)  # no per-item refcounts
        self.image_size = int(image_size)
        self.pixels = self.filled = None
        if cache:
            n = len(self.paths)
            self.pixels = torch.zeros((n, 3, image_size, image_size), dtype=torch.uint8)
            self.filled = torch.zeros(n, dtype=torch.bool)
            try:  # shared, so DataLoader workers fill one cache instead of one each
                self.pixels.share_memory_()
                self.filled.share_memory_()
            except RuntimeError as exc:
                logger.warning("Image cache stays process-local (no shared memory: %s)", exc)

    def load(self, row: int) -> torch.Tensor:
        if self.filled is not None and self.filled[row]:
            return self.pixels[row]
        pixels = decode_image(self.paths[row], self.image_size)
        if self.filled is not None:
            self.pixels[row] = pixels
            self.filled[row] = True
        return pixels


# --------------------------------------------------------------------------- dataset

class FaceDataset(Dataset):
    """Face images with a binary target and a per-sample metadata table.

    ``metadata`` has a positional index and columns ``sample_id, split, target, <sensitive
    attributes>, group``. Items are ``(image FloatTensor[3,H,W], target, group_code,
    sample_id)`` with ``group_code`` indexing ``group_names``. Build it with ``load_dataset``.
    """

    def __init__(self, metadata: pd.DataFrame, store: _ImageStore, rows, *, name: str,
                 target_name: str, sensitive_attrs: list[str], group_names: list[str],
                 synthetic: bool):
        self.metadata = metadata.reset_index(drop=True)
        self._store = store
        self._rows = np.asarray(rows, dtype=np.int64)
        self.name = name
        self.target_name = target_name
        self.sensitive_attrs = list(sensitive_attrs)
        self.group_names = list(group_names)
        self.synthetic = bool(synthetic)
        codes = pd.Categorical(self.metadata["group"], categories=self.group_names).codes
        if (codes < 0).any():
            unknown = sorted(set(self.metadata["group"][codes < 0]))
            raise ValueError(f"Groups {unknown} are not in group_names {self.group_names}.")
        self.group_codes = np.asarray(codes, dtype=np.int64)
        self.targets = self.metadata["target"].to_numpy(dtype=np.int64)
        self._sample_ids = self.metadata["sample_id"].to_numpy(dtype=str)

    @property
    def image_size(self) -> int:
        return self._store.image_size

    def __len__(self) -> int:
        return len(self.metadata)

    def __getitem__(self, index: int):
        pixels = self._store.load(int(self._rows[index]))
        return (normalize_image(pixels), int(self.targets[index]),
                int(self.group_codes[index]), str(self._sample_ids[index]))

    def image_path(self, index: int) -> str:
        """The file the item at ``index`` is read from."""
        return str(self._store.paths[self._rows[index]])

    def subset(self, indices) -> "FaceDataset":
        """A dataset of the items at the given positions, metadata kept aligned."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise ValueError(
                f"subset indices must lie in [0, {len(self)}); got min {indices.min()}, "
                f"max {indices.max()}. Use positions into this dataset, not sample ids."
            )
        return FaceDataset(
            self.metadata.iloc[indices], self._store, self._rows[indices], name=self.name,
            target_name=self.target_name, sensitive_attrs=self.sensitive_attrs,
            group_names=self.group_names, synthetic=self.synthetic,
        )

    def group_counts(self) -> dict[str, int]:
        """Number of samples in each group of ``group_names`` (zeros included)."""
        counts = np.bincount(self.group_codes, minlength=len(self.group_names))
        return {g: int(c) for g, c in zip(self.group_names, counts)}

    def __repr__(self) -> str:
        tag = " SYNTHETIC" if self.synthetic else ""
        return (f"FaceDataset({self.name}{tag}, n={len(self)}, target={self.target_name}, "
                f"sensitive={self.sensitive_attrs}, image_size={self.image_size})")


@dataclass
class DatasetSplits:
    """The train/val/test datasets of one load and an ``info`` dict describing them."""

    train: FaceDataset
    val: FaceDataset
    test: FaceDataset
    info: dict = field(default_factory=dict)

    def __getitem__(self, split: str) -> FaceDataset:
        if split not in SPLITS:
            raise ValueError(f"Unknown split '{split}'; expected one of {list(SPLITS)}.")
        return getattr(self, split)


def make_loader(dataset: FaceDataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                num_workers: int = 0) -> DataLoader:
    """A DataLoader over ``dataset``; shuffling is seeded so epochs are reproducible."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}.")
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
        num_workers=num_workers, persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(), worker_init_fn=_single_thread_worker,
    )


def _single_thread_worker(_worker_id: int) -> None:
    torch.set_num_threads(1)  # workers decode JPEGs; do not oversubscribe the cores


# --------------------------------------------------------------------------- subsets

def balanced_subset(dataset: FaceDataset, n: int, seed: int, by_label: bool = False) -> FaceDataset:
    """``n`` samples spread as evenly as availability allows over ``dataset.group_names``.

    A group with fewer than its share gives all its samples and the remainder is spread over
    the other groups. With ``by_label`` each group's quota is also split evenly over labels.
    Raises ValueError naming any group with no samples in ``dataset``.
    """
    _check_subset_size(dataset, n)
    _check_no_empty_group(dataset, "balance")
    keys = [dataset.group_codes, dataset.targets] if by_label else [dataset.group_codes]
    chosen = _balanced_draw(np.arange(len(dataset)), keys, n, np.random.default_rng(seed))
    return dataset.subset(np.sort(chosen))


def minority_enriched_subset(dataset: FaceDataset, n: int, seed: int) -> FaceDataset:
    """``n`` samples in which the groups smaller than the equal share are raised to it.

    Composition (``minority_enriched_shares``): a group whose share of ``dataset`` is below the
    equal share 1/G gets 1/G of ``n``; the other groups share the rest in proportion to their
    sizes in ``dataset``. Counts are rounded by largest remainder (ties broken by the seeded
    generator); a group with fewer samples than its count gives all of them and the shortfall
    goes to the others in proportion to their shares. Within a group the samples are uniform.
    """
    _check_subset_size(dataset, n)
    _check_no_empty_group(dataset, "enrich")
    available = np.bincount(dataset.group_codes, minlength=len(dataset.group_names))
    rng = np.random.default_rng(seed)
    counts = _capped_counts(n, minority_enriched_shares(available), available, rng)
    chosen = [rng.choice(np.flatnonzero(dataset.group_codes == code), size=count, replace=False)
              for code, count in enumerate(counts)]
    return dataset.subset(np.sort(np.concatenate(chosen)))


def minority_enriched_shares(group_sizes) -> np.ndarray:
    """Target shares of ``minority_enriched_subset`` for groups of these sizes: max(natural,
    1/G) for the groups below 1/G, the remainder split over the rest by their natural shares."""
    natural = np.asarray(group_sizes, dtype=float) / np.sum(group_sizes)
    equal = 1.0 / natural.size
    minority = natural < equal
    shares = np.where(minority, equal, 0.0)
    if (~minority).any():
        shares[~minority] = (1 - shares.sum()) * natural[~minority] / natural[~minority].sum()
    return shares


def _capped_counts(n: int, shares: np.ndarray, available: np.ndarray, rng) -> np.ndarray:
    """Integer counts summing to ``n`` by ``shares``, none above ``available``; a capped group's
    shortfall is shared by the open ones in proportion to their shares."""
    counts = np.zeros(len(shares), dtype=np.int64)
    while counts.sum() < n:
        open_shares = np.where(counts < available, shares, 0.0)
        quota = largest_remainder(n - counts.sum(), open_shares, rng)
        counts += np.minimum(quota, available - counts)
    return counts


def _check_no_empty_group(dataset: FaceDataset, verb: str) -> None:
    empty = [g for g, c in dataset.group_counts().items() if c == 0]
    if empty:
        raise ValueError(
            f"Cannot {verb} over groups {dataset.group_names}: group(s) {empty} have no "
            f"samples in this {dataset.name} dataset (n={len(dataset)}). Use a larger split "
            f"or other sensitive attributes, or random_subset."
        )


def random_subset(dataset: FaceDataset, n: int, seed: int) -> FaceDataset:
    """``n`` samples drawn uniformly without replacement (seeded)."""
    _check_subset_size(dataset, n)
    rng = np.random.default_rng(seed)
    return dataset.subset(np.sort(rng.choice(len(dataset), size=n, replace=False)))


CALIBRATION_KINDS = {
    "random": random_subset,
    "balanced": balanced_subset,
    "balanced_by_label": lambda dataset, n, seed: balanced_subset(dataset, n, seed, by_label=True),
    "minority_enriched": minority_enriched_subset,
}
"""How a calibration set is composed from the training split, by name (config.CALIBRATION_KINDS
lists the same names for validation)."""
UNKNOWN_CALIBRATION_KIND = ("calibration kind {kind!r} is not known: expected one of {kinds} "
                            "(config: quantization.calibration_kinds or a mitigation spec's "
                            "calibration)")


def calibration_seed(seed: int, draw: int) -> int:
    """The seed of calibration draw ``draw`` of a run with ``seed``: every kind's draw ``draw``
    uses it (so kinds are paired by draw), and draws differ from one another."""
    return int(seed) * 1000 + int(draw)


def calibration_subset(dataset: FaceDataset, kind: str, n: int, seed: int) -> FaceDataset:
    """The ``n``-sample calibration set of ``kind`` (``CALIBRATION_KINDS``) drawn with ``seed``
    (a draw's seed is ``calibration_seed(run seed, draw)``) from ``dataset``, the train split."""
    if kind not in CALIBRATION_KINDS:
        raise ValueError(UNKNOWN_CALIBRATION_KIND.format(kind=kind, kinds=list(CALIBRATION_KINDS)))
    return CALIBRATION_KINDS[kind](dataset, n, seed)


def _check_subset_size(dataset: FaceDataset, n) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 0 < n <= len(dataset):
        raise ValueError(
            f"Subset size n={n!r} must be an integer in [1, {len(dataset)}] (the size of the "
            f"{dataset.name} dataset given). Ask for fewer samples or pass a larger split."
        )


def _balanced_draw(indices: np.ndarray, keys: list, n: int, rng) -> np.ndarray:
    """Draw ``n`` of ``indices`` as evenly as possible over the values of ``keys[0]``, then
    within each of those over ``keys[1]``, and so on (``keys``: arrays aligned with indices)."""
    if not keys:
        return rng.choice(indices, size=n, replace=False)
    masks = [keys[0] == value for value in np.unique(keys[0])]
    counts = _balanced_counts(n, np.array([mask.sum() for mask in masks]))
    return np.concatenate([_balanced_draw(indices[mask], [k[mask] for k in keys[1:]], count, rng)
                           for mask, count in zip(masks, counts)])


def _balanced_counts(n: int, available: np.ndarray) -> np.ndarray:
    """Water-filling: equal shares of ``n``, capped by ``available``, remainder to the rest."""
    counts = np.zeros(len(available), dtype=np.int64)
    remaining = int(n)
    for k, i in enumerate(np.argsort(available, kind="stable")):
        counts[i] = min(int(available[i]), remaining // (len(available) - k))
        remaining -= counts[i]
    return counts


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


def read_celeba_attributes(path: str | Path) -> pd.DataFrame:
    """Parse ``list_attr_celeba.txt`` -> DataFrame (index: file name, columns: 0/1 ints).

    Raises ValueError with the file and line number on a malformed line.
    """
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
        files.append(fields[0])
        values.append(bytes(v == "1" for v in fields[1:]))  # compact: 1 byte per value
    if len(files) != int(lines[0]):
        raise fail(1, f"header announces {int(lines[0])} images but {len(files)} lines follow")
    table = np.frombuffer(b"".join(values), dtype=np.uint8).reshape(len(files), len(names))
    return pd.DataFrame(table, index=pd.Index(files, name="file"), columns=names)


def read_celeba_partition(path: str | Path) -> pd.Series:
    """Parse ``list_eval_partition.txt`` -> Series file name -> split name."""
    path = Path(path)
    files, splits, first_line = [], [], {}
    for lineno, line in enumerate(_read_text(path, DATASET_SOURCES["celeba"]).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(
                f"Malformed CelebA partition file {path}, line {lineno}: expected "
                f"'<file> 0|1|2', found {line.strip()[:80]!r}. Re-download "
                f"list_eval_partition.txt from {DATASET_SOURCES['celeba']}.")
        _check_unique(first_line, fields[0], path, lineno, DATASET_SOURCES["celeba"])
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


def _check_unique(first_line: dict, name: str, path: Path, lineno: int, source: str) -> None:
    """Remember where ``name`` was first listed; a second listing is a ValueError."""
    if name in first_line:
        raise ValueError(DUPLICATE_ROW.format(path=path, line=lineno, name=name,
                                              first=first_line[name], source=source))
    first_line[name] = lineno


def _read_celeba(folder: Path, name: str = "celeba") -> tuple[pd.DataFrame, "_Schema"]:
    _require(name, folder, CELEBA_FILES)
    attributes = read_celeba_attributes(folder / "list_attr_celeba.txt")
    partition = read_celeba_partition(folder / "list_eval_partition.txt")
    unassigned = attributes.index.difference(partition.index)
    if len(unassigned):
        raise ValueError(
            f"{len(unassigned)} image(s) of {folder / 'list_attr_celeba.txt'} have no split in "
            f"{folder / 'list_eval_partition.txt'}, e.g. '{unassigned[0]}'. Use the official "
            f"files together.")
    frame = attributes.reset_index().rename(columns={"file": "sample_id"})
    frame["split"] = partition.reindex(attributes.index).to_numpy()
    frame["path"] = [str(folder / "img_align_celeba" / f) for f in frame["sample_id"]]
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
    for path in files:
        fields = parse_utkface_name(path.name)
        if fields is None:
            broken.append(path.name)
        else:
            records.append({"sample_id": path.relative_to(folder).as_posix(),
                            "path": str(path), **fields})
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
    for row, name in enumerate(labels["file"]):
        _check_unique(first_line, name, path, row + 2, DATASET_SOURCES["fairface"])
    age_group = labels["age"].map(FAIRFACE_AGE_GROUPS)
    return pd.DataFrame({
        "sample_id": labels["file"], "path": [str(folder / f) for f in labels["file"]],
        "split": split, "gender": labels["gender"], "race": labels["race"],
        "age_group": age_group, "age_ge_40": age_group.isin(["40-59", "60+"]).astype(np.int64),
    })


# --------------------------------------------------------------------------- loading

def load_dataset(name: str, root: str | Path, *, target: str | None = None,
                 sensitive: str | list[str] | None = None, image_size: int = 32, seed: int = 0,
                 split_fractions=(0.7, 0.15, 0.15), skip_bad_images: bool = False,
                 synthetic: dict | None = None, max_per_split: int | None = None,
                 cache_limit_gib: float = 2.0) -> DatasetSplits:
    """Load a dataset's train/val/test splits with target, sensitive columns and groups.

    Args:
        name: one of ``KNOWN_DATASETS``.
        root: folder holding ``celeba/``, ``utkface/``, ``fairface/`` (and where
            ``synthetic_celeba/`` is generated).
        target, sensitive: attribute names (None: the dataset's documented defaults).
        image_size: side of the square tensors returned.
        seed: drives the splits of datasets without an official one and ``max_per_split``.
        split_fractions: train/val/test shares where the dataset has no official split (for
            ``synthetic``, the shares written into its partition file).
        skip_bad_images: drop missing, empty or undecodable images with a warning that counts
            them, instead of stopping with their list. Either way every image is checked here,
            at load time (decoded in parallel threads; an image whose size and mtime match the
            last good check, kept in ``<dataset folder>/.checked_images.json``, is not decoded
            again).
        synthetic: options for ``synthetic.generate_synthetic_celeba`` (``n_images``,
            ``image_size``, ``seed``, ``group_shares``, ``smiling_rate``, ``cue_strength``,
            ``exposure``); defaults ``SYNTHETIC_DEFAULTS``. Ignored for the real datasets.
        max_per_split: keep at most this many samples per split (group-stratified), for
            quick runs.
        cache_limit_gib: cache decoded images in memory when they fit in this many GiB.

    Raises:
        FileNotFoundError: dataset folder or listed images missing (says where to get them).
        ValueError: unknown dataset or attribute names (lists the known ones), malformed label
            files (file and line), or a group left without samples in some split.
    """
    if name not in KNOWN_DATASETS:
        raise ValueError(f"Unknown dataset '{name}'; known datasets: {list(KNOWN_DATASETS)}.")
    if not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}.")
    if max_per_split is not None and (not isinstance(max_per_split, int) or max_per_split < 1):
        raise ValueError(f"max_per_split must be a positive integer or None, got "
                         f"{max_per_split!r}.")
    fractions = check_fractions(split_fractions)
    frame, schema, folder, is_synthetic = _read_raw(name, Path(root), fractions, synthetic)
    metadata, target, columns = _derive_columns(frame, schema, name, target, sensitive)
    group_names = sorted(metadata["group"].unique())
    rng = np.random.default_rng(seed)
    metadata, paths = _drop_missing_files(metadata, frame["path"].to_numpy(), skip_bad_images)
    metadata["split"] = _assign_splits(metadata, fractions, rng)
    if max_per_split is not None:
        keep = _cap_splits(metadata, max_per_split, rng)
        metadata, paths = metadata.iloc[keep].reset_index(drop=True), paths[keep]
    cache = len(paths) * 3 * image_size ** 2 < cache_limit_gib * 2 ** 30
    rows = _drop_unreadable(paths, folder, name, skip_bad_images)
    if len(rows) < len(paths):
        metadata, paths = metadata.iloc[rows].reset_index(drop=True), paths[rows]
    store = _ImageStore(paths, image_size, cache)
    rows = np.arange(len(paths))
    _check_groups_in_splits(metadata, group_names, name)
    datasets = {
        split: FaceDataset(metadata[metadata["split"] == split], store,
                           rows[(metadata["split"] == split).to_numpy()], name=name,
                           target_name=target, sensitive_attrs=columns,
                           group_names=group_names, synthetic=is_synthetic)
        for split in SPLITS
    }
    info = _describe(name, folder, is_synthetic, target, columns, group_names, datasets,
                     image_size=int(image_size), cached=cache)
    logger.info("Loaded %s%s from %s: %s", name, " (SYNTHETIC data)" if is_synthetic else "",
                folder, {s: len(d) for s, d in datasets.items()})
    return DatasetSplits(datasets["train"], datasets["val"], datasets["test"], info)


def _read_raw(name: str, root: Path, fractions, synthetic_options):
    """(raw frame with sample_id/path[/split], schema, folder, is_synthetic) for ``name``."""
    if name == "synthetic":
        options = {**SYNTHETIC_DEFAULTS, **(synthetic_options or {})}
        unknown = sorted(set(options) - set(SYNTHETIC_OPTIONS))
        if unknown:
            raise ValueError(f"Unknown synthetic option(s) {unknown}; expected some of "
                             f"{list(SYNTHETIC_OPTIONS)}.")
        try:
            folder = ensure_synthetic_celeba(root, split_fractions=fractions, **options)
        except OSError as exc:
            raise ValueError(SYNTHETIC_UNWRITABLE.format(root=root, reason=exc.strerror or exc)) from None
    else:
        folder = root / name
    readers = {"synthetic": _read_celeba, "celeba": _read_celeba, "utkface": _read_utkface,
               "fairface": _read_fairface}
    frame, schema = readers[name](folder)
    is_synthetic = (folder / SYNTHETIC_PARAMS_FILE).exists()
    return frame, schema, folder, is_synthetic


def _assign_splits(metadata: pd.DataFrame, fractions, rng) -> np.ndarray:
    """Fill splits where the dataset has none: 'unsplit' rows -> train/val/test, 'trainval'
    rows -> train/val, stratified by group and target."""
    split = metadata["split"].to_numpy(dtype=object).copy()
    strata = (metadata["group"] + "|" + metadata["target"].astype(str)).to_numpy()
    for pool, parts in (("unsplit", SPLITS), ("trainval", SPLITS[:2])):
        rows = np.flatnonzero(split == pool)
        if len(rows):
            shares = np.asarray(fractions[: len(parts)])
            split[rows] = np.asarray(parts)[stratified_parts(strata[rows], shares, rng)]
    return split


def _cap_splits(metadata: pd.DataFrame, cap: int, rng) -> np.ndarray:
    """Row positions keeping at most ``cap`` per split, proportionally from every group."""
    keep = []
    for split in SPLITS:
        rows = np.flatnonzero(metadata["split"].to_numpy() == split)
        if len(rows) <= cap:
            keep.append(rows)
            continue
        groups = metadata["group"].to_numpy()[rows]
        names, sizes = np.unique(groups, return_counts=True)
        for group, count in zip(names, largest_remainder(cap, sizes, rng)):
            keep.append(rng.choice(rows[groups == group], size=count, replace=False))
    return np.sort(np.concatenate(keep))


def _drop_missing_files(metadata: pd.DataFrame, paths: np.ndarray, skip: bool):
    """Drop rows whose image file is absent (with a warning) or fail naming them."""
    present = set()
    for parent in {os.path.dirname(p) for p in paths}:
        if os.path.isdir(parent):
            present.update(os.path.join(parent, f) for f in os.listdir(parent))
    missing = np.array([p not in present for p in paths], dtype=bool)
    if missing.any() and not skip:
        examples = ", ".join(paths[missing][:3])
        raise FileNotFoundError(
            f"{missing.sum()} image file(s) listed by the dataset are missing, e.g. {examples}. "
            f"Restore them (re-download the dataset) or pass skip_bad_images=True to skip them.")
    if missing.any():
        logger.warning("Skipped %d missing image file(s), e.g. %s", missing.sum(),
                       paths[missing][0])
    return metadata[~missing].reset_index(drop=True), paths[~missing]


def _drop_unreadable(paths: np.ndarray, folder: Path, name: str, skip: bool) -> np.ndarray:
    """Positions of the images that decode; the others stop the load or are dropped (``skip``)."""
    bad = check_images(paths, folder)
    if bad and not skip:
        examples = "; ".join(f"{paths[i]} ({reason})" for i, reason in list(bad.items())[:5])
        raise ValueError(BAD_IMAGES.format(count=len(bad), dataset=name, examples=examples))
    if bad:
        logger.warning("Skipped %d unreadable image(s), e.g. %s (%s)", len(bad),
                       paths[next(iter(bad))], next(iter(bad.values())))
    return np.setdiff1d(np.arange(len(paths)), list(bad))


def check_images(paths, folder: Path, workers: int | None = None) -> dict[int, str]:
    """{position: reason} of the images in ``paths`` that are empty or do not decode.

    Decodes in ``workers`` threads (default: one per core) at a tiny draft scale, which still
    reads every byte of a JPEG. Images that decoded before with the same size and mtime (the
    record in ``folder/.checked_images.json``) are not decoded again.
    """
    record_path = Path(folder) / IMAGE_CHECK_FILE
    checked = _read_check_record(record_path)
    stats, todo = {}, []
    for i, path in enumerate(paths):
        try:
            stat = os.stat(path)
        except OSError as exc:
            stats[i] = None
            todo.append((i, exc.strerror))
            continue
        stats[i] = [stat.st_size, stat.st_mtime_ns]
        if checked.get(str(path)) != stats[i]:
            todo.append((i, None))
    bad = {i: reason for i, reason in todo if reason is not None}
    pending = [i for i, reason in todo if reason is None]
    if pending:
        workers = workers or os.cpu_count() or 1
        with ThreadPoolExecutor(max_workers=workers) as pool:
            reasons = list(tqdm(pool.map(lambda i: _image_problem(paths[i]), pending),
                                total=len(pending), desc="checking images", leave=False))
        bad.update({i: reason for i, reason in zip(pending, reasons) if reason is not None})
        good = {str(paths[i]): stats[i] for i in range(len(paths)) if i not in bad and stats[i]}
        _write_check_record(record_path, {**checked, **good})
    return dict(sorted(bad.items()))


def _image_problem(path) -> str | None:
    """Why the image at ``path`` cannot be used, or None when it decodes."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file, 0 bytes"
        with Image.open(path) as img:
            img.draft("RGB", (8, 8))
            img.load()
    except Image.UnidentifiedImageError:
        return "not an image format PIL can read"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return str(exc) or type(exc).__name__
    return None


def _read_check_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_check_record(path: Path, record: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)
    except OSError as exc:  # a read-only dataset folder: check again next time
        tmp.unlink(missing_ok=True)
        logger.info("Could not record checked images in %s (%s)", path, exc)


def _check_groups_in_splits(metadata: pd.DataFrame, group_names: list[str], name: str) -> None:
    for split in SPLITS:
        present = set(metadata.loc[metadata["split"] == split, "group"])
        for group in group_names:
            if group not in present:
                raise ValueError(
                    f"Group '{group}' has no samples in the {split} split of '{name}' "
                    f"(groups: {group_names}). Use more data (raise max_per_split), other "
                    f"split_fractions, or sensitive attributes with larger groups.")


def _describe(name, folder, is_synthetic, target, columns, group_names, datasets, **extra):
    info = {
        "name": name, "synthetic": is_synthetic, "target": target, "sensitive": columns,
        "group_names": group_names, "root": str(folder),
        "sizes": {split: len(d) for split, d in datasets.items()},
        "group_counts": {split: d.group_counts() for split, d in datasets.items()},
        "target_rate": {split: float(d.targets.mean()) if len(d) else float("nan")
                        for split, d in datasets.items()},
        **extra,
    }
    if is_synthetic:
        info["generator"] = stored_synthetic_params(Path(folder))
    return info
