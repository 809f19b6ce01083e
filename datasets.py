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

* ``manifest``: a user's own images listed in a ``metadata.csv`` (Hugging Face ImageFolder's
  convention: ``file_name`` relative to the manifest's folder, a target column, sensitive
  columns of the user's own, an optional ``split``); ``root`` is the manifest file and
  ``target``/``sensitive`` are required. ``manifest.py`` validates it without torch, reads
  files only inside its folder and nothing is written there (docs/datasets.md).

  UTKFace and FairFace share one schema. Default target ``gender`` (1 = Female) with sensitive
  attributes ``race`` and ``age_group`` (``0-19``, ``20-39``, ``40-59``, ``60+``; FairFace's
  bins are merged into these); the alternative target ``age_ge_40`` (1 if age >= 40) goes with
  sensitive ``gender`` and ``race``. Race values: UTKFace White, Black, Asian, Indian, Others;
  FairFace its seven labels. A target cannot be combined with a sensitive attribute read from
  the same source (``age_ge_40`` with ``age_group``, ``gender`` with ``gender``).

Group-aware functions (the subsets, ``make_loader``, ``largest_balanced_size``) also accept a
user's own Dataset with a ``metadata`` table and ``sensitive_attrs`` (the group-dataset protocol,
docs/datasets.md) through ``group_dataset``, which wraps it in a ``GroupView``.

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

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from face_files import (  # noqa: F401
    AGE_GROUPS,
    FAIRFACE_RACES,
    SPLITS,
    UTK_RACES,
    _derive_columns,
    _read_celeba,
    _read_fairface,
    _read_utkface,
    parse_utkface_name,
    read_celeba_attributes,
    read_celeba_partition,
)
from manifest import (
    Manifest,
    bad_image_rows,
    check_groups_in_splits,
    group_labels,
    read_manifest,
    special_kind,
    warn_small_groups,
)
from synthetic import (  # noqa: F401
    CELEBA_ATTRIBUTES,
    SYNTHETIC_DEFAULTS,
    SYNTHETIC_GROUPS,
    SYNTHETIC_OPTIONS,
    SYNTHETIC_PARAMS_FILE,
    check_fractions,
    ensure_synthetic_celeba,
    generate_synthetic_celeba,
    largest_remainder,
    stored_synthetic_params,
    stratified_parts,
)

logger = logging.getLogger(__name__)

KNOWN_DATASETS = ("synthetic", "celeba", "utkface", "fairface", "manifest")
NORMALIZE_MEAN = (0.5, 0.5, 0.5)
NORMALIZE_STD = (0.5, 0.5, 0.5)

IMAGE_CHECK_FILE = ".checked_images.json"
"""Per dataset folder: size and mtime of every image that decoded, so a rerun skips decoding it."""

SYNTHETIC_UNWRITABLE = ("Cannot write the synthetic dataset under '{root}' ({reason}). Pass a "
                        "writable root folder (config: data.root, e.g. --set "
                        "data.root=data/datasets)")
POSITIVE_ONLY_FOR_MANIFEST = ("positive={positive!r} applies to manifest datasets only; "
                              "{dataset!r} has "
                             "its own binary targets. Leave positive unset (config: data.positive)")
BAD_DATASET_NAME = ("dataset name {name!r} cannot name a dataset: expected a non-empty text "
                    "without '/' or '\\' (it becomes a folder in the results). Pass another name=, "
                    "e.g. 'my_faces' (config: data.name)")
BAD_MIN_GROUP_SIZE = ("min_group_size must be an integer >= 0 or None, got {value!r}; e.g. 30 "
                      "(config: analysis.min_group_size)")
BAD_IMAGES = ("{count} image file(s) of {dataset} are empty, not regular files or cannot be "
              "decoded: {examples}. "
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
        indices = _positions(indices, len(self))
        return FaceDataset(
            self.metadata.iloc[indices], self._store, self._rows[indices], name=self.name,
            target_name=self.target_name, sensitive_attrs=self.sensitive_attrs,
            group_names=self.group_names, synthetic=self.synthetic,
        )

    def group_counts(self) -> dict[str, int]:
        """Number of samples in each group of ``group_names`` (zeros included)."""
        return _group_counts(self)

    @classmethod
    def from_files(cls, paths, metadata: pd.DataFrame, *, sensitive_attrs, name: str = "custom",
                   target_name: str = "target", image_size: int = 32, cache: bool = False,
                   group_names=None) -> "FaceDataset":
        """A FaceDataset of the image files ``paths`` described by ``metadata`` row by row.

        ``metadata`` needs ``sample_id``, ``target`` (0/1) and the ``sensitive_attrs`` columns;
        ``group`` is derived when absent. The files are read as given (no folder check: use
        ``load_dataset("manifest", ...)`` for validated loading); ``cache`` keeps decoded pixels.
        """
        metadata, sensitive_attrs, group_names = _protocol_table(
            metadata, sensitive_attrs, group_names, what="from_files' metadata", length=len(paths))
        store = _ImageStore(paths, image_size, cache)
        return cls(metadata, store, np.arange(len(metadata)), name=name, target_name=target_name,
                   sensitive_attrs=sensitive_attrs, group_names=group_names, synthetic=False)

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


# --------------------------------------------------------------------------- group protocol
#
# Group-aware functions accept a FaceDataset, any Dataset meeting the protocol (a ``metadata``
# DataFrame aligned positionally with its items, holding sample_id, target and the sensitive
# columns, and a ``sensitive_attrs`` list), a torch Subset of either, or a DataLoader over any
# of them; ``group_dataset`` turns each into one object with what they need (docs/datasets.md).

PROTOCOL_DOC = "docs/datasets.md"
NOT_A_GROUP_DATASET = (
    "{what} is a {kind} without {missing}, so its samples have no groups. Group-aware functions "
    "need the group-dataset protocol ({doc}): a torch Dataset with a `metadata` pandas DataFrame "
    "aligned with its items (columns sample_id, target and the sensitive columns) and a "
    "`sensitive_attrs` list naming the sensitive columns. Add them to your Dataset, or list your "
    "images in a metadata.csv and load it with datasets.load_dataset(\"manifest\", "
    "\"path/to/metadata.csv\", target=..., sensitive=[...])")
METADATA_COLUMNS_MISSING = ("{what}: metadata lacks column(s) {missing}; it has {columns}. The "
                            "group-dataset protocol ({doc}) needs sample_id, target and every "
                            "column of sensitive_attrs {sensitive}. Add them or fix "
                            "sensitive_attrs")
METADATA_LENGTH = ("{what}: metadata has {rows} rows but the dataset has {items} items; row i must "
                   "describe item i ({doc}). Build metadata with one row per item, in item order")
METADATA_BAD_TARGET = ("{what}: metadata column target holds {value!r} at row {row}; expected 0 or "
                       "1. Map the label to 0/1 (1 = the positive class)")
METADATA_EMPTY_SENSITIVE = ("{what}: metadata column {column!r} is empty at row {row}; every item "
                            "needs a value for each sensitive attribute. Fill it (e.g. 'unknown')")
METADATA_DUPLICATE_IDS = ("{what}: metadata has {count} repeated sample_id value(s), e.g. "
                          "{example!r}; each item needs its own id (e.g. its file path)")
UNKNOWN_GROUPS = ("{what}: groups {unknown} are not in group_names {group_names}; group_names must "
                  "list every group of the metadata (or leave it out: it is derived)")
ITEM_NOT_ALIGNED = ("{what}: item {index} has sample_id {found!r} but metadata row {index} says "
                    "{expected!r}; metadata must follow the items' order ({doc})")
SUBSET_POSITIONS = ("subset indices must lie in [0, {n}); got min {low}, max {high}. Use positions "
                    "into this dataset, not sample ids")


class NotAGroupDataset(TypeError, ValueError):
    """A dataset without group metadata where a group-aware function needs it (a TypeError and,
    for callers that catch bad input as such, a ValueError)."""


def _positions(indices, n: int) -> np.ndarray:
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(indices) and (indices.min() < 0 or indices.max() >= n):
        raise ValueError(SUBSET_POSITIONS.format(n=n, low=indices.min(), high=indices.max()))
    return indices


def _group_counts(dataset) -> dict[str, int]:
    counts = np.bincount(dataset.group_codes, minlength=len(dataset.group_names))
    return {g: int(c) for g, c in zip(dataset.group_names, counts)}


def _protocol_table(metadata: pd.DataFrame, sensitive_attrs, group_names, *, what: str,
                    length: int) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(metadata with a positional index and a ``group`` column, sensitive list, group names)
    after checking the protocol's columns and values; ``length``: the number of items."""
    sensitive = [sensitive_attrs] if isinstance(sensitive_attrs, str) else list(sensitive_attrs)
    missing = [c for c in ["sample_id", "target", *sensitive] if c not in metadata.columns]
    if missing:
        raise ValueError(METADATA_COLUMNS_MISSING.format(
            what=what, missing=missing, doc=PROTOCOL_DOC, columns=list(metadata.columns),
            sensitive=sensitive))
    if len(metadata) != length:
        raise ValueError(METADATA_LENGTH.format(what=what, rows=len(metadata), items=length,
                                                doc=PROTOCOL_DOC))
    metadata = metadata.reset_index(drop=True).copy()
    target = metadata["target"]
    bad = ~target.isin([0, 1]) | target.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(METADATA_BAD_TARGET.format(what=what, value=target.iat[row], row=row))
    metadata["target"] = target.astype(np.int64)
    for column in sensitive:
        empty = metadata[column].isna() | (metadata[column].astype(str).str.strip() == "")
        if empty.any():
            raise ValueError(METADATA_EMPTY_SENSITIVE.format(
                what=what, column=column, row=int(np.flatnonzero(empty.to_numpy())[0])))
        metadata[column] = metadata[column].astype(str)
    metadata["sample_id"] = metadata["sample_id"].astype(str)
    repeated = metadata["sample_id"][metadata["sample_id"].duplicated()]
    if len(repeated):
        raise ValueError(METADATA_DUPLICATE_IDS.format(what=what, count=len(repeated),
                                                       example=repeated.iat[0]))
    if "group" not in metadata.columns:
        metadata["group"] = group_labels(metadata, sensitive).to_numpy()
    present = sorted(metadata["group"].astype(str).unique())
    group_names = present if group_names is None else list(group_names)
    unknown = sorted(set(present) - set(group_names))
    if unknown:
        raise ValueError(UNKNOWN_GROUPS.format(what=what, unknown=unknown, group_names=group_names))
    return metadata, sensitive, group_names


class GroupView(Dataset):
    """A user's Dataset seen through the group-dataset protocol (docs/datasets.md).

    Holds the dataset, the positions it shows and their metadata (``group`` derived from the
    sensitive columns when absent); ``subset(indices)`` keeps both aligned. Items are
    ``(image, target, group_code, sample_id)``: the image is the first element of the underlying
    item (or the item itself), the rest comes from the metadata row; an item that carries a
    sample_id as its 4th element must carry that row's (a misaligned metadata is an error).
    Build it with ``group_dataset``.
    """

    def __init__(self, dataset, *, what: str = "dataset"):
        metadata, sensitive, group_names = _protocol_table(
            dataset.metadata, dataset.sensitive_attrs, getattr(dataset, "group_names", None),
            what=what, length=len(dataset))
        self._set(dataset, np.arange(len(metadata)), metadata, sensitive, group_names, what)

    def _set(self, dataset, positions, metadata, sensitive, group_names, what) -> None:
        self.dataset = dataset
        self.indices = np.asarray(positions, dtype=np.int64)
        self.metadata = metadata.reset_index(drop=True)
        self.sensitive_attrs = list(sensitive)
        self.group_names = list(group_names)
        self.name = str(getattr(dataset, "name", type(dataset).__name__))
        self.target_name = str(getattr(dataset, "target_name", "target"))
        self.synthetic = bool(getattr(dataset, "synthetic", False))
        self._what = what
        codes = pd.Categorical(self.metadata["group"], categories=self.group_names).codes
        self.group_codes = np.asarray(codes, dtype=np.int64)
        self.targets = self.metadata["target"].to_numpy(dtype=np.int64)
        self._sample_ids = self.metadata["sample_id"].to_numpy(dtype=str)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        item = self.dataset[int(self.indices[index])]
        expected = str(self._sample_ids[index])
        if isinstance(item, (tuple, list)):
            if len(item) >= 4 and str(item[3]) != expected:
                raise ValueError(ITEM_NOT_ALIGNED.format(
                    what=self._what, index=int(self.indices[index]), found=item[3],
                    expected=expected, doc=PROTOCOL_DOC))
            item = item[0]
        return item, int(self.targets[index]), int(self.group_codes[index]), expected

    def subset(self, indices) -> "GroupView":
        """A view of the items at the given positions, metadata kept aligned."""
        indices = _positions(indices, len(self))
        view = GroupView.__new__(GroupView)
        view._set(self.dataset, self.indices[indices], self.metadata.iloc[indices],
                  self.sensitive_attrs, self.group_names, self._what)
        return view

    def group_counts(self) -> dict[str, int]:
        """Number of samples in each group of ``group_names`` (zeros included)."""
        return _group_counts(self)

    def __repr__(self) -> str:
        return (f"GroupView({type(self.dataset).__name__} {self.name}, n={len(self)}, "
                f"sensitive={self.sensitive_attrs})")


def group_dataset(data, what: str = "dataset") -> "FaceDataset | GroupView":
    """The group-aware view of ``data``: a FaceDataset (returned as is), a GroupView, a Dataset
    meeting the group-dataset protocol (wrapped in a GroupView), a torch ``Subset`` of any of
    these, or a DataLoader over any of them. The result has ``metadata``, ``sensitive_attrs``,
    ``group_names``, ``group_codes``, ``targets``, ``name``, ``len``, items
    ``(image, target, group_code, sample_id)``, ``subset(indices)`` and ``group_counts()``.

    Raises ``NotAGroupDataset`` (a TypeError and a ValueError, ``NOT_A_GROUP_DATASET``) naming
    the missing attribute for a plain dataset (e.g. ``(image, label)`` items), ValueError for a
    metadata table that breaks the protocol (``METADATA_*``).
    """
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if isinstance(dataset, (FaceDataset, GroupView)):
        return dataset
    if isinstance(dataset, Subset):
        return group_dataset(dataset.dataset, what).subset(list(dataset.indices))
    kind = type(dataset).__name__
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise NotAGroupDataset(NOT_A_GROUP_DATASET.format(
            what=what, kind=kind, missing="__getitem__ and __len__ (it is not a dataset)",
            doc=PROTOCOL_DOC))
    if not isinstance(getattr(dataset, "metadata", None), pd.DataFrame):
        raise NotAGroupDataset(NOT_A_GROUP_DATASET.format(
            what=what, kind=kind, missing="a `metadata` pandas DataFrame", doc=PROTOCOL_DOC))
    sensitive = getattr(dataset, "sensitive_attrs", None)
    if sensitive is None or not (isinstance(sensitive, str) or len(list(sensitive))):
        raise NotAGroupDataset(NOT_A_GROUP_DATASET.format(
            what=what, kind=kind, missing="a `sensitive_attrs` list naming its sensitive columns",
            doc=PROTOCOL_DOC))
    return GroupView(dataset, what=what)


def largest_balanced_size(dataset) -> int:
    """The largest ``n`` at which ``balanced_subset(dataset, n, ...)`` takes the same number
    from every group: the number of groups times the smallest group's size (0 when a group of
    ``group_names`` is empty). Accepts whatever ``group_dataset`` accepts."""
    data = group_dataset(dataset)
    counts = np.bincount(data.group_codes, minlength=len(data.group_names))
    return int(len(counts) * counts.min()) if len(counts) else 0


def make_loader(dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                num_workers: int = 0) -> DataLoader:
    """A DataLoader over ``group_dataset(dataset)`` (a FaceDataset, a protocol Dataset, a Subset
    or a loader of one); shuffling is seeded so epochs are reproducible."""
    dataset = group_dataset(dataset, "make_loader's dataset")
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

def balanced_subset(dataset, n: int, seed: int,
                    by_label: bool = False) -> "FaceDataset | GroupView":
    """``n`` samples spread as evenly as availability allows over ``dataset.group_names``.

    A group with fewer than its share gives all its samples and the remainder is spread over
    the other groups. With ``by_label`` each group's quota is also split evenly over labels.
    Raises ValueError naming any group with no samples in ``dataset``.
    """
    dataset = group_dataset(dataset, "balanced_subset's dataset")
    _check_subset_size(dataset, n)
    _check_no_empty_group(dataset, "balance")
    keys = [dataset.group_codes, dataset.targets] if by_label else [dataset.group_codes]
    chosen = _balanced_draw(np.arange(len(dataset)), keys, n, np.random.default_rng(seed))
    return dataset.subset(np.sort(chosen))


def minority_enriched_subset(dataset, n: int, seed: int) -> "FaceDataset | GroupView":
    """``n`` samples in which the groups smaller than the equal share are raised to it.

    Composition (``minority_enriched_shares``): a group whose share of ``dataset`` is below the
    equal share 1/G gets 1/G of ``n``; the other groups share the rest in proportion to their
    sizes in ``dataset``. Counts are rounded by largest remainder (ties broken by the seeded
    generator); a group with fewer samples than its count gives all of them and the shortfall
    goes to the others in proportion to their shares. Within a group the samples are uniform.
    """
    dataset = group_dataset(dataset, "minority_enriched_subset's dataset")
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


def random_subset(dataset, n: int, seed: int) -> "FaceDataset | GroupView":
    """``n`` samples drawn uniformly without replacement (seeded)."""
    dataset = group_dataset(dataset, "random_subset's dataset")
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


def calibration_subset(dataset, kind: str, n: int, seed: int) -> "FaceDataset | GroupView":
    """The ``n``-sample calibration set of ``kind`` (``CALIBRATION_KINDS``) drawn with ``seed``
    (a draw's seed is ``calibration_seed(run seed, draw)``) from ``dataset``, the train split
    (anything ``group_dataset`` accepts)."""
    dataset = group_dataset(dataset, "calibration_subset's dataset")
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


# --------------------------------------------------------------------------- loading

def load_dataset(dataset: str, root: str | Path, *, target: str | None = None,
                 sensitive: str | list[str] | None = None, positive=None, name: str | None = None,
                 image_size: int = 32, seed: int = 0, split_fractions=(0.7, 0.15, 0.15),
                 skip_bad_images: bool = False, synthetic: dict | None = None,
                 max_per_split: int | None = None, cache_limit_gib: float = 2.0,
                 min_group_size: int | None = None) -> DatasetSplits:
    """Load a dataset's train/val/test splits with target, sensitive columns and groups.

    Args:
        dataset: one of ``KNOWN_DATASETS``; ``"manifest"`` for a user's own images listed in a
            metadata.csv (docs/datasets.md).
        root: folder holding ``celeba/``, ``utkface/``, ``fairface/`` (and where
            ``synthetic_celeba/`` is generated); for ``"manifest"``, the manifest file.
        target, sensitive: attribute names (None: the dataset's documented defaults); for a
            manifest, its column names, both required.
        positive: manifests only: the target value that means 1 (needed unless the target
            column is 0/1 or true/false); every other value means 0.
        name: the dataset's name in datasets, info and results (default: ``dataset``; for a
            manifest, the name of its folder).
        image_size: side of the square tensors returned.
        seed: drives the splits of datasets without an official one and ``max_per_split``.
        split_fractions: train/val/test shares where the dataset has no official split (for
            ``synthetic``, the shares written into its partition file).
        skip_bad_images: drop missing, empty or undecodable images with a warning that counts
            them, instead of stopping with their list. Either way every image is checked here,
            at load time (decoded in parallel threads; for the built-in datasets an image whose
            size and mtime match the last good check, kept in
            ``<dataset folder>/.checked_images.json``, is not decoded again; a manifest's folder
            is never written to, so its images are decoded at every load).
        synthetic: options for ``synthetic.generate_synthetic_celeba`` (``n_images``,
            ``image_size``, ``seed``, ``group_shares``, ``smiling_rate``, ``cue_strength``,
            ``exposure``); defaults ``SYNTHETIC_DEFAULTS``. Ignored for the real datasets.
        max_per_split: keep at most this many samples per split (group-stratified), for
            quick runs.
        cache_limit_gib: cache decoded images in memory when they fit in this many GiB.
        min_group_size: when given, the groups with fewer test samples are named in one
            warning (``manifest.SMALL_GROUPS``).

    Raises:
        FileNotFoundError: dataset folder, manifest or listed images missing (says where to
            get them; a manifest's missing images are a ValueError naming the row).
        ValueError: unknown dataset or attribute names (lists the known ones), malformed label
            files or manifests (file and line), or a group left without samples in some split.
    """
    if dataset not in KNOWN_DATASETS:
        raise ValueError(f"Unknown dataset '{dataset}'; known datasets: {list(KNOWN_DATASETS)}.")
    if not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}.")
    if max_per_split is not None and (not isinstance(max_per_split, int) or max_per_split < 1):
        raise ValueError(f"max_per_split must be a positive integer or None, got "
                         f"{max_per_split!r}.")
    if min_group_size is not None and (not isinstance(min_group_size, int)
                                       or isinstance(min_group_size, bool) or min_group_size < 0):
        raise ValueError(BAD_MIN_GROUP_SIZE.format(value=min_group_size))
    if positive is not None and dataset != "manifest":
        raise ValueError(POSITIVE_ONLY_FOR_MANIFEST.format(positive=positive, dataset=dataset))
    fractions = check_fractions(split_fractions)
    if dataset == "manifest":
        source = _manifest_source(root, target, sensitive, positive, skip_bad_images)
    else:
        source = _builtin_source(dataset, Path(os.path.abspath(root)), fractions, synthetic,
                                 target, sensitive, skip_bad_images)
    name = _dataset_name(name, source.default_name)
    metadata, paths, places = source.metadata, source.paths, source.places
    group_names = source.group_names
    rng = np.random.default_rng(seed)
    metadata["split"] = _assign_splits(metadata, fractions, rng)
    if max_per_split is not None:
        keep = _cap_splits(metadata, max_per_split, rng)
        metadata = metadata.iloc[keep].reset_index(drop=True)
        paths, places = paths[keep], places[keep]
    cache = len(paths) * 3 * image_size ** 2 < cache_limit_gib * 2 ** 30
    if source.manifest is None:
        rows = _drop_unreadable(paths, source.folder, name, skip_bad_images)
    else:
        undecodable = bad_image_rows(source.manifest.path, places, metadata["sample_id"].to_numpy(),
                                     check_images(paths, None), skip_bad_images)
        if undecodable.any():
            source.info["dropped"]["image cannot be decoded"] = int(undecodable.sum())
        rows = np.flatnonzero(~undecodable)
    if len(rows) < len(paths):
        metadata, paths = metadata.iloc[rows].reset_index(drop=True), paths[rows]
    store = _ImageStore(paths, image_size, cache)
    rows = np.arange(len(paths))
    if source.manifest is None:
        _check_groups_in_splits(metadata, group_names, name)
    else:
        check_groups_in_splits(metadata, group_names, source.manifest)
    warn_small_groups(metadata, group_names, min_group_size)
    datasets = {
        split: FaceDataset(metadata[metadata["split"] == split], store,
                           rows[(metadata["split"] == split).to_numpy()], name=name,
                           target_name=source.target, sensitive_attrs=source.columns,
                           group_names=group_names, synthetic=source.synthetic)
        for split in SPLITS
    }
    info = _describe(name, source.folder, source.synthetic, source.target, source.columns,
                     group_names, datasets, image_size=int(image_size), cached=cache,
                     **source.info)
    logger.info("Loaded %s%s from %s: %s", name, " (SYNTHETIC data)" if source.synthetic else "",
                source.folder, {s: len(d) for s, d in datasets.items()})
    return DatasetSplits(datasets["train"], datasets["val"], datasets["test"], info)


@dataclass
class _Source:
    """What a dataset's files give before splitting: metadata (``sample_id, split, target,
    <sensitive>, group``), the image paths and each row's place in its listing, aligned."""

    metadata: pd.DataFrame
    paths: np.ndarray
    places: np.ndarray
    target: str
    columns: list[str]
    group_names: list[str]
    folder: Path
    synthetic: bool
    default_name: str
    manifest: Manifest | None = None
    info: dict = field(default_factory=dict)


def _builtin_source(dataset: str, root: Path, fractions, synthetic, target, sensitive,
                    skip_bad_images: bool) -> _Source:
    frame, schema, folder, is_synthetic = _read_raw(dataset, root, fractions, synthetic)
    metadata, target, columns = _derive_columns(frame, schema, dataset, target, sensitive)
    group_names = sorted(metadata["group"].unique())
    metadata, paths = _drop_missing_files(metadata, frame["path"].to_numpy(), skip_bad_images)
    places = metadata["sample_id"].to_numpy()
    return _Source(metadata, paths, places, target, columns, group_names, folder, is_synthetic,
                   dataset)


def _manifest_source(path, target, sensitive, positive, skip_bad_images: bool) -> _Source:
    """The manifest's validated rows (manifest.read_manifest) as a source; nothing is written."""
    manifest = read_manifest(path, target=target, sensitive=sensitive, positive=positive,
                             skip_bad_images=skip_bad_images)
    table = manifest.table
    metadata = table[["sample_id", "split", "target", *manifest.sensitive]].copy()
    metadata["target"] = metadata["target"].astype(np.int64)
    metadata["group"] = group_labels(table, manifest.sensitive).to_numpy()
    info = {"manifest": str(path), "positive": positive,
            "dropped": {reason: len(rows) for reason, rows in manifest.dropped.items()}}
    return _Source(metadata, table["path"].to_numpy(dtype=str), table["where"].to_numpy(),
                   target, manifest.sensitive, manifest.group_names, Path(manifest.folder),
                   False, Path(os.path.abspath(path)).parent.name, manifest, info)


def _dataset_name(name, default: str) -> str:
    name = default if name is None else name
    if not isinstance(name, str) or name.strip() in ("", ".", "..") or "/" in name or "\\" in name:
        raise ValueError(BAD_DATASET_NAME.format(name=name))
    return name


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
            raise ValueError(SYNTHETIC_UNWRITABLE.format(root=root,
                                                         reason=exc.strerror or exc)) from None
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


def check_images(paths, folder: Path | None, workers: int | None = None) -> dict[int, str]:
    """{position: reason} of the images in ``paths`` that are empty or do not decode.

    Decodes in ``workers`` threads (default: one per core) at a tiny draft scale, which still
    reads every byte of a JPEG. Images that decoded before with the same size and mtime (the
    record in ``folder/.checked_images.json``) are not decoded again. ``folder=None`` (a user's
    manifest folder): no record is read or written, every image is decoded.
    """
    record_path = None if folder is None else Path(folder) / IMAGE_CHECK_FILE
    checked = {} if record_path is None else _read_check_record(record_path)
    stats, todo = {}, []
    for i, path in enumerate(paths):
        try:
            stat = os.stat(path)
        except OSError as exc:
            stats[i] = None
            todo.append((i, exc.strerror))
            continue
        kind = special_kind(stat.st_mode)
        if kind is not None:  # a FIFO, a device: never opened (it could block or never end)
            stats[i] = None
            todo.append((i, f"not a regular file but {kind}"))
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
        if record_path is not None:
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
