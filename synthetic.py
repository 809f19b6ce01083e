"""The synthetic CelebA-format face set: procedurally drawn faces written in CelebA's file format.

``datasets.load_dataset("synthetic", root)`` calls ``ensure_synthetic_celeba`` (generate on first
use, reuse while the parameters match) and reads the files with the real CelebA loader, so the
whole pipeline runs on any machine with no download. The knobs are documented in
``docs/synthetic.md`` and in ``generate_synthetic_celeba``.

This module also holds the seeded integer-split helpers (``largest_remainder``,
``stratified_parts``) that both the generator's partition file and ``datasets``' own splits use,
and CelebA's attribute list, which the generator writes.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

# The 40 CelebA attributes in the order of the official list_attr_celeba.txt.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes",
    "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
# CelebA attributes with a readable column name and value labels (1 -> first, -1 -> second).
SYNTHETIC_FOLDER = "synthetic_celeba"
SYNTHETIC_PARAMS_FILE = "synthetic_params.json"


# --------------------------------------------------------------------------- seeded counts

def largest_remainder(total: int, weights, rng=None) -> np.ndarray:
    """Integer counts summing to ``total`` in proportion to ``weights``; ties broken by ``rng``."""
    weights = np.asarray(weights, dtype=float)
    quotas = total * weights / weights.sum()
    counts = np.floor(quotas).astype(np.int64)
    remainders = np.round(quotas - counts, 9)
    tiebreak = rng.random(len(weights)) if rng is not None else np.zeros(len(weights))
    order = np.lexsort((tiebreak, -remainders))
    counts[order[: total - counts.sum()]] += 1
    return counts


def stratified_parts(strata, fractions, rng) -> np.ndarray:
    """Part index (0..len(fractions)-1) per row, dividing every stratum by ``fractions``."""
    codes, _ = pd.factorize(pd.Series(strata), sort=True)
    parts = np.empty(len(codes), dtype=np.int64)
    for code in range(codes.max() + 1 if len(codes) else 0):
        members = rng.permutation(np.flatnonzero(codes == code))
        counts = largest_remainder(len(members), fractions, rng)
        parts[members] = np.repeat(np.arange(len(fractions)), counts)
    return parts



# --------------------------------------------------------------------------- synthetic faces
#
# Knobs of the synthetic benchmark. Group shares mimic CelebA (Female/Old smallest). The target
# (Smiling) is the curvature of the mouth: +cue for smiles, -cue otherwise, times the group's
# cue strength, plus Gaussian jitter, so a lower strength means overlapping classes (a harder
# group). Beards (thinner around the lips) partly occlude the mouth and lower its contrast.
SYNTHETIC_GROUPS = ("Female/Old", "Female/Young", "Male/Old", "Male/Young")
DEFAULT_GROUP_SHARES = {"Female/Young": 0.49, "Male/Young": 0.29, "Male/Old": 0.13,
                        "Female/Old": 0.09}
# Every group smiles at the same rate, so a perfect classifier has a DP gap of about 0 and the
# weak Female/Old cue shows up as a fairness gap; pass ``smiling_rate`` for a base-rate gap.
DEFAULT_SMILING_RATE = {"Female/Young": 0.5, "Male/Young": 0.5, "Male/Old": 0.5,
                        "Female/Old": 0.5}
DEFAULT_CUE_STRENGTH = {"Female/Young": 1.0, "Male/Young": 1.0, "Male/Old": 0.8,
                        "Female/Old": 0.6}
SYNTHETIC_DEFAULTS = {"n_images": 8000, "image_size": 64, "seed": 0}
SYNTHETIC_OPTIONS = ("n_images", "image_size", "seed", "group_shares", "smiling_rate",
                     "cue_strength", "exposure", "mouth_scale")
BAD_EXPOSURE = ("data.synthetic.exposure={given!r}: expected a mapping of intersectional group to "
                "a contrast gain, e.g. {{Female/Old: 1.8}} (empty {{}} = off)")
BAD_EXPOSURE_GROUP = ("data.synthetic.exposure: unknown group {group!r}; the groups are {groups}. "
                      "Key the gains by one of them, e.g. {{Female/Old: 1.8}}")
BAD_EXPOSURE_GAIN = ("data.synthetic.exposure[{group!r}]={gain!r}: a contrast gain must be a "
                     "positive number (1 = unchanged, > 1 more contrast, < 1 less), e.g. 1.8")
BAD_MOUTH_SCALE = ("data.synthetic.mouth_scale={given!r}: expected a number in [{low}, {high}] "
                   "(1 = the default mouth; 1.8 = a larger smile cue, learnt in fewer steps)")
MOUTH_SCALE_RANGE = (0.5, 2.0)
MOUTH_CURVE = 0.10   # corner-to-centre height of a full-strength smile, in face-image units
MOUTH_JITTER = 0.025  # std of the per-image curvature noise, same units
GENERATOR_VERSION = 6
# Rough base rates for attributes the drawing does not show (random, deterministic per seed).
UNDRAWN_ATTRIBUTE_RATES = {
    "Arched_Eyebrows": 0.27, "Bangs": 0.15, "Big_Lips": 0.24, "Big_Nose": 0.23, "Blurry": 0.05,
    "Bushy_Eyebrows": 0.14, "Narrow_Eyes": 0.12, "Oval_Face": 0.28, "Pointy_Nose": 0.28,
    "Rosy_Cheeks": 0.07, "Straight_Hair": 0.21, "Wavy_Hair": 0.32, "Wearing_Earrings": 0.19,
    "Wearing_Hat": 0.05, "Wearing_Necklace": 0.12, "Wearing_Necktie": 0.07,
}
_HAIR_PALETTE = np.array([[0.10, 0.08, 0.07], [0.40, 0.25, 0.12], [0.85, 0.70, 0.40]])
_HAIR_NAMES = ("Black_Hair", "Brown_Hair", "Blond_Hair")
_GRAY = np.array([0.80, 0.80, 0.80])
_SKIN_LIGHT, _SKIN_DARK = np.array([0.96, 0.82, 0.70]), np.array([0.42, 0.28, 0.18])


def generate_synthetic_celeba(out_dir: str | Path, *, n_images: int, image_size: int = 64,
                              seed: int = 0, group_shares: dict | None = None,
                              smiling_rate: float | dict | None = None,
                              cue_strength: float | dict | None = None,
                              exposure: dict | None = None, mouth_scale: float = 1.0,
                              split_fractions=(0.8, 0.1, 0.1)) -> Path:
    """Write a deterministic synthetic face set in CelebA's file format into ``out_dir``.

    Files: ``img_align_celeba/NNNNNN.jpg``, ``list_attr_celeba.txt`` (all 40 CelebA attributes
    in the official order, values -1/1), ``list_eval_partition.txt`` (0/1/2 = train/val/test,
    stratified by group and label) and ``synthetic_params.json`` (the parameters below).

    Args:
        n_images: number of faces.
        image_size: side of the square images in pixels (>= 16).
        seed: the same seed and parameters give byte-identical files.
        group_shares: relative sizes of the groups ``Female/Young, Male/Young, Male/Old,
            Female/Old`` (all four, normalised); default ``DEFAULT_GROUP_SHARES``.
        smiling_rate: share of smiling faces, one float for every group or a dict of groups
            overriding ``DEFAULT_SMILING_RATE``.
        cue_strength: visibility of the smile cue in (0, 1]: float or dict of groups overriding
            ``DEFAULT_CUE_STRENGTH`` (default: weaker for Old groups, weakest for Female/Old).
        exposure: {group: contrast gain > 0}; each image of a named group gets
            ``apply_exposure(pixels, gain)`` as its last step (default ``{}``: no group). The
            gain draws no random numbers, so every other image is byte-identical to the set
            made without it.
        mouth_scale: size of the mouth, its curvature and the teeth relative to the face
            (default 1); above 1 the smile cue covers more pixels, so networks learn it in
            fewer steps. Every group's cue grows alike: ``cue_strength`` still sets the groups'
            relative visibility.
        split_fractions: train/val/test shares written to the partition file.
    """
    params = synthetic_parameters(n_images=n_images, image_size=image_size, seed=seed,
                                  group_shares=group_shares, smiling_rate=smiling_rate,
                                  cue_strength=cue_strength, exposure=exposure,
                                  mouth_scale=mouth_scale, split_fractions=split_fractions)
    return _write_synthetic(Path(out_dir), params)


def synthetic_parameters(*, n_images: int, image_size: int = 64, seed: int = 0,
                         group_shares=None, smiling_rate=None, cue_strength=None,
                         exposure=None, mouth_scale=1.0, split_fractions=(0.8, 0.1, 0.1)) -> dict:
    """Validate generator arguments and return them resolved, as stored in the JSON file."""
    if not isinstance(n_images, (int, np.integer)) or n_images < 1:
        raise ValueError(f"n_images must be a positive integer, got {n_images!r}.")
    if not isinstance(image_size, (int, np.integer)) or image_size < 16:
        raise ValueError(f"Synthetic image_size must be an integer >= 16, got {image_size!r}.")
    if group_shares is not None and set(group_shares) != set(SYNTHETIC_GROUPS):
        raise ValueError(
            f"group_shares must give all of {list(SYNTHETIC_GROUPS)}; got {sorted(group_shares)}."
        )
    shares = _group_values("group_shares", DEFAULT_GROUP_SHARES, group_shares, 0.0, np.inf)
    if sum(shares.values()) <= 0:
        raise ValueError(f"group_shares must not all be zero, got {group_shares}.")
    total = sum(shares.values())
    return {
        "format": "celeba", "synthetic": True, "generator_version": GENERATOR_VERSION,
        "n_images": int(n_images), "image_size": int(image_size), "seed": int(seed),
        "group_shares": {g: v / total for g, v in shares.items()},
        "smiling_rate": _group_values("smiling_rate", DEFAULT_SMILING_RATE, smiling_rate, 0, 1),
        "cue_strength": _group_values("cue_strength", DEFAULT_CUE_STRENGTH, cue_strength, 0, 1),
        "exposure": check_exposure(exposure),
        "mouth_scale": check_mouth_scale(mouth_scale),
        "split_fractions": list(check_fractions(split_fractions)),
    }


def check_mouth_scale(scale) -> float:
    """``mouth_scale`` checked: a number in [MOUTH_SCALE_RANGE]."""
    low, high = MOUTH_SCALE_RANGE
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not low <= scale <= high:
        raise ValueError(BAD_MOUTH_SCALE.format(given=scale, low=low, high=high))
    return float(scale)


def check_exposure(exposure) -> dict:
    """``{group: gain}`` checked (known groups, positive gains), sorted by group; None -> {}."""
    if exposure is None:
        return {}
    if not isinstance(exposure, dict):
        raise ValueError(BAD_EXPOSURE.format(given=exposure))
    for group, gain in exposure.items():
        if group not in SYNTHETIC_GROUPS:
            raise ValueError(BAD_EXPOSURE_GROUP.format(group=group, groups=list(SYNTHETIC_GROUPS)))
        if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not gain > 0 \
                or not np.isfinite(gain):
            raise ValueError(BAD_EXPOSURE_GAIN.format(group=group, gain=gain))
    return {group: float(exposure[group]) for group in sorted(exposure)}


def odd_group(values: dict) -> str | None:
    """The one group whose value differs from the value every other group shares, else None."""
    for group, value in values.items():
        others = {v for g, v in values.items() if g != group}
        if len(others) == 1 and value not in others:
            return group
    return None


def planted_groups(knobs: dict | None) -> dict[str, str | None]:
    """The groups the synthetic knobs plant an effect on (docs/synthetic.md, *Planted effects*).

    ``lighting``: the one group whose contrast gain (``exposure``, 1 where unset) differs from
    the gain all other groups share; None where the knobs plant none. Shared with the analysis
    (calibration_study, plants).
    """
    return {"lighting": odd_group(contrast_gains(knobs))}


def contrast_gains(knobs: dict | None) -> dict[str, float]:
    """Each group's contrast gain under the knobs (``exposure``, 1 where unset). Shared with
    ``plants``."""
    return {g: 1.0 for g in SYNTHETIC_GROUPS} | check_exposure((knobs or {}).get("exposure"))


def apply_exposure(pixels: np.ndarray, gain) -> np.ndarray:
    """Contrast gain around each image's own mean: ``clip(m + gain * (p - m), 0, 1)``.

    ``pixels``: float images [B, H, W, 3] in [0, 1]; ``gain``: one number or one per image.
    ``m`` is the image's mean over all its pixels and channels, so where nothing clips the mean
    stays and every deviation from it (hence the pixel standard deviation) is multiplied by
    ``gain``; values pushed past 0 or 1 saturate there.
    """
    gain = np.asarray(gain, dtype=np.float32).reshape(-1, 1, 1, 1)
    mean = pixels.mean(axis=(1, 2, 3), keepdims=True)
    return np.clip(mean + gain * (pixels - mean), 0.0, 1.0)


def _group_values(knob: str, defaults: dict, given, low: float, high: float) -> dict:
    """Defaults overridden by ``given`` (a number for all groups or a dict of groups)."""
    if given is None:
        values = dict(defaults)
    elif isinstance(given, dict):
        unknown = sorted(set(given) - set(SYNTHETIC_GROUPS))
        if unknown:
            raise ValueError(f"{knob}: unknown group(s) {unknown}; "
                             f"expected keys from {list(SYNTHETIC_GROUPS)}.")
        values = {**defaults, **given}
    else:
        values = {g: given for g in SYNTHETIC_GROUPS}
    for group, value in values.items():
        if not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"{knob} for '{group}' must be a number in [{low}, {high}], "
                             f"got {value!r}.")
    return {g: float(values[g]) for g in SYNTHETIC_GROUPS}


def check_fractions(fractions) -> tuple[float, float, float]:
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6 \
            or fractions[0] == 0:
        raise ValueError(f"split_fractions must be three non-negative numbers (train, val, "
                         f"test) summing to 1 with train > 0, got {fractions}.")
    return fractions


def ensure_synthetic_celeba(root: str | Path, **options) -> Path:
    """``<root>/synthetic_celeba`` generated with ``options`` (reused when parameters match)."""
    folder = Path(root) / SYNTHETIC_FOLDER
    params = synthetic_parameters(**options)
    if stored_synthetic_params(folder) == params:
        logger.info("Reusing SYNTHETIC CelebA-format data in %s", folder)
        return folder
    return _write_synthetic(folder, params)


def stored_synthetic_params(folder: Path) -> dict | None:
    try:
        return json.loads((folder / SYNTHETIC_PARAMS_FILE).read_text())
    except (OSError, ValueError):
        return None


def _write_synthetic(folder: Path, params: dict) -> Path:
    if folder.exists() and any(folder.iterdir()) and stored_synthetic_params(folder) is None:
        raise ValueError(f"Refusing to write synthetic data into '{folder}': it holds other "
                         f"files. Choose an empty folder or one made by this generator.")
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(params["seed"])
    faces = _sample_faces(params, rng)
    size, n = params["image_size"], params["n_images"]
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    chunk = max(1, 2 ** 21 // (size * size))
    for start in tqdm(range(0, n, chunk), desc="drawing synthetic faces", leave=False):
        stop = min(start + chunk, n)
        images = _draw_faces({k: v[start:stop] for k, v in faces.items()}, size, rng,
                             params["exposure"], params.get("mouth_scale", 1.0))
        for name, pixels in zip(names[start:stop], images):
            Image.fromarray(pixels).save(staging / "img_align_celeba" / name, quality=95)
    attributes = _synthetic_attribute_table(faces, rng)
    _write_celeba_attr_file(staging / "list_attr_celeba.txt", names, attributes)
    strata = faces["group"] * 2 + faces["smiling"]
    parts = stratified_parts(strata, params["split_fractions"], rng)
    (staging / "list_eval_partition.txt").write_text(
        "".join(f"{name} {part}\n" for name, part in zip(names, parts)))
    (staging / SYNTHETIC_PARAMS_FILE).write_text(json.dumps(params, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    logger.info("Generated %d SYNTHETIC CelebA-format faces (%d px) in %s", n, size, folder)
    return folder


def _write_celeba_attr_file(path: Path, names: list[str], attributes: np.ndarray) -> None:
    rows = (f"{name} " + " ".join(f"{v:2d}" for v in row) for name, row in zip(names, attributes))
    path.write_text(f"{len(names)}\n{' '.join(CELEBA_ATTRIBUTES)}\n" + "\n".join(rows) + "\n")


def _sample_faces(params: dict, rng) -> dict[str, np.ndarray]:
    """Per-face labels and appearance parameters, as arrays of length n_images."""
    n = params["n_images"]
    shares = [params["group_shares"][g] for g in SYNTHETIC_GROUPS]
    group = rng.permutation(np.repeat(np.arange(len(SYNTHETIC_GROUPS)),
                                      largest_remainder(n, shares, rng)))
    male = np.array([g.startswith("Male") for g in SYNTHETIC_GROUPS])[group]
    old = np.array([g.endswith("Old") for g in SYNTHETIC_GROUPS])[group]
    smiling = np.zeros(n, dtype=np.int64)
    for code, name in enumerate(SYNTHETIC_GROUPS):
        members = rng.permutation(np.flatnonzero(group == code))
        smiling[members[: round(params["smiling_rate"][name] * len(members))]] = 1
    strength = np.array([params["cue_strength"][g] for g in SYNTHETIC_GROUPS])[group]
    curve = (2 * smiling - 1) * MOUTH_CURVE * strength + rng.normal(0, MOUTH_JITTER, n)
    hair_kind = rng.choice(len(_HAIR_PALETTE), size=n, p=[0.45, 0.35, 0.20])
    gray = np.where(old, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.1, n))
    return {
        "group": group, "male": male, "old": old, "smiling": smiling, "curve": curve,
        "hair_kind": hair_kind, "gray": gray,
        "bald": male & (rng.random(n) < np.where(old, 0.3, 0.03)),
        "beard": male & (rng.random(n) < np.where(old, 0.45, 0.25)),
        "lipstick": ~male & (rng.random(n) < np.where(old, 0.35, 0.6)),
        "glasses": rng.random(n) < np.where(old, 0.15, 0.05),
        "skin": rng.beta(2.0, 2.5, n),
        "cx": 0.5 + rng.normal(0, 0.02, n), "cy": 0.5 + rng.normal(0, 0.02, n),
        "scale": rng.uniform(0.92, 1.08, n),
        "background": rng.uniform(0.15, 0.9, (n, 3)),
    }


def _draw_faces(faces: dict, size: int, rng, exposure: dict | None = None,
                mouth_scale: float = 1.0) -> np.ndarray:
    """Vectorised drawing of a batch of faces -> uint8 [B, size, size, 3]; ``exposure``
    ({group: gain}) is applied last, to the images of those groups only; ``mouth_scale``
    sizes the mouth, its curvature and the teeth."""
    b = len(faces["group"])
    col = lambda v: np.asarray(v, dtype=np.float32).reshape(b, 1, 1)  # noqa: E731
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = grid.reshape(1, 1, size), grid.reshape(1, size, 1)
    s = col(faces["scale"])
    dx, dy = x - col(faces["cx"]), y - col(faces["cy"])
    male = col(faces["male"])
    rx, ry = s * (0.22 + 0.03 * male), s * 0.29
    soft = lambda d: np.clip(d * size + 0.5, 0.0, 1.0)  # noqa: E731  (anti-aliased edges)

    skin = (1 - faces["skin"][:, None]) * _SKIN_LIGHT + faces["skin"][:, None] * _SKIN_DARK
    hair = _HAIR_PALETTE[faces["hair_kind"]]
    hair = hair + faces["gray"][:, None] * (_GRAY - hair)
    background = faces["background"].astype(np.float32)[:, None, None, :]
    img = np.broadcast_to(background, (b, size, size, 3)).copy()

    def paint(mask, color, alpha=1.0):
        change = np.asarray(color, dtype=np.float32)[:, None, None, :] - img
        change *= (alpha * mask)[..., None]
        img[...] += change

    has_hair = col(~faces["bald"])
    hair_outline = soft((1 - np.hypot(dx / (rx * 1.3), (dy + 0.03) / (ry * 1.15))) * rx)
    long_hair = (1 - male) * soft(np.minimum(rx * 1.25 - np.abs(dx), 0.33 * s - dy))
    paint(has_hair * np.maximum(hair_outline, long_hair), hair)
    exponent = 2.0 + 0.8 * male  # squarer male faces
    radius = (np.abs(dx / rx) ** exponent + np.abs(dy / ry) ** exponent) ** (1 / exponent)
    face = soft((1 - radius) * rx)
    paint(face, skin)
    hairline = ry * (0.5 + 0.1 * (1 - male))
    paint(has_hair * hair_outline * soft(-hairline - dy), hair)
    forehead = face * soft(0.55 * rx - np.abs(dx)) * soft(-0.18 * ry - dy) * soft(dy + hairline)
    wrinkles = np.clip(np.sin(2 * np.pi * dy / (0.035 * s)) - 0.3, 0, 1)
    paint(col(faces["old"]) * forehead * wrinkles, skin * 0.65, alpha=0.6)
    m = s * mouth_scale
    lips = soft((1 - np.hypot(dx / (0.12 * m), (dy - 0.15 * s) / (0.075 * m))) * 0.05 * m)
    beard = col(faces["beard"]) * face * soft(dy - 0.3 * ry) * (1 - 0.85 * lips)
    paint(beard, hair * 0.8, alpha=0.85)  # thinner around the lips: a partial occlusion
    eye_dx, eye_dy = np.abs(dx) - 0.09 * s, dy + 0.05 * s  # both eyes at once (symmetry)
    eyes = soft((1 - np.hypot(eye_dx / (0.028 * s), eye_dy / (0.018 * s))) * 0.018 * s)
    rims = col(faces["glasses"]) * soft(0.008 * s - np.abs(np.hypot(eye_dx, eye_dy) - 0.045 * s))
    paint(np.maximum(eyes, rims), np.full((b, 3), 0.07))
    half_width, curve = 0.12 * m, col(faces["curve"])
    u = dx / half_width
    mouth_y = 0.15 * s + curve * mouth_scale * (0.5 - u ** 2)  # corners rise above the centre
    mouth = soft(0.025 * m - np.abs(dy - mouth_y)) * soft((1 - np.abs(u)) * half_width)
    lip_color = np.where(faces["lipstick"][:, None], [[0.70, 0.08, 0.15]], skin * 0.4)
    paint(mouth, lip_color)
    # An open smile shows teeth, as bright as the smile is curved (so a weak cue stays faint).
    teeth = soft((1 - np.hypot(dx / (0.7 * half_width), (dy - 0.15 * s + 0.01 * m) / (0.03 * m)))
                 * 0.03 * m)
    paint(teeth * np.clip(curve / MOUTH_CURVE, 0, 1), np.full((b, 3), 0.95))
    img *= rng.uniform(0.85, 1.15, (b, 1, 1, 1)).astype(np.float32)
    img += 0.02 * rng.standard_normal((b, size, size, 1), dtype=np.float32)  # sensor noise
    img = np.clip(img, 0, 1)
    gains = np.array([(exposure or {}).get(g, 1.0) for g in SYNTHETIC_GROUPS])[faces["group"]]
    if (gains != 1.0).any():
        img[gains != 1.0] = apply_exposure(img[gains != 1.0], gains[gains != 1.0])
    return (img * 255 + 0.5).astype(np.uint8)


def _synthetic_attribute_table(faces: dict, rng) -> np.ndarray:
    """The 40 CelebA attributes (-1/1) consistent with what was drawn."""
    n = len(faces["group"])
    male, old, smiling = faces["male"], faces["old"], faces["smiling"].astype(bool)
    chance = lambda p: rng.random(n) < p  # noqa: E731
    gray_hair = (faces["gray"] > 0.7) & ~faces["bald"]
    values = {name: chance(rate) for name, rate in UNDRAWN_ATTRIBUTE_RATES.items()}
    values.update({
        "Male": male, "Young": ~old, "Smiling": smiling, "Bald": faces["bald"],
        "No_Beard": ~faces["beard"], "Goatee": faces["beard"] & chance(0.5),
        "Mustache": faces["beard"] & chance(0.6), "Sideburns": faces["beard"] & chance(0.3),
        "5_o_Clock_Shadow": male & ~faces["beard"] & chance(0.25), "Gray_Hair": gray_hair,
        "Eyeglasses": faces["glasses"], "Wearing_Lipstick": faces["lipstick"],
        "Heavy_Makeup": faces["lipstick"] & chance(0.7), "Pale_Skin": faces["skin"] < 0.06,
        "High_Cheekbones": chance(np.where(smiling, 0.8, 0.15)),
        "Mouth_Slightly_Open": chance(np.where(smiling, 0.6, 0.3)),
        "Bags_Under_Eyes": chance(np.where(old, 0.45, 0.12)),
        "Receding_Hairline": chance(np.where(old & male, 0.35, 0.03)),
        "Chubby": chance(np.where(old, 0.12, 0.04)),
        "Double_Chin": chance(np.where(old, 0.12, 0.03)),
        "Attractive": chance(np.where(old, 0.2, np.where(male, 0.45, 0.7))),
    })
    for kind, name in enumerate(_HAIR_NAMES):
        values[name] = (faces["hair_kind"] == kind) & ~gray_hair & ~faces["bald"]
    return np.stack([np.where(values[a], 1, -1) for a in CELEBA_ATTRIBUTES], axis=1)
