"""The image files of a dataset: decoded to tensors (``decode_image``, ``normalize_image``),
kept in an optional shared-memory cache (``ImageStore``), and checked when a dataset loads:
missing, empty, special or undecodable files are named or, with ``skip_bad_images``, dropped and
counted; the files that decoded are remembered in ``.checked_images.json`` so a rerun skips them."""
from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from manifest import special_kind

logger = logging.getLogger(__name__)

IMAGE_CHECK_FILE = ".checked_images.json"
"""Per dataset folder: size and mtime of every image that decoded, so a rerun skips decoding it."""

BAD_IMAGES = ("{count} image file(s) of {dataset} are empty, not regular files or cannot be "
              "decoded: {examples}. "
              "Replace them (re-download the dataset) or skip them with skip_bad_images=True "
              "(config: data.skip_bad_images: true), which drops and counts them")


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


class ImageStore:
    """Image paths plus an optional shared-memory cache of decoded uint8 pixels. Shared: every
    ``datasets.FaceDataset`` reads its items through one."""

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


def drop_missing_files(metadata: pd.DataFrame, paths: np.ndarray, skip: bool):
    """Drop rows whose image file is absent (with a warning) or fail naming them. Shared:
    ``datasets.load_dataset`` calls it for the built-in datasets."""
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


def drop_unreadable(paths: np.ndarray, folder: Path, name: str, skip: bool) -> np.ndarray:
    """Positions of the images that decode; the others stop the load or are dropped (``skip``).
    Shared: ``datasets.load_dataset`` calls it for the built-in datasets."""
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
            reasons = list(tqdm(pool.map(lambda i: image_problem(paths[i]), pending),
                                total=len(pending), desc="checking images", leave=False))
        bad.update({i: reason for i, reason in zip(pending, reasons) if reason is not None})
        good = {str(paths[i]): stats[i] for i in range(len(paths)) if i not in bad and stats[i]}
        if record_path is not None:
            _write_check_record(record_path, {**checked, **good})
    return dict(sorted(bad.items()))


def image_problem(path) -> str | None:
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
